"""``int8`` (default): weight-only per-channel int8 with activation-aware scales (see :mod:`._int8`).

1 byte a weight plus a float32 scale per output row; the LM head's top-8 logits are rescored
in float32.
"""

from __future__ import annotations

from pocketpilot.compression.methods import QuantMethod, lazy_impl

#: dtype of the matmuls (the int8 kernel's activations); the residual stream stays float32
COMPUTE = "bfloat16"

METHOD = QuantMethod(
    name="int8", description="weight-only per-channel int8 weights, float activations (1 byte a weight; default)",
    body_bytes_per_weight=1.0, head_bytes_per_weight=1.0, compute_dtype=COMPUTE, quality_tier=0,
    apply=lazy_impl("_int8", "quantize_int8", matmul_dtype=COMPUTE),
    in_memory=lazy_impl("_int8", "int8_in_memory"), probe_linear=lazy_impl("_int8", "int8_linear"), rank=10,
)
