"""``build_artifact``: the one sequence that turns a student into a cached, verified artifact.

cache check -> atomic build folder -> write the weights (the caller's ``write``) -> tokenizer ->
manifest (with the measured loss) -> verify -> activate. :func:`pocketpilot.compression.compress`,
:func:`pocketpilot.compression.distill.distill` and the search's builder only make the student
and call it.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import transformers

from pocketpilot import __version__
from pocketpilot.errors import ArtifactError
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime.engine import CompletionEngine
from pocketpilot.runtime.loader import load_model_folder
from pocketpilot.store import (
    Manifest,
    Progress,
    TeacherRecord,
    artifacts_dir,
    atomic_dir,
    build_lock,
    file_records,
    folder_bytes,
    is_weight_file,
    no_progress,
    set_active,
    verify_artifact,
    write_manifest,
)
from pocketpilot.teachers import Teacher

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")


@dataclass
class Written:
    """What a ``write`` step of :func:`build_artifact` reports.

    Attributes:
        recipe: JSON-able; holds ``method`` and ``description`` and the method's details.
        teacher_params: parameter count of the teacher (its fp32 size is ``4 * teacher_params`` bytes).
    """

    recipe: dict
    teacher_params: int


@dataclass
class CompressResult:
    """Outcome of :func:`build_artifact` (and so of ``compress`` and ``distill``).

    Attributes:
        artifact_id: folder name under ``artifacts/``.
        folder: the artifact folder.
        reused: True when a valid cached artifact was returned without rebuilding.
        manifest: the artifact's :class:`Manifest` (sizes in bytes, metrics).
    """

    artifact_id: str
    folder: Path
    reused: bool
    manifest: Manifest

    def summary(self) -> dict:
        """JSON-able summary for ``--json``: id, folder, teacher and artifact sizes (bytes), metrics."""
        m = self.manifest
        return {"artifact_id": self.artifact_id, "folder": str(self.folder), "reused": self.reused,
                "teacher": m.teacher.spec, "method": m.method, "teacher_bytes": m.teacher.bytes,
                "teacher_fp32_bytes": m.teacher.fp32_bytes, "artifact_bytes": m.artifact_bytes, "metrics": m.metrics}


def cached(artifact_id: str, teacher_obj: Teacher, progress: Progress = no_progress) -> Manifest | None:
    """The manifest of a valid cached artifact ``artifact_id`` made from this very teacher, or ``None``.

    An unusable cached artifact (corrupt, partial, another schema) is reported through
    ``progress`` and treated as absent, so it gets rebuilt.
    """
    final = artifacts_dir() / artifact_id
    if not final.exists():
        return None
    try:
        manifest = verify_artifact(final)
    except ArtifactError as exc:
        progress(f"cached artifact is unusable ({exc}); rebuilding", None)
        return None
    return manifest if manifest.teacher.sha256 == teacher_obj.source_sha256 else None


def build_artifact(
    teacher_obj: Teacher,
    artifact_id: str,
    write: Callable[[Path], Written],
    *,
    reuse: bool = True,
    eval_tasks: int = 0,
    activate: bool = True,
    progress: Progress | None = None,
) -> CompressResult:
    """Build (or, with ``reuse``, return the cached) artifact ``artifact_id`` of ``teacher_obj``.

    Args:
        teacher_obj: the fetched teacher (its tokenizer is copied; its hashes go in the manifest).
        artifact_id: folder name under ``artifacts/``.
        write: ``write(tmp) -> Written``: writes the weights and ``config.json`` into the build
            folder ``tmp`` (for instance through a method's :attr:`QuantMethod.apply`).
        reuse: return a valid cached artifact of the same teacher instead of rebuilding.
        eval_tasks: stdlib line-completion tasks on which teacher and artifact are scored; 0 skips.
        activate: make the artifact the default for ``serve`` / ``complete``.
        progress: callback for progress messages.

    Returns:
        :class:`CompressResult`.

    Raises:
        PocketPilotError: out of disk space or not writable (nothing half-written is left behind).
        ArtifactError: the artifact written does not verify against its own manifest.

    Holds :func:`pocketpilot.store.build_lock` throughout (one build at a time per cache); stale
    partial builds of killed commands are removed (:func:`pocketpilot.store.atomic_dir`).
    """
    progress = progress or no_progress
    final = artifacts_dir() / artifact_id
    with build_lock(progress):
        manifest = cached(artifact_id, teacher_obj, progress) if reuse else None
        reused = manifest is not None
        if reused:
            progress(f"reusing cached artifact {artifact_id} (use --force to rebuild)", 1.0)
        else:
            with atomic_dir(final) as tmp:
                written = write(tmp)
                copy_tokenizer_files(teacher_obj.folder, tmp)
                manifest = new_manifest(tmp, artifact_id, teacher_obj, written)
                if eval_tasks > 0:
                    progress(f"measuring teacher and artifact on {eval_tasks} line-completion tasks", 0.5)
                    manifest.metrics = measure(teacher_obj, tmp, eval_tasks, progress)
                manifest.folder_bytes = folder_bytes(tmp)
                write_manifest(tmp, manifest)
                verify_artifact(tmp)
            progress(f"artifact {artifact_id} ready", 1.0)
        if activate:
            set_active(artifact_id)
    return CompressResult(artifact_id, final, reused, manifest)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files of a Hugging Face folder ``src`` (those of :data:`TOKENIZER_FILES` present) into ``dst``."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _versions() -> dict:
    return {"pocketpilot": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def new_manifest(folder: Path, artifact_id: str, teacher_obj: Teacher, written: Written) -> Manifest:
    """The :class:`Manifest` of a build folder whose weights are written (metrics empty, not yet saved)."""
    spec = teacher_obj.spec
    files = file_records(folder)
    n = written.teacher_params
    artifact_bytes = sum(f["bytes"] for name, f in files.items() if is_weight_file(Path(name).name))
    teacher = TeacherRecord(spec=spec.spec, kind=spec.kind, source=teacher_obj.source, sha256=teacher_obj.source_sha256,
                            folder=str(teacher_obj.folder), bytes=teacher_obj.bytes, fp32_bytes=4 * n, params=n)
    return Manifest(
        artifact_id=artifact_id, teacher=teacher, recipe=written.recipe, versions=_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        hardware={"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        files=files, artifact_bytes=artifact_bytes, size_ratio_vs_fp32_teacher=round(artifact_bytes / (4 * n), 4),
    )


def measure(teacher: Teacher, artifact_folder: Path, n_tasks: int, progress: Progress = no_progress,
            seed: int = 0) -> dict:
    """Score the teacher and an artifact on the same stdlib line-completion tasks.

    Returns ``{"tasks", "seed", "teacher": {...}, "artifact": {...}, "es_delta"}`` with ES/EM
    (0-100), p50 latency (ms) and decode ms/token for each, as from
    :func:`pocketpilot.evaluation.line_completion.evaluate_lines`.
    """
    tasks = make_tasks(n=n_tasks, seed=seed)
    out = {"tasks": f"{len(tasks)} tasks cut from the Python standard library, seed {seed}", "seed": seed}
    for label, folder in (("teacher", teacher.folder), ("artifact", artifact_folder)):
        progress(f"scoring the {label}", None)
        res = evaluate_lines(CompletionEngine(load_model_folder(folder)), tasks)
        res.pop("predictions")
        out[label] = res
    out["es_delta"] = round(out["artifact"]["es"] - out["teacher"]["es"], 2)
    return out
