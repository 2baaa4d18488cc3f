"""Benchmark (not a test): ES of FIM prompt layouts for typing, on N stdlib line-completion tasks.

For one artifact (default: the active one) and the same tasks (seed 0), scores:

- ``psm`` cold: ``<fim_prefix> P <fim_suffix> S <fim_middle>``, computed from scratch (the reference);
- ``spm`` cold: ``<fim_suffix> S <fim_prefix> P <fim_middle>`` (typing only appends, so reuse is exact);
- ``psm-shift``: the request after typing the cursor line from its first non-blank character,
  reusing the suffix's keys/values computed before that line was typed, moved to their new
  positions (llama.cpp's cache reuse); the engine's staleness bound is lifted and the first
  suggestion forgotten (no typed-ahead answer), so every task is answered with moved keys;
- with ``--suffix-tokens A B ...``: ``psm`` cold with those suffix windows.

An approximation is worth keeping only within 0.5 ES of ``psm`` cold. About 6 s per prompt for
Qwen2.5-Coder-1.5B on llama.cpp Q4_K_M on an idle 2-core Zen 4 (three prompts a task, one more
per extra suffix length).

    python benchmarks/fim_layouts.py [--model ARTIFACT] [--n 20] [--suffix-tokens 32 8] [--only psm-shift]
"""

from __future__ import annotations

import argparse
import json
import time

from pocketpilot.evaluation.metrics import edit_similarity, exact_match
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime import CompletionEngine
from pocketpilot.runtime import engine as engine_module
from pocketpilot.runtime.loader import load_artifact
from pocketpilot.runtime.postprocess import first_line
from pocketpilot.runtime.settings import EngineSettings


def _line_start(prefix: str) -> int:
    """Offset of the cursor line's first non-blank character."""
    start = prefix.rfind("\n") + 1
    return start + len(prefix[start:]) - len(prefix[start:].lstrip(" \t"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="artifact id or folder (default: the active artifact)")
    ap.add_argument("--n", type=int, default=20, help="tasks (default 20)")
    ap.add_argument("--suffix-tokens", type=int, nargs="*", default=[], help="extra psm suffix windows (tokens)")
    ap.add_argument("--only", nargs="*", help="run only these of the layouts above (names as printed)")
    args = ap.parse_args()
    loaded = load_artifact(args.model)
    engine_module.MAX_STALE = 10**9  # move the suffix on every task, however much was typed
    runs = {"psm": EngineSettings(fim_layout="psm"), "spm": EngineSettings(fim_layout="spm"),
            "psm-shift": EngineSettings(fim_layout="psm-shift"),
            **{f"psm suffix {n}": EngineSettings(fim_layout="psm", suffix_tokens=n) for n in args.suffix_tokens}}
    engines = {name: CompletionEngine(loaded, s) for name, s in runs.items() if not args.only or name in args.only}
    scores: dict[str, list[tuple[float, bool]]] = {name: [] for name in engines}
    moved = 0
    t0 = time.perf_counter()
    for i, task in enumerate(make_tasks(n=args.n, seed=0)):
        prefix, suffix, gt = task["prefix"], task["suffix"], task["gt"]
        for name, eng in engines.items():
            if name == "psm-shift":
                eng.complete(prefix[:_line_start(prefix)], suffix, cache_key="t", allow_block=False)
                eng.docs.note_answer("t", "", "", "")  # no typed-ahead: answer with the moved keys
                got = eng.complete(prefix, suffix, cache_key="t", allow_block=False)
                eng.forget("t")
                moved += got.moved_tokens > 0
            else:
                got = eng.complete(prefix, suffix, allow_block=False)
            pred = first_line(got.text)
            scores[name].append((edit_similarity(pred, gt), exact_match(pred, gt)))
        print(f"{i + 1}/{args.n} tasks, {time.perf_counter() - t0:.0f} s", flush=True)
    out = {name: {"es": round(sum(r[0] for r in rows) / len(rows), 2),
                  "em": round(100 * sum(r[1] for r in rows) / len(rows), 2)} for name, rows in scores.items()}
    out.update(model=loaded.folder.name, n=args.n, psm_shift_moved=moved)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
