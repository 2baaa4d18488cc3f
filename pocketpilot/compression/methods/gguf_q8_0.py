"""``gguf-q8_0``: the teacher as a Q8_0 GGUF (blocks of 32 int8 weights with one fp16 scale), run by llama.cpp."""

from __future__ import annotations

from pocketpilot.compression.methods import QuantMethod, lazy_impl

METHOD = QuantMethod(
    name="gguf-q8_0", description="Q8_0 GGUF run by llama.cpp (needs llama-cpp-python)",
    body_bytes_per_weight=34 / 32, head_bytes_per_weight=34 / 32, compute_dtype="float32", quality_tier=0,
    apply=lazy_impl("_gguf", "not_from_torch"), in_memory=lazy_impl("_gguf", "no_torch_model"),
    probe_linear=lazy_impl("_gguf", "no_torch_model"), gguf_type="Q8_0",
    requires=(("llama_cpp", "llama-cpp-python"),), search=False, rank=30,
)
