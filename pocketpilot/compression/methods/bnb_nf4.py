"""``bnb-nf4``: bitsandbytes 4-bit NormalFloat with double quantization (Dettmers et al., NeurIPS
2023, "QLoRA: Efficient Finetuning of Quantized LLMs"), blocks of 64 weights, bf16 compute; the
embedding and LM head stay bfloat16. CUDA, and CPU with bitsandbytes >= 0.48.
"""

from __future__ import annotations

from pathlib import Path

from pocketpilot.compression.methods._bnb import bnb_method, bnb_quantize


def _apply(model, out: Path, calibration: list | None = None) -> dict:
    import torch  # lazy: torch
    from transformers import BitsAndBytesConfig  # lazy: transformers

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    details = bnb_quantize(model, out, cfg, torch.bfloat16)
    return {"weights": "4-bit NF4, blocks of 64, double-quantized scales", "activations": "bfloat16", **details}


METHOD = bnb_method(
    four_bit=True,
    name="bnb-nf4", description="bitsandbytes 4-bit NormalFloat + double quantization, bf16 compute (needs bitsandbytes)",
    body_bytes_per_weight=0.53, head_bytes_per_weight=2.0, compute_dtype="bfloat16", quality_tier=1,
    apply=_apply, head_kernel="bf16",
    gpu=True, rank=60,
)
