"""``gguf-q4_k_m``: the teacher as a Q4_K_M GGUF, run by llama.cpp (Qwen2.5-Coder-1.5B ships in it: a copy).

Q4_K_M keeps most weights in Q4_K (super-blocks of 256, 4.5 bits a weight) and some (attention
values, half the feed-forward down projections, the LM head) in Q6_K (6.56 bits a weight): 0.60
bytes a decoder weight and 0.69 an embedding / head weight in the Qwen2.5-Coder-1.5B file. Rows
whose length is not a multiple of 256 (SmolLM2-135M's 576) fall back to Q5_0 / Q8_0 in llama.cpp's
quantizer: 0.69 and 1.06 bytes a weight there.
"""

from __future__ import annotations

from pocketpilot.compression.methods import QuantMethod, lazy_impl

METHOD = QuantMethod(
    name="gguf-q4_k_m", description="Q4_K_M GGUF run by llama.cpp (needs llama-cpp-python)",
    body_bytes_per_weight=0.60, head_bytes_per_weight=0.69, compute_dtype="float32", quality_tier=1,
    apply=lazy_impl("_gguf", "not_from_torch"), in_memory=lazy_impl("_gguf", "no_torch_model"),
    probe_linear=lazy_impl("_gguf", "no_torch_model"), gguf_type="Q4_K_M",
    requires=(("llama_cpp", "llama-cpp-python"),), search=False, rank=32,
)
