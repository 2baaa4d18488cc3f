"""``bnb-int8``: bitsandbytes LLM.int8() (Dettmers et al., NeurIPS 2022, "LLM.int8(): 8-bit Matrix
Multiplication for Transformers at Scale"): vector-wise int8 weights, outlier activation columns
(> 6.0) in float16; the embedding and LM head stay in the load dtype (float32 on CPU). CUDA, and CPU with bitsandbytes >= 0.48.
"""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods._bnb import bnb_method, bnb_quantize


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    import torch  # lazy: torch
    from transformers import BitsAndBytesConfig  # lazy: transformers

    cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
    details = bnb_quantize(model, out, cfg, torch.float16 if torch.cuda.is_available() else torch.float32)
    return {"weights": "int8 vector-wise (LLM.int8)", "activations": "int8 with fp16 outlier columns (threshold 6.0)",
            **details}


METHOD = bnb_method(
    four_bit=False,
    name="bnb-int8", description="bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns (needs bitsandbytes)",
    body_bytes_per_weight=1.0, head_bytes_per_weight=4.0, compute_dtype="float32", quality_tier=1,
    apply=_apply, head_kernel="none",
    search=False, rank=50,
)
