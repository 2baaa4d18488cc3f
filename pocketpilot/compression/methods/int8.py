"""``int8`` (default): weight-only per-channel int8 with activation-aware scales (see :mod:`._int8`).

1 byte a weight plus a float32 scale per output row; the LM head's top-8 logits are rescored
in float32.
"""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods import QuantMethod


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    from pocketpilot.compression.methods._int8 import quantize_int8  # lazy: torch

    return quantize_int8(model, out, calibration, matmul_dtype=METHOD.compute_dtype)


def _in_memory(model):
    from pocketpilot.compression.methods._int8 import int8_in_memory  # lazy: torch

    return int8_in_memory(model)


def _probe_linear(lin):
    from pocketpilot.compression.methods._int8 import int8_linear  # lazy: torch

    return int8_linear(lin)


METHOD = QuantMethod(
    name="int8", description="weight-only per-channel int8 weights, float activations (1 byte a weight; default)",
    body_bytes_per_weight=1.0, head_bytes_per_weight=1.0, compute_dtype="bfloat16", quality_tier=0,
    apply=_apply, in_memory=_in_memory, probe_linear=_probe_linear, rank=10,
)
