"""``int8-fhead``: ``int8`` decoder layers; the token embedding and LM head, which set every logit, stay float32."""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods import QuantMethod


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    from pocketpilot.compression.methods._int8 import quantize_int8  # lazy: torch

    return quantize_int8(model, out, calibration, float_head=True, matmul_dtype=METHOD.compute_dtype)


METHOD = QuantMethod(
    name="int8-fhead", description="int8 decoder layers; token embedding and LM head kept in float32 (mixed precision)",
    body_bytes_per_weight=1.0, head_bytes_per_weight=4.0, compute_dtype="bfloat16", quality_tier=0,
    apply=_apply, in_memory=lambda model: None, probe_linear=lambda lin: None,
    body_kernel="int8", head_kernel="none", chooser=False, rank=20,
)
