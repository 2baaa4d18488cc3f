"""``compress``: fetch a teacher, apply a quantization method, and build the artifact (measured, cached)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocketpilot.compression.build import CompressResult, Written, build_artifact
from pocketpilot.compression.calibration import calibration_batches
from pocketpilot.compression.methods import QuantMethod, get_method
from pocketpilot.compression.methods._gguf import write_gguf, write_gguf_from_folder
from pocketpilot.store import MANIFEST, Progress, build_lock, no_progress, read_json_or_none
from pocketpilot.teachers import Teacher, fetch_teacher, parse_spec, teacher_gguf

__all__ = ["CompressResult", "compress"]


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
        teacher: teacher spec (see :mod:`pocketpilot.teachers`); ``None`` = default.
        method: quantization method name (see :data:`pocketpilot.compression.methods.METHODS`).
        force: rebuild even if a valid artifact for this teacher + method is cached.
        eval_tasks: line-completion tasks (cut from the Python standard library) on which the
            artifact is scored against the teacher; 0 skips the measurement.
        activate: make the artifact the default for ``serve`` / ``complete``.
        progress: callback for progress messages.

    Returns:
        :class:`CompressResult`.

    Raises:
        UnknownTeacherError, UnknownMethodError: before anything is fetched or written.
        MissingDependencyError: the method needs a package that is not installed (the pip command).
        FetchError: the teacher could not be fetched or verified.
        CustomCodeError: the teacher folder needs Python code shipped with it (never run).
        PocketPilotError: out of disk space (nothing half-written is left behind).

    Concurrent calls (other processes or threads) wait for each other (:func:`pocketpilot.store.build_lock`).
    """
    progress = progress or no_progress
    spec = parse_spec(teacher)
    qmethod = get_method(method)
    with build_lock(progress):  # one compress at a time: the second one then finds the first's artifact cached
        teacher_obj = fetch_teacher(spec, progress)
        return build_artifact(teacher_obj, f"{teacher_obj.slug}-{qmethod.name}",
                              lambda tmp: _quantize_teacher(teacher_obj, qmethod, tmp, progress),
                              reuse=not force, eval_tasks=eval_tasks, activate=activate, progress=progress)


def _quantize_teacher(teacher_obj: Teacher, qmethod: QuantMethod, tmp: Path, progress: Progress) -> Written:
    """Load the float32 teacher, calibrate, and write it into ``tmp`` compressed with ``qmethod``
    (a llama.cpp method writes its GGUF from the teacher's GGUF file instead)."""
    if qmethod.gguf_type is not None:
        return _gguf_teacher(teacher_obj, qmethod, tmp, progress)
    progress(f"loading teacher {teacher_obj.spec.spec}", 0.1)
    model = AutoModelForCausalLM.from_pretrained(teacher_obj.folder, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    n_params = sum(p.numel() for p in model.parameters())
    progress(f"applying {qmethod.name}: {qmethod.description}", 0.3)
    calibration = calibration_batches(AutoTokenizer.from_pretrained(teacher_obj.folder, local_files_only=True,
                                                                    trust_remote_code=False))
    details = qmethod.apply(model, tmp, calibration or None)
    recipe = {"method": qmethod.name, "description": qmethod.description, **details}
    source = read_json_or_none(teacher_obj.folder / MANIFEST) if teacher_obj.spec.kind == "folder" else None
    if source:  # an artifact compressed further, e.g. a distilled student quantized afterwards
        recipe["source_artifact"] = {"artifact_id": source.get("artifact_id"),
                                     "method": (source.get("recipe") or {}).get("method"),
                                     "teacher": (source.get("teacher") or {}).get("spec")}
    return Written(recipe, n_params)


def _gguf_teacher(teacher_obj: Teacher, qmethod: QuantMethod, tmp: Path, progress: Progress) -> Written:
    """Write the GGUF of a llama.cpp method from the teacher's own GGUF (see :mod:`.methods._gguf`)."""
    if teacher_obj.spec.kind in ("packaged", "gguf"):
        source = teacher_gguf(teacher_obj.spec.spec, progress)
        progress(f"writing {qmethod.name} from {source.name} with llama.cpp's quantizer", 0.3)
        details = write_gguf(source, teacher_obj.folder, tmp, qmethod.gguf_type)
    else:  # a student or a Hugging Face folder: export it to GGUF first
        root = (read_json_or_none(teacher_obj.folder / MANIFEST) or {}).get("teacher") or {}
        vocab = teacher_gguf(root["spec"], progress) if root.get("kind") in ("packaged", "gguf") else None
        progress(f"exporting {teacher_obj.spec.spec} to GGUF and writing {qmethod.name} with llama.cpp's quantizer", 0.3)
        details = write_gguf_from_folder(teacher_obj.folder, tmp, qmethod.gguf_type, vocab)
    n_params = 0
    for f in sorted(teacher_obj.folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            n_params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return Written({"method": qmethod.name, "description": qmethod.description, **details}, n_params)
