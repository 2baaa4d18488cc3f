"""Benchmark (not a test): does ``torch.compile`` of the decode step pay on this CPU?

Loads an artifact (default the SmolLM2-135M ``int8`` one in ``POCKETPILOT_HOME``), prefills a real
stdlib prompt into a ``transformers`` ``StaticCache`` and times one-token decode steps, eager and
compiled (``torch.compile`` of the model's forward, inductor, static shapes), in one run on the same
prompt. Prints the compile time (first compiled steps), eager and compiled ms/token (median of
``--steps``), and whether the compiled greedy tokens equal the eager ones. The server would only
use a compiled step if it paid for its compile time within a session; see docs/results.md.

    python benchmarks/compiled_decode.py [--model smollm2-135m-int8] [--steps 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def decode(model, cache, first: int, pos: int, steps: int, step_fn) -> tuple[list[int], list[float]]:
    """Greedy ``steps`` tokens from ``first`` at position ``pos``; returns (tokens, ms per step)."""
    tok, out, times = first, [], []
    for i in range(steps):
        ids = torch.tensor([[tok]])
        position = torch.tensor([pos + i])
        t0 = time.perf_counter()
        logits = step_fn(ids, position, cache)
        tok = int(logits[0, -1].argmax())
        times.append((time.perf_counter() - t0) * 1000)
        out.append(tok)
    return out, times


def main() -> None:
    from transformers import StaticCache

    from pocketpilot.corpus import default_source_dir
    from pocketpilot.runtime.loader import load_any

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-int8")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recompile-limit", type=int, default=0,
                    help="raise dynamo's per-function recompile limit (the cache update specialises per layer)")
    args = ap.parse_args()
    if args.recompile_limit:
        torch._dynamo.config.cache_size_limit = args.recompile_limit
        torch._dynamo.config.accumulated_cache_size_limit = max(256, args.recompile_limit * 4)
    torch.set_num_threads(args.threads)
    loaded = load_any(args.model)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok.encode((default_source_dir() / "textwrap.py").read_text(), add_special_tokens=False)[:args.prompt_tokens]
    max_len = len(ids) + args.steps + 8

    def fresh_cache():
        cache = StaticCache(config=model.config, max_cache_len=max_len)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True,
                        cache_position=torch.arange(len(ids)), logits_to_keep=1)
        return cache, int(out.logits[0, -1].argmax())

    def eager_step(ids_, position, cache):
        with torch.inference_mode():
            return model(input_ids=ids_, past_key_values=cache, use_cache=True, cache_position=position,
                         logits_to_keep=1).logits

    compiled_forward = torch.compile(model.forward, dynamic=False, fullgraph=False)

    def compiled_step(ids_, position, cache):
        with torch.inference_mode():
            return compiled_forward(input_ids=ids_, past_key_values=cache, use_cache=True, cache_position=position,
                                    logits_to_keep=1).logits

    cache, first = fresh_cache()
    eager_tokens, eager_ms = decode(model, cache, first, len(ids), args.steps, eager_step)
    cache, first = fresh_cache()
    t0 = time.perf_counter()
    compiled_step(torch.tensor([[first]]), torch.tensor([len(ids)]), cache)
    compile_s = time.perf_counter() - t0
    cache, first = fresh_cache()
    compiled_tokens, compiled_ms = decode(model, cache, first, len(ids), args.steps, compiled_step)
    e, c = statistics.median(eager_ms[2:]), statistics.median(compiled_ms[2:])
    print(f"{args.model}, {len(ids)}-token prompt, {args.threads} threads, torch {torch.__version__}")
    print(f"compile (first step): {compile_s:.1f} s; later steps that recompiled: "
          f"{sum(1 for t in compiled_ms if t > 20 * c)} of {args.steps}")
    print(f"decode ms/token (median): eager {e:.2f}, compiled {c:.2f} ({e / c:.2f}x)")
    same = sum(a == b for a, b in zip(eager_tokens, compiled_tokens))
    print(f"greedy tokens identical: {eager_tokens == compiled_tokens} ({same} of {args.steps} positions equal)")
    if c < e:
        print(f"compile pays back after {compile_s * 1000 / (e - c):.0f} decoded tokens")


if __name__ == "__main__":
    main()
