"""Shared by the ``gguf-*`` methods: a GGUF file for the llama.cpp engine, made by llama.cpp's own quantizer.

The packaged teachers ship as GGUF (SmolLM2-135M as Q4_1, Qwen2.5-Coder-1.5B as Q4_K_M) and the
float32 teacher PocketPilot measures against is that file dequantized, so a GGUF artifact starts
from the teacher's own file: copied when it already has the method's file type, else re-quantized
by ``llama_model_quantize`` (quantized tensors are dequantized first, which is the float32 teacher).
The artifact folder gets ``model.gguf`` and the teacher's ``config.json``; the build adds the tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.runtime.llamacpp import GGUF_FILE, gguf_file_type, quantize_gguf


def file_type(type_name: str) -> int:
    """llama.cpp's file type number for ``"Q8_0"``, ``"Q4_K_M"`` ... (``LLAMA_FTYPE_MOSTLY_*``)."""
    from gguf import LlamaFileType  # lazy

    return int(LlamaFileType[f"MOSTLY_{type_name}"])


def write_gguf(source: Path, teacher_folder: Path, out: Path, type_name: str) -> dict:
    """Write ``out/model.gguf`` of GGUF file type ``type_name`` (e.g. ``"Q8_0"``) from the teacher GGUF
    ``source``, and copy the teacher's ``config.json``; return the recipe details (source and file types).

    Raises:
        MissingDependencyError: llama-cpp-python is missing (only when re-quantizing).
        ArtifactError: the teacher folder has no ``config.json``, or llama.cpp's quantizer failed.
    """
    if not (teacher_folder / "config.json").is_file():
        raise ArtifactError(f"{teacher_folder} has no config.json")
    shutil.copyfile(teacher_folder / "config.json", out / "config.json")
    ftype = file_type(type_name)
    src_type = gguf_file_type(source)
    if src_type == ftype:
        shutil.copyfile(source, out / GGUF_FILE)
    else:
        quantize_gguf(source, out / GGUF_FILE, ftype)
    return {"engine": "llama.cpp", "gguf_type": type_name, "source_gguf": source.name, "source_file_type": src_type,
            "requantized": src_type != ftype}


def write_gguf_from_folder(folder: Path, out: Path, type_name: str, tokenizer_gguf: Path | None) -> dict:
    """Like :func:`write_gguf` for a teacher without a GGUF file (a distilled or pruned student, a
    Hugging Face folder): the float model is exported first (:func:`pocketpilot.compression.gguf_export.export_gguf`,
    tokenizer fields from ``tokenizer_gguf`` when given) and then quantized by llama.cpp.

    Raises:
        MissingDependencyError: llama-cpp-python is missing.
        ArtifactError: the architecture cannot be exported, or the quantizer failed.
    """
    import torch  # lazy: torch
    from transformers import AutoModelForCausalLM  # lazy: transformers

    from pocketpilot.compression.gguf_export import export_gguf

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, trust_remote_code=False)
    f32 = out / "export.f32.gguf"
    try:
        export_gguf(model, f32, tokenizer_gguf)
        del model
        shutil.copyfile(folder / "config.json", out / "config.json")
        quantize_gguf(f32, out / GGUF_FILE, file_type(type_name))
    finally:
        f32.unlink(missing_ok=True)
    return {"engine": "llama.cpp", "gguf_type": type_name, "source_gguf": None, "exported_from": str(folder),
            "tokenizer_fields_from": tokenizer_gguf.name if tokenizer_gguf else "placeholder (the engine tokenizes)"}


def not_from_torch(*_args):
    """A GGUF method is written from the teacher's GGUF (``compress``), not from a torch model.

    Raises:
        PocketPilotError: always, with what to run instead.
    """
    raise PocketPilotError("GGUF methods are written from the teacher's GGUF file: use `pocketpilot compress "
                           "--method gguf-...`, not the search or a torch model")


def no_torch_model(*_args):
    """A GGUF artifact has no torch modules: the torch speed probe skips it (returns ``None``)."""
    return None
