"""Benchmark (not a test): the real SmolLM2-135M teacher against its int8 artifact on N stdlib line tasks.

Compresses (or reuses) ``smollm2-135m`` int8 in the active ``POCKETPILOT_HOME``, then scores the
float32 teacher and the artifact on the same ``--n`` tasks (seed 0) with the same prefix window
and prints ES / EM / p50 for both and the ES difference. The int8 method's promise is an ES within
one point of the teacher; ``tests/slow/test_real_teacher.py`` keeps a cheap next-token guard of it.
About 5 minutes for 200 tasks on an idle 2-core Zen 4; several times that on an AVX2-only CPU.

    python benchmarks/int8_es.py [--n 200] [--prefix-tokens 256]
"""

from __future__ import annotations

import argparse
import time

from pocketpilot.compression import compress
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime import CompletionEngine, EngineSettings, load_model_folder
from pocketpilot.runtime.loader import load_artifact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="tasks (default 200: on 50, noise alone moves ES by ~1.5)")
    ap.add_argument("--prefix-tokens", type=int, default=256, help="prefix window for both models (tokens)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = compress("smollm2-135m", "int8", eval_tasks=0, activate=False)
    tasks = make_tasks(n=args.n, seed=0)
    window = EngineSettings(prefix_tokens=args.prefix_tokens)
    rows = {}
    for label, loaded in (("teacher fp32", load_model_folder(res.manifest.teacher.folder)),
                          ("int8", load_artifact(res.artifact_id))):
        rows[label] = evaluate_lines(CompletionEngine(loaded, window), tasks)
    for label, r in rows.items():
        print(f"{label:>13}: ES {r['es']:.2f}  EM {r['em']:.1f}%  p50 {r['latency_ms_p50']:.0f} ms")
    delta = rows["int8"]["es"] - rows["teacher fp32"]["es"]
    print(f"int8 - teacher: {delta:+.2f} ES on {len(tasks)} tasks ({'within' if delta >= -1 else 'NOT within'} "
          f"one point); {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
