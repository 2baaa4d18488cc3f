"""Weight-only per-channel int8, shared by the ``int8`` and ``int8-fhead`` methods.

Per output row symmetric int8 for every linear layer and the token embedding (a tied LM head
shares it), with activation-aware input scales calibrated on a few standard-library files
(AWQ, Lin et al., MLSys 2024); float32 residual stream, bf16 matmuls; int8 on disk.
Wei et al., FSE'23 ("Towards greener yet powerful code generation via quantization") found
activation quantization to be the sensitive part; measured here, dynamic int8 activations cut
ES from 51 to 37 on SmolLM2-135M while weight-only kept it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from pocketpilot.runtime.loader import INT8_FORMAT, KEEP_DTYPE_SUFFIXES, QUANT_FILE
from pocketpilot.runtime.fuse import fuse_projections, shared_input_groups
from pocketpilot.runtime.qlinear import Int8Embedding, Int8Linear, choose_input_scale, get_submodule_parent


#: LM head logits recomputed exactly in float32 (see :class:`Int8Linear`).
HEAD_RESCORE_TOPK = 8


#: ``pre(model, inputs) -> (modules, alphas)``: replaces some linears before the rest become int8
PreQuantize = Callable[[nn.Module, dict], tuple[dict, dict]]



def quantize_int8(model: nn.Module, out: Path, calibration: list | None = None, float_head: bool = False,
                  matmul_dtype: str = "bfloat16", pre: PreQuantize | None = None, extra: dict | None = None) -> dict:
    """Quantize ``model`` with weight-only per-channel int8 (activation-aware scales from ``calibration``)
    and write ``model.safetensors``, ``config.json`` and the ``quantization.json`` sidecar into ``out``.

    ``float_head`` keeps the token embedding and LM head in float32. ``pre`` (the ``int4`` method)
    first replaces the linears it takes, given the calibration inputs; every remaining ``nn.Linear``
    and the embedding become int8. ``extra`` is added to the sidecar. Returns the recipe details.
    """

    compute = torch.float32
    inputs = collect_linear_inputs(model, calibration) if calibration else {}
    modules, alphas = pre(model, inputs) if pre else ({}, {})
    more, more_alphas = quantize_int8_modules(model, compute, inputs, skip_head=float_head)
    modules.update(more)
    alphas.update(more_alphas)
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
        if tensor.is_floating_point() and not key.endswith(KEEP_DTYPE_SUFFIXES):
            tensor = tensor.to(compute)
        state[key] = tensor.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.dtype = compute
    model.config.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)
    n_int8 = sum(t.numel() for k, t in state.items() if t.dtype == torch.int8)
    n_float = sum(t.numel() for k, t in state.items()
                  if t.is_floating_point() and not k.endswith(KEEP_DTYPE_SUFFIXES))
    sidecar = {
        "format": INT8_FORMAT,
        "compute_dtype": "float32",
        "matmul_dtype": matmul_dtype,
        "head_rescore_topk": HEAD_RESCORE_TOPK,
        "weight_files": ["model.safetensors"],
        "modules": modules,
        "tied": tied,
        **({"tied_float_head": head_key} if head_key else {}),
        **(extra or {}),
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


def shared_input_scales(model: nn.Module, inputs: dict[str, torch.Tensor], alphas: dict[str, float],
                        takes: Callable[[nn.Module], bool], fake_quant=None) -> dict[str, torch.Tensor | None]:
    """One AWQ input scale per group of projections that read the same input (q/k/v, gate/up).

    The scale minimises the summed output error of the group (their weights stacked), as AWQ
    scales the inputs of all the linears after one operator together; a shared scale is what
    lets :func:`pocketpilot.runtime.fuse.fuse_projections` fold it into the norm and fuse the
    matmuls. Groups where a member is missing from ``inputs`` or not taken by ``takes`` are skipped.

    Returns:
        ``{module path: scale [in] or None}`` for every member of a calibrated group; the chosen
        alpha of each goes into ``alphas``.
    """
    out: dict[str, torch.Tensor | None] = {}
    for paths in shared_input_groups(model):
        mods = [model.get_submodule(p) for p in paths]
        if not all(p in inputs and takes(m) for p, m in zip(paths, mods)):
            continue
        w = torch.cat([m.weight.detach().float() for m in mods])
        kw = {"fake_quant": fake_quant} if fake_quant is not None else {}
        scale, alpha = choose_input_scale(w, inputs[paths[0]], **kw)
        for p in paths:
            out[p], alphas[p] = scale, alpha
    return out


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

    shared = shared_input_scales(model, inputs, alphas, lambda m: isinstance(m, nn.Linear) and m is not head)

    def scale_for(path: str, weight: torch.Tensor):
        if path in shared:
            return shared[path]
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


def int8_in_memory(model: nn.Module) -> nn.Module:
    """``model`` with int8 linears and embedding in place (no calibration), fused as served, for the speed probe."""
    quantize_int8_modules(model)
    fuse_projections(model)
    return model


def int8_linear(lin: nn.Linear):
    """``(Int8Linear copy of lin, bf16 one-row input [1, in_features])`` for the bandwidth probe."""
    return Int8Linear.from_linear(lin), torch.randn(1, lin.in_features).to(torch.bfloat16)
