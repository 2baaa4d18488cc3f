"""``int4``: group-wise 4-bit weight-only decoder layers with AWQ scales, int8 embedding and LM head.

Served by torch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``, the kernel torchao's
``Int4WeightOnlyConfig`` uses on CPU; see :mod:`pocketpilot.runtime.int4`). The group size is
chosen when the artifact is built, by the measured output error on the calibration inputs
(``_int4.choose_group_size``). Offered by the chooser at quality tier 1 (a small measured loss:
SmolLM2-135M ES -0.5 on 200 stdlib tasks, Qwen2.5-Coder-1.5B next-token KL 0.013; see
docs/results.md), so it wins only where no tier-0 method of the same teacher fits the machine.
"""

from __future__ import annotations

from pocketpilot.compression.methods import QuantMethod, lazy_impl

#: the kernel's activation dtype (its float32 path is an unvectorized fallback)
COMPUTE = "bfloat16"
#: input columns per scale and zero when no calibration measures the choice (``_int4.choose_group_size``);
#: groups of 32 measured best on both packaged teachers
DEFAULT_GROUP_SIZE = 32

METHOD = QuantMethod(
    name="int4", description="group-wise 4-bit weight-only decoder layers (AWQ scales), int8 embedding and LM head",
    body_bytes_per_weight=0.5 + 4 / DEFAULT_GROUP_SIZE, head_bytes_per_weight=1.0, compute_dtype=COMPUTE, quality_tier=1,
    apply=lazy_impl("_int4", "quantize_int4", matmul_dtype=COMPUTE), in_memory=lazy_impl("_int4", "int4_in_memory"),
    probe_linear=lazy_impl("_int4", "int4_linear"), head_kernel="int8", search=False, rank=15,
)
