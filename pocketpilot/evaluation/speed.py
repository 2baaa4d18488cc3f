"""Prefill and decode speed of a loaded model, on real code tokens."""

from __future__ import annotations

import statistics
import time

import torch



@torch.inference_mode()
def measure_speed(loaded, text: str, prompt_tokens: int = 512, new_tokens: int = 32, repeats: int = 3) -> dict:
    """Time a prefill of ``prompt_tokens`` tokens and ``new_tokens`` greedy decode steps with the KV cache.

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel` (either engine: torch or llama.cpp).
        text: source text; its first ``prompt_tokens`` tokens are the prompt.
        prompt_tokens: prompt length (tokens).
        new_tokens: decode steps, not stopped at end of line or EOS (tokens).
        repeats: runs; the median is reported (one warm-up run first).

    Returns:
        ``{"prompt_tokens", "prefill_ms", "decode_ms_per_token"}`` (medians, ms).

    Raises:
        ValueError: ``text`` has fewer than ``prompt_tokens`` tokens.
    """
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)[:prompt_tokens]
    if len(ids) < prompt_tokens:
        raise ValueError(f"text has {len(ids)} tokens, need {prompt_tokens}")
    backend = loaded.backend()  # torch or llama.cpp
    prefill, decode = [], []
    for run in range(repeats + 1):
        t0 = time.perf_counter()
        rows, cache = backend.forward(ids, backend.new_cache(), 1)
        t1 = time.perf_counter()
        nxt = int(rows[-1].argmax())
        for _ in range(new_tokens):
            rows, cache = backend.forward([nxt], cache, 1)
            nxt = int(rows[-1].argmax())
        t2 = time.perf_counter()
        if run:  # the first run warms up
            prefill.append((t1 - t0) * 1e3)
            decode.append((t2 - t1) * 1e3 / new_tokens)
    return {"prompt_tokens": prompt_tokens, "prefill_ms": round(statistics.median(prefill), 1),
            "decode_ms_per_token": round(statistics.median(decode), 2)}
