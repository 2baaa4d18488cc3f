"""``none``: a float32 copy of the teacher (the baseline every other method is measured against)."""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods import QuantMethod
from pocketpilot.compression.methods._float import float_linear, save_float


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    import torch  # lazy: torch

    save_float(model, out, torch.float32)
    return {"weights": "float32", "activations": "float32"}


def _probe_linear(lin):
    import torch  # lazy: torch

    return float_linear(lin, torch.float32)


METHOD = QuantMethod(
    name="none", description="float32 copy of the teacher (baseline, no compression)",
    body_bytes_per_weight=4.0, head_bytes_per_weight=4.0, compute_dtype="float32", quality_tier=0,
    apply=_apply, in_memory=lambda model: model, probe_linear=_probe_linear, rank=40,
)
