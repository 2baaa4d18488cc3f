"""``compress``: fetch a teacher, apply a method, measure the loss, cache the artifact atomically."""

from __future__ import annotations

import logging
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pocketpilot import __version__
from pocketpilot.compression.artifacts import (
    MANIFEST,
    SCHEMA_VERSION,
    artifacts_dir,
    atomic_dir,
    file_records,
    folder_bytes,
    read_json_or_none,
    rebuild_command,
    resolve_artifact,
    set_active,
    verify_artifact,
    write_json,
)
from pocketpilot.compression.quantize import get_method
from pocketpilot.compression.teachers import Teacher, fetch_teacher, parse_spec
from pocketpilot.errors import ArtifactError, UnknownTeacherError

log = logging.getLogger(__name__)

#: ``progress(message, fraction or None)``; fraction in [0, 1].
Progress = Callable[[str, float | None], None]


@dataclass
class CompressResult:
    """Outcome of :func:`compress`.

    Attributes:
        artifact_id: folder name under ``artifacts/``.
        folder: the artifact folder.
        reused: True when a valid cached artifact was returned without rebuilding.
        manifest: the artifact's manifest (sizes in bytes, metrics).
    """

    artifact_id: str
    folder: Path
    reused: bool
    manifest: dict

    def summary(self) -> dict:
        """JSON-able summary for ``--json``: id, folder, teacher and artifact sizes (bytes), metrics."""
        m = self.manifest
        return {
            "artifact_id": self.artifact_id,
            "folder": str(self.folder),
            "reused": self.reused,
            "teacher": m["teacher"]["spec"],
            "method": m["recipe"]["method"],
            "teacher_bytes": m["teacher"]["bytes"],
            "teacher_fp32_bytes": m["teacher"]["fp32_bytes"],
            "artifact_bytes": m["artifact_bytes"],
            "metrics": m.get("metrics", {}),
        }


def _versions() -> dict:
    import torch
    import transformers

    return {"pocketpilot": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def compress(
    teacher: str | None = None,
    method: str = "int8",
    *,
    force: bool = False,
    eval_tasks: int = 20,
    activate: bool = True,
    progress: Progress | None = None,
) -> CompressResult:
    """Compress a teacher into a cached artifact and measure what was lost.

    Args:
        teacher: teacher spec (see :mod:`pocketpilot.compression.teachers`); ``None`` = default.
        method: quantization method name (see :data:`pocketpilot.compression.quantize.METHODS`).
        force: rebuild even if a valid artifact for this teacher + method is cached.
        eval_tasks: line-completion tasks (cut from the Python standard library) on which the
            artifact is scored against the teacher; 0 skips the measurement.
        activate: make the artifact the default for ``serve`` / ``complete``.
        progress: callback for progress messages.

    Returns:
        :class:`CompressResult`.

    Raises:
        UnknownTeacherError, UnknownMethodError: before anything is fetched or written.
        FetchError: the teacher could not be fetched or verified.
        PocketPilotError: out of disk space (nothing half-written is left behind).
    """
    progress = progress or (lambda msg, frac: None)
    spec = parse_spec(teacher)
    qmethod = get_method(method)
    teacher_obj = fetch_teacher(spec, progress)
    artifact_id = f"{teacher_obj.slug}-{qmethod.name}"
    final = artifacts_dir() / artifact_id
    if final.exists() and not force:
        try:
            manifest = verify_artifact(final)
            if manifest["teacher"]["sha256"] == teacher_obj.source_sha256:
                progress(f"reusing cached artifact {artifact_id} (use --force to rebuild)", 1.0)
                if activate:
                    set_active(artifact_id)
                return CompressResult(artifact_id, final, True, manifest)
        except ArtifactError as exc:
            progress(f"cached artifact is unusable ({exc}); rebuilding", None)

    import torch
    from transformers import AutoModelForCausalLM

    with atomic_dir(final) as tmp:
        progress(f"loading teacher {spec.spec}", 0.1)
        model = AutoModelForCausalLM.from_pretrained(teacher_obj.folder, dtype=torch.float32, local_files_only=True)
        n_params = sum(p.numel() for p in model.parameters())
        progress(f"applying {qmethod.name}: {qmethod.description}", 0.3)
        from transformers import AutoTokenizer

        from pocketpilot.compression.quantize import calibration_batches

        calibration = calibration_batches(AutoTokenizer.from_pretrained(teacher_obj.folder, local_files_only=True))
        details = qmethod.apply(model, tmp, calibration or None)
        del model
        copy_tokenizer_files(teacher_obj.folder, tmp)
        recipe = {"method": qmethod.name, "description": qmethod.description, **details}
        source = read_json_or_none(teacher_obj.folder / MANIFEST) if spec.kind == "folder" else None
        if source:  # an artifact compressed further, e.g. a distilled student quantized afterwards
            recipe["source_artifact"] = {"artifact_id": source.get("artifact_id"),
                                         "method": (source.get("recipe") or {}).get("method"),
                                         "teacher": (source.get("teacher") or {}).get("spec")}
        manifest = finish_artifact(tmp, artifact_id, teacher_obj, n_params, recipe, eval_tasks, progress)
    if activate:
        set_active(artifact_id)
    progress(f"artifact {artifact_id} ready", 1.0)
    return CompressResult(artifact_id, final, False, manifest)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files of a Hugging Face folder ``src`` (those present) into ``dst``."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def finish_artifact(
    tmp: Path,
    artifact_id: str,
    teacher_obj: Teacher,
    n_params: int,
    recipe: dict,
    eval_tasks: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Write ``manifest.json`` into an artifact folder being built (weights + tokenizer already in ``tmp``).

    Shared by :func:`compress` and :func:`pocketpilot.compression.distill.distill`, so every
    artifact has the same manifest: teacher (spec, source, sha256, bytes, fp32 bytes, params),
    ``recipe``, library versions, creation time, hardware, the sha256 of every weight file,
    sizes in bytes and, when ``eval_tasks > 0``, the metrics of :func:`measure`.

    Args:
        tmp: the folder being built (inside :func:`atomic_dir`).
        n_params: parameter count of the teacher (its fp32 size is ``4 * n_params`` bytes).
        recipe: JSON-able; must hold ``method`` and ``description``.

    Returns:
        The manifest written.

    Raises:
        PocketPilotError: out of disk space.
    """
    progress = progress or (lambda msg, frac: None)
    spec = teacher_obj.spec
    files = file_records(tmp)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "artifact_id": artifact_id,
        "teacher": {
            "spec": spec.spec,
            "kind": spec.kind,
            "source": teacher_obj.source,
            "sha256": teacher_obj.source_sha256,
            "folder": str(teacher_obj.folder),
            "bytes": teacher_obj.bytes,
            "fp32_bytes": n_params * 4,
            "params": n_params,
        },
        "recipe": recipe,
        "versions": _versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count()},
        "files": files,
        "artifact_bytes": sum(f["bytes"] for f in files.values()),
        "metrics": {},
    }
    manifest["size_ratio_vs_fp32_teacher"] = round(manifest["artifact_bytes"] / manifest["teacher"]["fp32_bytes"], 4)
    if eval_tasks > 0:
        progress(f"measuring teacher and artifact on {eval_tasks} line-completion tasks", 0.5)
        manifest["metrics"] = measure(teacher_obj, tmp, eval_tasks, progress)
    manifest["folder_bytes"] = folder_bytes(tmp)
    write_json(tmp / MANIFEST, manifest)
    return manifest


def measure(teacher: Teacher, artifact_folder: Path, n_tasks: int, progress: Progress, seed: int = 0) -> dict:
    """Score the teacher and an artifact on the same stdlib line-completion tasks.

    Returns ``{"tasks", "seed", "teacher": {...}, "artifact": {...}, "es_delta"}`` with ES/EM
    (0-100), p50 latency (ms) and decode ms/token for each, as from
    :func:`pocketpilot.evaluation.line_completion.evaluate_lines`.
    """
    from pocketpilot.evaluation.line_completion import evaluate_lines
    from pocketpilot.evaluation.tasks import make_tasks
    from pocketpilot.runtime import CompletionEngine, load_model_folder

    tasks = make_tasks(n=n_tasks, seed=seed)
    out = {"tasks": f"{len(tasks)} tasks cut from the Python standard library, seed {seed}", "seed": seed}
    for label, folder in (("teacher", teacher.folder), ("artifact", artifact_folder)):
        progress(f"scoring the {label}", None)
        res = evaluate_lines(CompletionEngine(load_model_folder(folder)), tasks)
        res.pop("predictions")
        out[label] = res
    out["es_delta"] = round(out["artifact"]["es"] - out["teacher"]["es"], 2)
    return out


def load_artifact(name: str | None = None):
    """Verify and load an artifact (id, folder, or ``None`` for the active one).

    Returns a :class:`pocketpilot.runtime.LoadedModel`.

    Raises:
        ArtifactError: missing, partial or corrupt; the message gives the rebuild command.
    """
    from pocketpilot.runtime.loader import load_model_folder

    folder = resolve_artifact(name)
    manifest = verify_artifact(folder)
    try:
        return load_model_folder(folder)
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; rebuild it with: {rebuild_command(manifest, folder.name)}") from None


def resolve_any(name: str | None = None) -> Path:
    """The folder behind any model name a user may give (see :func:`load_any`), without loading it.

    A teacher spec is fetched and converted once, as :func:`load_any` does.

    Raises:
        ArtifactError, UnknownTeacherError, FetchError: with one-line messages.
    """
    is_id = name is not None and os.sep not in name and (artifacts_dir() / name).is_dir()  # not a path
    if name is None or is_id or (Path(name).expanduser() / MANIFEST).is_file():
        return resolve_artifact(name)
    try:
        spec = parse_spec(name)
    except UnknownTeacherError:
        from pocketpilot.compression.artifacts import list_artifacts
        from pocketpilot.compression.teachers import ACCEPTED_FORMS

        cached = ", ".join(r["id"] for r in list_artifacts()) or "none yet"
        raise UnknownTeacherError(
            f"{name!r} is neither a cached artifact (cached: {cached}) nor a teacher ({ACCEPTED_FORMS})"
        ) from None
    return fetch_teacher(spec).folder


def load_any(name: str | None = None):
    """Load a model for inference by any name a user may give.

    ``name`` may be a cached artifact id, an artifact folder (verified against its manifest),
    a plain Hugging Face folder, or a teacher spec (packaged alias, ``hf:``, ``.gguf``: fetched
    and converted once). ``None`` loads the active artifact.

    Returns a :class:`pocketpilot.runtime.LoadedModel`.

    Raises:
        ArtifactError, UnknownTeacherError, FetchError: with one-line messages.
    """
    from pocketpilot.runtime.loader import load_model_folder

    folder = resolve_any(name)
    if (folder / MANIFEST).is_file():
        return load_artifact(folder)
    return load_model_folder(folder)
