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
from pocketpilot.runtime.fuse import fuse_projections
from pocketpilot.runtime.int4 import Int4Linear, fake_quant, supports
from pocketpilot.runtime.qlinear import choose_input_scale, get_submodule_parent

#: the group size (input columns per scale and zero): 0.5 + 4 / 64 bytes a weight with bf16 scales and zeros
GROUP_SIZE = 64


def int4_linears(model: nn.Module, inputs: dict[str, torch.Tensor], group_size: int = GROUP_SIZE):
    """Replace the decoder layers' ``nn.Linear`` modules the kernel can serve with :class:`Int4Linear`, in place.

    Args:
        model: float causal LM (``model.model.layers`` hold the decoder layers).
        inputs: ``{module path: float32 [rows, in_features]}`` calibration inputs (may be empty).

    Returns:
        ``({module path: "int4"}, {module path: chosen AWQ alpha})``.
    """
    modules, alphas = {}, {}
    head = model.get_output_embeddings()
    fq = partial(fake_quant, group_size=group_size)

    def takes(mod: nn.Module) -> bool:
        return isinstance(mod, nn.Linear) and mod is not head and supports(mod.out_features, mod.in_features, group_size)

    shared = shared_input_scales(model, inputs, alphas, takes, fake_quant=fq)
    for path, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or mod is head or ".layers." not in f".{path}":
            continue
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
    details = quantize_int8(model, out, calibration, matmul_dtype=matmul_dtype, pre=int4_linears,
                            extra={"group_size": GROUP_SIZE})
    n4 = sum(1 for m in model.modules() if isinstance(m, Int4Linear))
    details["weights"] = (f"decoder linears: int4 group-wise asymmetric (groups of {GROUP_SIZE}, bf16 scales and "
                          f"zeros; {n4} modules); embedding and LM head int8 per-channel symmetric")
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
