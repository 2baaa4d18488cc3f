"""Load a model folder (a plain Hugging Face folder or a PocketPilot artifact) for inference.

Never touches the network: everything is read with ``local_files_only=True``. Never runs code
shipped with a model: ``trust_remote_code=False`` everywhere, and a folder that needs such code
is refused with one line (:func:`pocketpilot.teachers.refuse_custom_code`). An artifact is
checked whole against its manifest before it is read (:func:`pocketpilot.store.verify_artifact`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pocketpilot.errors import ArtifactError, CustomCodeError, PocketPilotError, UnknownTeacherError
from pocketpilot.store import (
    artifacts_dir,
    is_artifact_folder,
    list_artifacts,
    rebuild_command,
    resolve_artifact,
    verify_artifact,
)
from pocketpilot.teachers import ACCEPTED_FORMS, fetch_teacher, parse_spec, refuse_custom_code
from pocketpilot.runtime.backends import Backend, TorchBackend
from pocketpilot.runtime.fuse import fuse_projections
from pocketpilot.runtime.int4 import Int4Linear
from pocketpilot.runtime.llamacpp import GGUF_FILE, load_gguf_folder
from pocketpilot.runtime.qlinear import Int8Embedding, Int8Linear, align_int8_buffers, get_submodule_parent

log = logging.getLogger(__name__)

#: float tensors of a quantized artifact kept in their saved dtype, not cast to the compute dtype:
#: per-row int8 scales and int4 scales/zeros (written by compression, read here)
KEEP_DTYPE_SUFFIXES = ("weight_scale", "scales_zeros")

#: Sidecar that marks an artifact with int8 weights and lists the quantized modules.
QUANT_FILE = "quantization.json"
INT8_FORMAT = "pocketpilot-int8-weight-only-per-channel/v1"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; raises ``ValueError`` for other names."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


@dataclass
class LoadedModel:
    """A causal LM ready for greedy decoding.

    Attributes:
        model: a ``transformers`` causal LM in eval mode.
        tokenizer: its tokenizer.
        dtype: activation dtype used for inference.
        folder: where it was loaded from.
        quantization: the parsed ``quantization.json`` sidecar, or ``None`` for float weights.
        engine: ``"torch"``, or ``"llama.cpp"`` for a GGUF artifact (``model`` is then a
            :class:`pocketpilot.runtime.llamacpp.LlamaCppModel`, with a ``config`` but no torch modules).
    """

    model: Any
    tokenizer: Any
    dtype: torch.dtype
    folder: Path
    quantization: dict | None = field(default=None)
    engine: str = "torch"

    def backend(self) -> Backend:
        """The :class:`pocketpilot.runtime.backends.Backend` that runs this model."""
        return self.model if self.engine == "llama.cpp" else TorchBackend(self.model)

    def require_torch(self, what: str) -> None:
        """Raise :class:`ArtifactError` when ``what`` (e.g. ``"HumanEval"``) needs the torch engine and this is not it."""
        if self.engine != "torch":
            raise ArtifactError(f"{what} runs on torch artifacts only; {self.folder.name} is served by {self.engine} "
                                f"(compress the teacher with --method int8 for it)")


def load_model_folder(folder: str | Path, dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedModel:
    """Load a model folder for inference (on CPU unless ``device`` is ``"cuda"``).

    Args:
        folder: a Hugging Face folder (``config.json``, safetensors, tokenizer files), optionally
            with a ``quantization.json`` sidecar written by :mod:`pocketpilot.compression.methods`.
        dtype: activation dtype; default: the sidecar's ``compute_dtype``, else the dtype in
            ``config.json``, else float32.
        device: ``"cpu"`` or ``"cuda"`` (the first GPU; bitsandbytes artifacts load there directly).

    Raises:
        ArtifactError: the folder is missing, or its files are unreadable or inconsistent, or
            ``device`` is ``"cuda"`` on a machine without CUDA.
    """
    if device != "cpu" and not (device == "cuda" and torch.cuda.is_available()):
        raise ArtifactError(f"device {device!r} is not available here; use device 'cpu'")

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"no model in {folder} (config.json missing)")
    refuse_custom_code(folder)
    try:
        if (folder / GGUF_FILE).is_file():
            return _load_gguf(folder, device)
        return _load_torch(folder, dtype, device)
    except PocketPilotError:
        raise
    except Exception as exc:  # any library's error for unreadable or inconsistent files: one line
        log.debug("loading %s failed", folder, exc_info=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ArtifactError(f"cannot load model from {folder}: {type(exc).__name__}: {first}") from exc


def _load_torch(folder: Path, dtype: torch.dtype | None, device: str) -> LoadedModel:
    """A transformers model: float / bitsandbytes weights, or int8 / int4 ones with a ``quantization.json`` sidecar."""
    quant = None
    if (folder / QUANT_FILE).is_file():
        quant = json.loads((folder / QUANT_FILE).read_text())
        if not isinstance(quant, dict) or quant.get("format") != INT8_FORMAT:
            found = quant.get("format") if isinstance(quant, dict) else type(quant).__name__
            raise ArtifactError(f"{folder / QUANT_FILE}: unsupported format {found!r}")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if quant is None:
        if dtype is None:
            dtype = _config_dtype(config)
        bnb = "quantization_config" in json.loads((folder / "config.json").read_text())
        if bnb:  # bitsandbytes logs a cast warning on every LLM.int8 matmul on CPU
            logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                     trust_remote_code=False,
                                                     **({"device_map": device} if bnb else {}))
        if not bnb and device != "cpu":
            model.to(device)
    else:
        dtype = dtype or dtype_from_name(quant["compute_dtype"])
        model = _load_int8(folder, config, quant, dtype)
        if device != "cpu":
            model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, dtype=dtype, folder=folder, quantization=quant)


def _load_gguf(folder: Path, device: str) -> LoadedModel:
    """A llama.cpp artifact: ``model.gguf`` run by llama.cpp, the folder's tokenizer and config."""
    if device != "cpu":
        raise ArtifactError(f"{folder} is a llama.cpp artifact; it runs on the CPU (device 'cpu')")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = load_gguf_folder(folder, tokenizer, config)
    return LoadedModel(model=model, tokenizer=tokenizer, dtype=torch.float16, folder=folder, engine="llama.cpp")


def _config_dtype(config) -> torch.dtype:
    name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(name, torch.dtype):
        return name
    return _DTYPES.get(str(name), torch.float32)


def _load_int8(folder: Path, config, quant: dict, dtype: torch.dtype):
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    install_int8_modules(model, quant, dtype)
    state = {}
    for name in quant["weight_files"]:
        state.update(load_file(folder / name))
    state = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(KEEP_DTYPE_SUFFIXES) else v)
             for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    fuse_projections(model)  # fold AWQ scales into norms, one matmul for q/k/v and for gate/up
    align_int8_buffers(model)
    for mod in model.modules():
        if isinstance(mod, Int4Linear):
            mod.prepare(drop_nibbles=True)  # packed for the kernel once; the on-disk copy is not kept
    tied = quant.get("tied") or {}
    float_head = quant.get("tied_float_head")  # a float head tied to a float embedding (int8-fhead)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in tied and k != float_head]
    if missing or unexpected:
        raise ArtifactError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for head, emb in tied.items():
        parent, name = get_submodule_parent(model, head)
        setattr(parent, name, model.get_submodule(emb).as_linear(quant.get("head_rescore_topk", 0)))
    if float_head:
        parent, name = get_submodule_parent(model, float_head.rsplit(".", 1)[0])
        getattr(parent, name).weight = model.get_input_embeddings().weight
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise ArtifactError(f"{folder}: weights missing for {leftover[:3]}")
    return model


def install_int8_modules(model, quant: dict, dtype: torch.dtype) -> None:
    """Replace the modules listed in a ``quantization.json`` sidecar with empty int8 modules.

    ``quant["modules"]`` maps module paths to ``"linear"``, ``"head"``, ``"embedding"`` or ``"int4"``
    (group-wise 4-bit, ``quant["group_size"]``); tied heads
    (``quant["tied"]``: head path -> embedding path) are re-created after loading.
    """
    for path, kind in quant["modules"].items():
        parent, name = get_submodule_parent(model, path)
        old = getattr(parent, name)
        if kind in ("linear", "head"):
            new = Int8Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta",
                             rescore_topk=quant.get("head_rescore_topk", 0) if kind == "head" else 0)
        elif kind == "embedding":
            new = Int8Embedding(old.num_embeddings, old.embedding_dim, dtype=dtype, device="meta")
        elif kind == "int4":
            new = Int4Linear(old.in_features, old.out_features, quant["group_size"], bias=old.bias is not None,
                             device="meta")
        else:
            raise ArtifactError(f"unknown quantized module kind {kind!r} for {path}")
        setattr(parent, name, new)


def load_artifact(name: str | None = None):
    """Verify and load an artifact (id, folder, or ``None`` for the active one).

    Every file of the folder is checked against the manifest first (:func:`verify_artifact`); a
    folder without a manifest is no artifact and is refused.

    Returns a :class:`pocketpilot.runtime.LoadedModel`.

    Raises:
        ArtifactError: missing, partial or corrupt; the message gives the rebuild command.
        CustomCodeError: the folder needs code shipped with it.
    """
    folder = resolve_artifact(name)
    manifest = verify_artifact(folder)
    try:
        return load_model_folder(folder)
    except CustomCodeError:
        raise
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; rebuild it with: {rebuild_command(manifest, folder.name)}") from None


def _resolve(name: str | None) -> tuple[Path, bool]:
    """``(folder, is_artifact)`` behind a model name (see :func:`load_any`); teacher specs are fetched."""
    is_id = name is not None and os.sep not in name and (artifacts_dir() / name).is_dir()  # not a path
    if name is None or is_id or is_artifact_folder(Path(name)):
        return resolve_artifact(name), True
    try:
        spec = parse_spec(name)
    except UnknownTeacherError:
        cached = ", ".join(r["id"] for r in list_artifacts()) or "none yet"
        raise UnknownTeacherError(
            f"{name!r} is neither a cached artifact (cached: {cached}) nor a teacher ({ACCEPTED_FORMS})"
        ) from None
    return fetch_teacher(spec).folder, False


def resolve_any(name: str | None = None) -> Path:
    """The folder behind any model name a user may give (see :func:`load_any`), without loading it.

    A teacher spec is fetched and converted once, as :func:`load_any` does.

    Raises:
        ArtifactError, UnknownTeacherError, FetchError, CustomCodeError: with one-line messages.
    """
    return _resolve(name)[0]


def load_any(name: str | None = None):
    """Load a model for inference by any name a user may give.

    ``name`` may be a cached artifact id or an artifact folder (one with a ``manifest.json``, or
    any folder under the cache's ``artifacts/``: checked whole against its manifest, and refused
    without one), an explicit plain Hugging Face folder elsewhere (loaded as it is), or a teacher
    spec (packaged alias, ``hf:``, ``.gguf``: fetched and converted once, its files re-hashed).
    ``None`` loads the active artifact.

    Returns a :class:`pocketpilot.runtime.LoadedModel`.

    Raises:
        ArtifactError, UnknownTeacherError, FetchError, CustomCodeError: with one-line messages.
    """
    folder, is_artifact = _resolve(name)
    return load_artifact(folder) if is_artifact else load_model_folder(folder)
