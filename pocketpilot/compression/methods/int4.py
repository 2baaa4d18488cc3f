"""``int4``: group-wise 4-bit weight-only decoder layers with AWQ scales, int8 embedding and LM head.

Served by torch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``, the kernel torchao's
``Int4WeightOnlyConfig`` uses on CPU; see :mod:`pocketpilot.runtime.int4`). Not offered by the
chooser or the search until its quality is measured on real tasks; ``compress --method int4``
builds it.
"""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods import QuantMethod


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    from pocketpilot.compression.methods._int4 import quantize_int4  # lazy: torch

    return quantize_int4(model, out, calibration, matmul_dtype=METHOD.compute_dtype)


def _in_memory(model):
    from pocketpilot.compression.methods._int4 import int4_in_memory  # lazy: torch

    return int4_in_memory(model)


def _probe_linear(lin):
    from pocketpilot.compression.methods._int4 import int4_linear  # lazy: torch

    return int4_linear(lin)


METHOD = QuantMethod(
    name="int4", description="group-wise 4-bit weight-only decoder layers (AWQ scales), int8 embedding and LM head",
    body_bytes_per_weight=0.5625, head_bytes_per_weight=1.0, compute_dtype="bfloat16", quality_tier=1,
    apply=_apply, in_memory=_in_memory, probe_linear=_probe_linear, head_kernel="int8",
    chooser=False, search=False, rank=15,
)
