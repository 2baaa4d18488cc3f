"""Group-wise 4-bit weight-only quantization of the decoder layers (the ``int4`` method).

Every decoder-layer linear the CPU int4 kernel can serve (:func:`pocketpilot.runtime.int4.supports`)
becomes an :class:`~pocketpilot.runtime.int4.Int4Linear` with activation-aware input scales (AWQ,
Lin et al., MLSys 2024) chosen against the int4 output error on the calibration inputs; the
token embedding and LM head, and any linear the kernel cannot serve, stay int8 as in ``int8``
(the LM head's top-8 logits rescored in float32).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from pocketpilot.compression.methods._int8 import quantize_int8, quantize_int8_modules, shared_input_scales
from pocketpilot.compression.methods.int4 import DEFAULT_GROUP_SIZE as GROUP_SIZE
from pocketpilot.runtime.fuse import fuse_projections
from pocketpilot.runtime.int4 import GROUP_SIZES, Int4Linear, fake_quant, supports
from pocketpilot.runtime.qlinear import choose_input_scale, get_submodule_parent

#: a larger group (fewer bytes) is kept only when its calibrated output error is at most this
#: factor of the smallest error measured
GROUP_ERROR_SLACK = 1.1
#: calibration rows per linear used to measure a group size's output error
GROUP_PROBE_ROWS = 256


def _decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{module path: nn.Linear}`` of the decoder layers (the LM head excluded), a snapshot safe to replace in."""
    head = model.get_output_embeddings()
    return {p: m for p, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head and ".layers." in f".{p}"}


def choose_group_size(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[int, dict[int, float]]:
    """The int4 group size for ``model``, chosen by the measured output error on calibration inputs.

    For each size in :data:`~pocketpilot.runtime.int4.GROUP_SIZES` that the kernel can serve on
    every decoder linear the finest size serves (so all candidates quantize the same modules),
    the error is the mean over calibrated linears of the relative output error
    ``||x W^T - x Q_G(W)^T||^2 / ||x W^T||^2`` on up to :data:`GROUP_PROBE_ROWS` calibration rows
    (no AWQ scaling). The largest group within :data:`GROUP_ERROR_SLACK` of the smallest error is
    chosen. Measured: on a teacher converted from a GGUF whose 4-bit blocks are 32 wide (SmolLM2
    Q4_1) groups of 32 have 1/360 of the error of 64; on Qwen2.5-Coder's Q4_K_M 1/4.

    Args:
        model: float causal LM; inputs: ``{module path: float32 [rows, in_features]}``.

    Returns:
        ``(group size, {group size: error})``; without calibration inputs ``(DEFAULT_GROUP_SIZE, {})``.
    """
    linears = {p: m for p, m in _decoder_linears(model).items() if p in inputs}
    if not linears:
        return GROUP_SIZE, {}
    finest = min(GROUP_SIZES)
    served = {p for p, m in linears.items() if supports(m.out_features, m.in_features, finest)}
    errors: dict[int, float] = {}
    for g in GROUP_SIZES:
        if not served or any(not supports(linears[p].out_features, linears[p].in_features, g) for p in served):
            continue
        rel = []
        for p in served:
            w, x = linears[p].weight.detach().float(), inputs[p][:GROUP_PROBE_ROWS].float()
            ref = x @ w.T
            rel.append(float(((x @ fake_quant(w, g).T - ref) ** 2).sum() / (ref ** 2).sum().clamp(min=1e-20)))
        errors[g] = sum(rel) / len(rel)
    if not errors:
        return GROUP_SIZE, {}
    best = min(errors.values())
    return max(g for g, e in errors.items() if e <= GROUP_ERROR_SLACK * best), errors


def int4_linears(model: nn.Module, inputs: dict[str, torch.Tensor], group_size: int = GROUP_SIZE):
    """Replace the decoder layers' ``nn.Linear`` modules the kernel can serve with :class:`Int4Linear`, in place.

    Args:
        model: float causal LM (``model.model.layers`` hold the decoder layers).
        inputs: ``{module path: float32 [rows, in_features]}`` calibration inputs (may be empty).
        group_size: input columns per scale and zero.

    Returns:
        ``({module path: "int4"}, {module path: chosen AWQ alpha})``.
    """
    modules, alphas = {}, {}
    head = model.get_output_embeddings()
    fq = partial(fake_quant, group_size=group_size)

    def takes(mod: nn.Module) -> bool:
        return isinstance(mod, nn.Linear) and mod is not head and supports(mod.out_features, mod.in_features, group_size)

    shared = shared_input_scales(model, inputs, alphas, takes, fake_quant=fq)
    for path, mod in _decoder_linears(model).items():
        if not takes(mod):
            continue  # stays int8
        scale = shared.get(path)
        if path in inputs and path not in shared:
            scale, alphas[path] = choose_input_scale(mod.weight, inputs[path], fake_quant=fq)
        parent, name = get_submodule_parent(model, path)
        setattr(parent, name, Int4Linear.from_linear(mod, group_size, scale))
        modules[path] = "int4"
    return modules, alphas


def quantize_int4(model: nn.Module, out: Path, calibration: list | None = None, matmul_dtype: str = "bfloat16") -> dict:
    """Write ``model`` with int4 decoder layers and int8 embedding / head into ``out``; returns the recipe details."""
    chosen: dict = {}

    def pre(model: nn.Module, inputs: dict[str, torch.Tensor]):
        chosen["group_size"], errors = choose_group_size(model, inputs)
        chosen["group_errors"] = {str(g): e for g, e in errors.items()}
        return int4_linears(model, inputs, chosen["group_size"])

    details = quantize_int8(model, out, calibration, matmul_dtype=matmul_dtype, pre=pre, extra=chosen)
    n4 = sum(1 for m in model.modules() if isinstance(m, Int4Linear))
    g = chosen["group_size"]
    measured = ", ".join(f"{k}: {v:.2e}" for k, v in chosen["group_errors"].items())
    details["weights"] = (f"decoder linears: int4 group-wise asymmetric (groups of {g}, bf16 scales and zeros, "
                          f"least-squares fitted; {n4} modules); embedding and LM head int8 per-channel symmetric")
    details["group_size"] = {"chosen": g, "relative_output_error": measured or "not measured (no calibration)"}
    details["activations"] = "float32 residual stream; bf16 kernel inputs; LM head top-8 logits rescored in float32"
    return details


def int4_in_memory(model: nn.Module) -> nn.Module:
    """``model`` with int4 decoder linears and int8 embedding / head in place (no calibration), for the speed probe."""
    int4_linears(model, {})
    quantize_int8_modules(model)
    fuse_projections(model)
    return model


def int4_linear(lin: nn.Linear):
    """``(Int4Linear copy of lin, float32 one-row input)`` for the bandwidth probe, or ``None`` if unsupported."""
    if not supports(lin.out_features, lin.in_features, GROUP_SIZE):
        return None
    return Int4Linear.from_linear(lin, GROUP_SIZE), torch.randn(1, lin.in_features)
