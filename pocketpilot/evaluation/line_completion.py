"""Score a completion engine on line-completion tasks."""

from __future__ import annotations

import statistics
from typing import Callable, Iterable

from pocketpilot.evaluation.metrics import edit_similarity, exact_match
from pocketpilot.runtime.postprocess import first_line


def evaluate_lines(engine, tasks: list[dict], progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Run ``engine.complete(prefix, suffix)`` on each task and score the first predicted line.

    Args:
        engine: a :class:`pocketpilot.runtime.CompletionEngine` (single-line settings).
        tasks: rows with ``prefix``, ``suffix``, ``gt`` (see :mod:`pocketpilot.evaluation.tasks`).
        progress: optional wrapper such as ``tqdm`` around the task iterator.

    Returns:
        ``{"n", "es", "em", "latency_ms_p50", "latency_ms_p95", "decode_ms_per_token", "predictions"}``:
        ES averaged 0-100, EM in percent, latencies in ms; ``predictions`` lists
        ``{"id", "pred", "gt", "es", "em"}``.
    """
    rows, lat, decode_tok = [], [], []
    it = progress(tasks) if progress else tasks
    for task in it:
        c = engine.complete(task["prefix"], task.get("suffix", ""), allow_block=False)
        pred = first_line(c.text)
        es, em = edit_similarity(pred, task["gt"]), exact_match(pred, task["gt"])
        rows.append({"id": task.get("id"), "pred": pred, "gt": task["gt"], "es": es, "em": em})
        lat.append(c.total_ms)
        if c.new_tokens > 1:
            decode_tok.append(c.decode_ms / (c.new_tokens - 1))
    out = summarize(rows, lat)
    out["decode_ms_per_token"] = round(statistics.median(decode_tok), 2) if decode_tok else None
    out["predictions"] = out.pop("predictions")  # keep the long list last in JSON
    return out


def summarize(rows: list[dict], lat: list[float]) -> dict:
    """``{"n", "es", "em", "latency_ms_p50", "latency_ms_p95", "predictions"}`` from scored rows
    (``{"es", "em", ...}``) and latencies (ms): ES averaged (0-100), EM in percent, both to 2 decimals."""
    n = len(rows)
    return {
        "n": n,
        "es": round(statistics.fmean(r["es"] for r in rows), 2) if n else 0.0,
        "em": round(100 * sum(r["em"] for r in rows) / n, 2) if n else 0.0,
        "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p95": round(percentile(lat, 95), 1) if lat else None,
        "predictions": rows,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile of a non-empty list (same unit as the values)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
