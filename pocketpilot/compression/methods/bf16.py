"""``bf16``: every weight cast to bfloat16 (2 bytes a weight); bf16 matmuls."""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods import QuantMethod
from pocketpilot.compression.methods._float import float_linear, save_float


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    import torch  # lazy: torch

    save_float(model, out, torch.bfloat16)
    return {"weights": "bfloat16", "activations": "bfloat16"}


def _in_memory(model):
    import torch  # lazy: torch

    return model.to(torch.bfloat16)


def _probe_linear(lin):
    import torch  # lazy: torch

    return float_linear(lin, torch.bfloat16)


METHOD = QuantMethod(
    name="bf16", description="all weights in bfloat16 (2 bytes a weight)",
    body_bytes_per_weight=2.0, head_bytes_per_weight=2.0, compute_dtype="bfloat16", quality_tier=0,
    apply=_apply, in_memory=_in_memory, probe_linear=_probe_linear, gpu=True, rank=30,
)
