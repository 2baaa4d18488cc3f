"""Quantization methods behind a name registry.

Each method takes a float ``transformers`` causal LM and writes the compressed weights
(plus ``config.json``) into an output folder; the tokenizer and manifest are written by
:func:`pocketpilot.compression.api.compress`. Methods are post-training and need no data.

- ``int8``: weight-only, per-channel (per output row) symmetric int8 for every linear layer
  and the token embedding (the tied LM head shares it), with activation-aware input scales
  calibrated on a few standard-library files (AWQ, Lin et al., MLSys 2024); float32
  residual stream, bf16 matmuls. Int8 on disk.
  Wei et al., FSE'23 ("Towards greener yet powerful code generation via quantization")
  found activation quantization to be the sensitive part; measured here, dynamic int8
  activations cut ES from 51 to 37 on SmolLM2-135M while weight-only kept it.
- ``int8-fhead``: ``int8`` for the decoder layers, the token embedding and LM head kept in
  float32 (mixed precision per part: the layers that set every logit stay exact).
- ``bf16``: all weights cast to bfloat16.
- ``none``: float32 copy of the teacher (a baseline).
- ``bnb-int8``: bitsandbytes LLM.int8() (Dettmers et al., NeurIPS 2022, "LLM.int8(): 8-bit
  Matrix Multiplication for Transformers at Scale"): vector-wise int8 weights, outlier
  activation columns (> 6.0) in float16. Optional dependency ``bitsandbytes``.
- ``bnb-nf4``: bitsandbytes 4-bit NormalFloat with double quantization (Dettmers et al.,
  NeurIPS 2023, "QLoRA"), blocks of 64 weights, bf16 compute. Optional dependency ``bitsandbytes``.
  Both run on CUDA and, with bitsandbytes >= 0.48, on CPU (measured in the README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pocketpilot.errors import MissingDependencyError, UnknownMethodError
from pocketpilot.runtime.loader import INT8_FORMAT, QUANT_FILE
from pocketpilot.runtime.qlinear import Int8Embedding, Int8Linear, choose_input_scale, get_submodule_parent


@dataclass(frozen=True)
class QuantMethod:
    """A registered method.

    Attributes:
        name: registry key (``--method NAME``).
        description: one line for ``--help``.
        apply: ``apply(model, out_dir, calibration) -> recipe details`` (a JSON-able dict recorded in
            the manifest); ``calibration`` is a list of token-id tensors ``[1, T]`` or ``None``.
        requires: optional Python packages the method imports, as ``(module, pip requirement)``.
    """

    name: str
    description: str
    apply: Callable[[nn.Module, Path, list | None], dict]
    requires: tuple[tuple[str, str], ...] = ()

    def check_available(self) -> None:
        """Raise :class:`MissingDependencyError` (with the pip command) if a required package is missing."""
        import importlib.util

        missing = [req for mod, req in self.requires if importlib.util.find_spec(mod) is None]
        if missing:
            raise MissingDependencyError(
                f"method {self.name!r} needs {', '.join(missing)}; install it with: pip install {' '.join(missing)}"
            )


METHODS: dict[str, QuantMethod] = {}


def register(name: str, description: str, requires: tuple[tuple[str, str], ...] = ()):
    """Decorator adding ``fn(model, out_dir, calibration) -> dict`` to :data:`METHODS` under ``name``."""

    def deco(fn: Callable[[nn.Module, Path, list | None], dict]):
        METHODS[name] = QuantMethod(name, description, fn, requires)
        return fn

    return deco


def get_method(name: str, check: bool = True) -> QuantMethod:
    """Look up a method by name (and, with ``check``, that its optional packages are installed).

    Raises:
        UnknownMethodError: ``name`` is not registered; the message lists the supported ones.
        MissingDependencyError: ``check`` and a package the method needs is missing (message: the pip command).
    """
    try:
        method = METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; supported: {', '.join(METHODS)}") from None
    if check:
        method.check_available()
    return method


def _save_float(model: nn.Module, out: Path, dtype: torch.dtype) -> None:
    model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)


@register("none", "float32 copy of the teacher (baseline, no compression)")
def quantize_none(model: nn.Module, out: Path, calibration: list | None = None) -> dict:
    _save_float(model, out, torch.float32)
    return {"weights": "float32", "activations": "float32"}


@register("bf16", "all weights in bfloat16 (2 bytes a weight)")
def quantize_bf16(model: nn.Module, out: Path, calibration: list | None = None) -> dict:
    _save_float(model, out, torch.bfloat16)
    return {"weights": "bfloat16", "activations": "bfloat16"}


BNB = (("bitsandbytes", "bitsandbytes>=0.48"),)


def _bnb_quantize(model: nn.Module, out: Path, quant_config, dtype: torch.dtype) -> dict:
    """Quantize with bitsandbytes through transformers: save the float model, reload it with
    ``quant_config`` (transformers swaps in bnb layers while loading), save the quantized weights.

    The float copy lives in ``out/.float`` and is removed; ``out`` is an atomic build folder.
    """
    import shutil

    from transformers import AutoModelForCausalLM

    float_dir = out / ".float"
    model.save_pretrained(float_dir, safe_serialization=True)
    try:
        qmodel = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=quant_config, dtype=dtype,
                                                      device_map="cuda" if torch.cuda.is_available() else "cpu",
                                                      local_files_only=True)
        qmodel.save_pretrained(out, safe_serialization=True)
    finally:
        shutil.rmtree(float_dir, ignore_errors=True)
    kinds: dict[str, int] = {}
    for mod in qmodel.modules():
        if type(mod).__module__.startswith("bitsandbytes"):
            kinds[type(mod).__name__] = kinds.get(type(mod).__name__, 0) + 1
    import bitsandbytes

    return {"quantized_modules": kinds, "bitsandbytes": bitsandbytes.__version__,
            "quantization_config": quant_config.to_dict()}


@register("bnb-int8", "bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns (needs bitsandbytes)", BNB)
def quantize_bnb_int8(model: nn.Module, out: Path, calibration: list | None = None) -> dict:
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    details = _bnb_quantize(model, out, cfg, torch.float16 if torch.cuda.is_available() else torch.float32)
    return {"weights": "int8 vector-wise (LLM.int8)", "activations": "int8 with fp16 outlier columns (threshold 6.0)",
            **details}


@register("bnb-nf4", "bitsandbytes 4-bit NormalFloat + double quantization, bf16 compute (needs bitsandbytes)", BNB)
def quantize_bnb_nf4(model: nn.Module, out: Path, calibration: list | None = None) -> dict:
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    details = _bnb_quantize(model, out, cfg, torch.bfloat16)
    return {"weights": "4-bit NF4, blocks of 64, double-quantized scales", "activations": "bfloat16", **details}


#: LM head logits recomputed exactly in float32 (see :class:`Int8Linear`).
HEAD_RESCORE_TOPK = 8


@register("int8", "weight-only per-channel int8 weights, float activations (1 byte a weight; default)")
def quantize_int8(model: nn.Module, out: Path, calibration: list | None = None, float_head: bool = False) -> dict:
    from safetensors.torch import save_file

    compute = torch.float32
    inputs = collect_linear_inputs(model, calibration) if calibration else {}
    modules, alphas = quantize_int8_modules(model, compute, inputs, skip_head=float_head)
    tied = {}
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    is_tied = getattr(model.config, "tie_word_embeddings", False)
    head_path = next((n for n, m in model.named_modules() if m is head), None)
    head_key = f"{head_path}.weight" if float_head and is_tied else None  # one float32 copy; the loader re-ties
    if is_tied and isinstance(emb, Int8Embedding):
        emb_path = next(n for n, m in model.named_modules() if m is emb)
        tied[head_path] = emb_path
        modules.pop(head_path, None)
    state = {}
    for key, tensor in model.state_dict().items():
        if key.rsplit(".", 1)[0] in tied or key == head_key:
            continue
        if tensor.is_floating_point() and not key.endswith("weight_scale"):
            tensor = tensor.to(compute)
        state[key] = tensor.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = compute
    model.config.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)
    n_int8 = sum(t.numel() for k, t in state.items() if t.dtype == torch.int8)
    n_float = sum(t.numel() for k, t in state.items() if t.dtype != torch.int8 and not k.endswith("weight_scale"))
    sidecar = {
        "format": INT8_FORMAT,
        "compute_dtype": "float32",
        "matmul_dtype": "bfloat16",
        "head_rescore_topk": HEAD_RESCORE_TOPK,
        "weight_files": ["model.safetensors"],
        "modules": modules,
        "tied": tied,
        **({"tied_float_head": head_key} if head_key else {}),
    }
    (out / QUANT_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
    return {
        "weights": "int8 per-channel symmetric (absmax/127)"
                   + ("; token embedding and LM head kept in float32" if float_head else ""),
        "activations": "float32 residual stream; bf16 matmul inputs; LM head top-8 logits rescored in float32",
        "int8_params": n_int8,
        "float_params": n_float,
        "quantized_modules": len(modules) + len(tied),
        "activation_aware_scaling": {
            "calibration_tokens": sum(int(c.numel()) for c in calibration) if calibration else 0,
            "alpha_counts": {str(a): sum(1 for v in alphas.values() if v == a) for a in sorted(set(alphas.values()))},
        },
    }


@register("int8-fhead", "int8 decoder layers; token embedding and LM head kept in float32 (mixed precision)")
def quantize_int8_float_head(model: nn.Module, out: Path, calibration: list | None = None) -> dict:
    """Like ``int8``, but the token embedding and LM head, the parts that set every logit, stay float32."""
    return quantize_int8(model, out, calibration, float_head=True)


def collect_linear_inputs(model: nn.Module, calibration: list, rows: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run ``model`` on calibration token ids and keep a sample of each ``nn.Linear``'s inputs.

    Args:
        model: float causal LM.
        calibration: token-id tensors ``[1, T]``.
        rows: input rows kept per linear layer (sampled evenly from every batch).

    Returns:
        ``{module path: float32 [rows, in_features]}``.
    """
    gen = torch.Generator().manual_seed(seed)
    per_batch = max(1, rows // len(calibration))
    kept: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(m, args, path=path):
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                idx = torch.randperm(x.shape[0], generator=gen)[:per_batch]
                kept.setdefault(path, []).append(x[idx].float())
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for ids in calibration:
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in kept.items()}


def calibration_batches(tokenizer, n: int = 8, tokens: int = 512) -> list[torch.Tensor]:
    """Token ids ``[1, tokens]`` from up to ``n`` fixed Python standard-library files (the calibration set).

    Files shorter than ``tokens`` tokens, or missing, are skipped.
    """
    from pocketpilot.evaluation.tasks import default_source_dir

    root = default_source_dir()
    out = []
    for name in CALIBRATION_FILES[:n]:
        try:
            ids = tokenizer.encode((root / name).read_text(encoding="utf-8"), add_special_tokens=False)
        except (OSError, UnicodeDecodeError):
            continue
        if len(ids) >= tokens:
            out.append(torch.tensor([ids[:tokens]]))
    return out


#: Standard-library files used for calibration (present in CPython 3.10-3.14).
CALIBRATION_FILES = ("csv.py", "heapq.py", "pprint.py", "fractions.py", "selectors.py", "tempfile.py",
                     "logging/handlers.py", "http/cookies.py")


def quantize_int8_modules(
    model: nn.Module, compute: torch.dtype = torch.float32, inputs: dict[str, torch.Tensor] | None = None,
    skip_head: bool = False,
) -> tuple[dict[str, str], dict[str, float]]:
    """Replace every ``nn.Linear`` and the input ``nn.Embedding`` with int8 modules, in place.

    With calibration ``inputs`` (from :func:`collect_linear_inputs`), each layer gets the
    activation-aware input scale that minimises its output error (:func:`choose_input_scale`);
    a tied embedding takes the LM head's.

    Returns ``({module path: "linear" | "head" | "embedding"}, {module path: chosen alpha})``
    (``head``: the LM head, whose top logits are rescored in float32). A head tied to the embedding is
    replaced by a view of the embedding's int8 buffers. Non-quantized parameters (norms) are
    cast to ``compute``. ``skip_head``: leave the input embedding and the LM head in float.
    """
    inputs = inputs or {}
    modules: dict[str, str] = {}
    alphas: dict[str, float] = {}
    emb = model.get_input_embeddings()
    tied = getattr(model.config, "tie_word_embeddings", False)
    head = model.get_output_embeddings()
    head_path = next((n for n, m in model.named_modules() if m is head), None)

    def scale_for(path: str, weight: torch.Tensor):
        if path not in inputs:
            return None
        s, alphas[path] = choose_input_scale(weight, inputs[path])
        return s

    for path, mod in list(model.named_modules()):
        if skip_head and (mod is emb or mod is head):
            continue
        if isinstance(mod, nn.Embedding) and mod is emb:
            s = scale_for(head_path, mod.weight) if tied and head_path else None
            new = Int8Embedding.from_embedding(mod, compute, s)
            kind = "embedding"
        elif isinstance(mod, nn.Linear) and not (tied and mod is head):
            new = Int8Linear.from_linear(mod, scale_for(path, mod.weight))
            kind = "linear"
            if mod is head:
                new.rescore_topk, kind = HEAD_RESCORE_TOPK, "head"
        else:
            continue
        parent, name = get_submodule_parent(model, path)
        setattr(parent, name, new)
        modules[path] = kind
    if tied and head is not None and not skip_head:
        parent, name = get_submodule_parent(model, head_path)
        setattr(parent, name, model.get_input_embeddings().as_linear(HEAD_RESCORE_TOPK))
        modules[head_path] = "head"
    for param in model.parameters():  # norms etc.; int8 modules hold buffers only
        param.data = param.data.to(compute)
    return modules, alphas
