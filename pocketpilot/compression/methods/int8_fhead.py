"""``int8-fhead``: ``int8`` decoder layers; the token embedding and LM head, which set every logit, stay float32."""

from __future__ import annotations

from pocketpilot.compression.methods import QuantMethod, lazy_impl
from pocketpilot.compression.methods.int8 import COMPUTE

METHOD = QuantMethod(
    name="int8-fhead", description="int8 decoder layers; token embedding and LM head kept in float32 (mixed precision)",
    body_bytes_per_weight=1.0, head_bytes_per_weight=4.0, compute_dtype=COMPUTE, quality_tier=0,
    apply=lazy_impl("_int8", "quantize_int8", float_head=True, matmul_dtype=COMPUTE),
    in_memory=lambda model: None, probe_linear=lambda lin: None,
    body_kernel="int8", head_kernel="none", chooser=False, rank=20,
)
