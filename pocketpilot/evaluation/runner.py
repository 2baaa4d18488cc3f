"""``pocketpilot eval``: run the chosen suites on one or more models and compare them.

Suites (:data:`SUITES`):

- ``lines``: line completion on raw code (:mod:`.tasks`, :mod:`.line_completion`): ES / EM.
- ``codexglue``: CodeXGLUE line completion (py150 or Java dev split) with the official metrics (:mod:`.codexglue`).
- ``humaneval``: HumanEval pass@1, greedy, executed in a sandboxed child process (:mod:`.humaneval`).
- ``recode``: ReCode robustness: pass@1 on every perturbed set, per category, robust drop (:mod:`.humaneval`).
- ``cost``: size, load time, peak RSS, prefill / decode latency, one-line p50 / p95, tokens/s,
  energy and CO2e per 1000 completions, in a child process per model (:mod:`.cost`).

Everything is deterministic for a given ``seed`` (greedy decoding, seeded task sampling).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from pocketpilot.errors import PocketPilotError

SUITES = ("lines", "codexglue", "humaneval", "recode", "cost")


def parse_suites(text: str) -> list[str]:
    """``"lines,cost"`` or ``"all"`` -> suite names, in :data:`SUITES` order.

    Raises:
        PocketPilotError: an unknown suite (the message lists the choices).
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(SUITES)
    bad = [s for s in names if s not in SUITES]
    if bad or not names:
        raise PocketPilotError(f"unknown suite {', '.join(bad) or repr(text)}; choose from {', '.join(SUITES)} or all")
    return [s for s in SUITES if s in names]


def _tqdm(desc: str) -> Callable[[Iterable], Iterable]:
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, file=sys.stderr, leave=False)


def _drop_predictions(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("predictions", "results", "details")}


def model_label(name: str | None) -> str:
    """How a model is named in reports: its id, a folder's name, or ``active``."""
    if name is None:
        return "active"
    p = Path(name)
    return p.name if (p.is_dir() and "/" in name) else name


def teacher_of(name: str | None) -> str | None:
    """The teacher spec behind a model name: itself for a teacher spec, else the artifact manifest's teacher."""
    from pocketpilot.store import read_json_or_none, resolve_artifact
    from pocketpilot.teachers import parse_spec

    try:
        folder = resolve_artifact(name)
    except PocketPilotError:
        parse_spec(name)
        return name
    manifest = read_json_or_none(folder / "manifest.json") or {}
    spec = (manifest.get("teacher") or {}).get("spec")
    source = (manifest.get("recipe") or {}).get("source_artifact") or {}
    return source.get("teacher") or spec


def run_eval(
    models: list[str | None],
    suites: list[str],
    *,
    tasks: list[dict] | None = None,
    tasks_label: str = "",
    n: int = 500,
    seed: int = 0,
    limit: int | None = None,
    held_out: bool = False,
    codexglue_lang: str = "python",
    codexglue_n: int = 1000,
    recode_categories: list[str] | None = None,
    cost_completions: int = 20,
    baseline: str | None = None,
    checkpoint: str | Path | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Evaluate ``models`` on ``suites``; the first model is the reference for ratios.

    Args:
        models: names :func:`pocketpilot.compression.api.load_any` accepts (``None``: the active artifact).
        suites: from :data:`SUITES`.
        tasks: raw-code line-completion tasks (default: ``n`` cut from the standard library with ``seed``).
        n, seed, held_out: how default tasks are cut (``held_out``: only files distillation holds out).
        limit: at most this many items in every suite (quick runs).
        codexglue_lang, codexglue_n: CodeXGLUE split and examples (a seeded sample of the dev split).
        recode_categories: ReCode categories (default all).
        cost_completions: completions timed by the cost suite.
        baseline: ``"llama.cpp"`` runs the first model's teacher GGUF through llama.cpp on the
            ``lines`` and ``codexglue`` prompts (needs the ``bench`` extra).
        checkpoint: a JSONL file (:mod:`.checkpoint`) that keeps every model output as it is
            made; outputs already in it (same weights, input and settings) are reused, so an
            interrupted or split evaluation continues where it stopped.
        log: one-line progress messages.

    Returns:
        ``{"config", "models": {label: {"name", "size_bytes", SUITE: result...}}, "ratios", "wall_s"}``;
        each suite's result is that module's dict (``lines``, ``codexglue`` and ``cost`` also give
        ``reused``: items taken from the checkpoint; HumanEval marks each reused generation
        ``cached``); ratios are to the first model.

    Raises:
        PocketPilotError: unknown model, suite, or missing data, before any model runs where possible.
    """
    from pocketpilot.runtime.loader import load_any, resolve_any
    from pocketpilot.store import folder_bytes
    from pocketpilot.evaluation.checkpoint import Checkpoint, model_fingerprint

    t_start = time.perf_counter()
    ckpt = Checkpoint(checkpoint) if checkpoint else None
    if not models:
        models = [None]
    if baseline not in (None, "llama.cpp"):
        raise PocketPilotError(f"unknown baseline {baseline!r}; the only one is llama.cpp")
    if "lines" in suites or "cost" in suites or baseline:
        if tasks is None:
            from pocketpilot.corpus import held_out_files
            from pocketpilot.corpus import default_source_dir
            from pocketpilot.evaluation.tasks import make_tasks

            root = default_source_dir()
            tasks = make_tasks(root, n=n, seed=seed, files=held_out_files([root]) if held_out else None)
            tasks_label = f"{len(tasks)} tasks cut from the Python standard library{' (held-out files)' if held_out else ''}, seed {seed}"
        if limit and len(tasks) > limit:
            tasks = tasks[:limit]
            tasks_label = f"{tasks_label} (first {limit})"
    examples = problems = None
    if "codexglue" in suites:
        from pocketpilot.evaluation.codexglue import load_examples

        examples = load_examples(codexglue_lang, limit=min(codexglue_n, limit or codexglue_n), seed=seed)
    if "humaneval" in suites:
        from pocketpilot.evaluation.humaneval import load_problems

        problems = load_problems(limit=limit)
    config = {"suites": suites, "seed": seed, "limit": limit, "tasks": tasks_label if tasks is not None else None,
              "codexglue": f"{codexglue_lang} dev, {len(examples)} examples (seed {seed})" if examples else None,
              "humaneval": f"{len(problems)} problems" if problems else None,
              "recode_categories": recode_categories, "baseline": baseline,
              "checkpoint": str(checkpoint) if checkpoint else None}
    out: dict = {"config": config, "models": {}}
    for name in models:
        label = model_label(name)
        fingerprint = None  # of the model's weights, computed once when there is a checkpoint
        log(f"== {label}")
        entry: dict = {"name": name}
        model_suites = [s for s in suites if s != "cost"]
        if model_suites:
            t0 = time.perf_counter()
            loaded = load_any(name)
            entry["size_bytes"] = folder_bytes(loaded.folder, "*.safetensors")
            log(f"   loaded in {time.perf_counter() - t0:.1f} s ({entry['size_bytes'] / 1e6:.0f} MB of weights)")
            if ckpt is not None:
                fingerprint = model_fingerprint(loaded.folder)
            entry.update(_run_model_suites(loaded, model_suites, tasks, examples, problems, recode_categories,
                                           limit, label, log, None if ckpt is None else (ckpt, fingerprint)))
            del loaded
        if "cost" in suites:
            if ckpt is not None and fingerprint is None:
                fingerprint = model_fingerprint(resolve_any(name))
            entry["cost"] = _cost(name, tasks, min(cost_completions, len(tasks)), log,
                                  None if ckpt is None else ckpt.scope(fingerprint, "cost"))
            entry.setdefault("size_bytes", entry["cost"].get("weights_bytes"))
        out["models"][label] = entry
    if baseline:
        out["models"].update(_run_baseline(models[0], suites, tasks, examples, log))
    out["ratios"] = ratios(out["models"])
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    if ckpt is not None:
        log(ckpt.summary())
    return out


def _cost(name, tasks, n_completions: int, log, scope) -> dict:
    """The cost suite for one model, reused from the checkpoint ``scope`` when it holds a result
    for the same first ``n_completions`` tasks."""
    from pocketpilot.evaluation.cost import measure_cost

    item = [n_completions, [[t["prefix"], t.get("suffix", "")] for t in tasks[:n_completions]]]
    stored = scope.get(item) if scope is not None else None
    if isinstance(stored, dict):
        log("   cost: reused from the checkpoint")
        return {**stored, "reused": 1}
    log(f"   cost: child process, {n_completions} completions")
    res = measure_cost(name, tasks, n_completions=n_completions)
    if scope is not None:
        scope.put(item, res)
    return res


def _timed(fn, *args, **kw) -> dict:
    """``fn(*args, **kw)`` (a suite's result dict) with its wall time added as ``wall_s`` (s)."""
    t0 = time.perf_counter()
    res = fn(*args, **kw)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _run_model_suites(loaded, suites, tasks, examples, problems, recode_categories, limit, label, log,
                      ckpt=None) -> dict:
    """The in-process suites for one loaded model; ``ckpt``: ``(Checkpoint, model fingerprint)`` or None."""
    from dataclasses import asdict

    from pocketpilot.evaluation.checkpoint import CheckpointedEngine
    from pocketpilot.runtime import CompletionEngine

    res: dict = {}
    base = CompletionEngine(loaded) if {"lines", "codexglue"} & set(suites) else None

    def checkpointed():
        """The engine, wrapped so that its completions are kept in and reused from the checkpoint."""
        if ckpt is None:
            return base
        return CheckpointedEngine(base, ckpt[0].scope(ckpt[1], "complete", asdict(base.settings)))

    if "lines" in suites:
        from pocketpilot.evaluation.line_completion import evaluate_lines

        engine = checkpointed()
        res["lines"] = _timed(evaluate_lines, engine, tasks, progress=_tqdm(f"{label} lines"))
        res["lines"]["reused"] = getattr(engine, "reused", 0)
        log(f"   lines: n={res['lines']['n']} ES {res['lines']['es']:.2f} EM {res['lines']['em']:.2f}% "
            f"p50 {res['lines']['latency_ms_p50']} ms ({res['lines']['wall_s']} s)")
    if "codexglue" in suites:
        from pocketpilot.evaluation.codexglue import evaluate_codexglue

        engine = checkpointed()
        res["codexglue"] = _timed(evaluate_codexglue, engine, examples, progress=_tqdm(f"{label} codexglue"))
        res["codexglue"]["reused"] = getattr(engine, "reused", 0)
        log(f"   codexglue: n={res['codexglue']['n']} ES {res['codexglue']['es']:.2f} EM {res['codexglue']['em']:.2f}% "
            f"({res['codexglue']['wall_s']} s)")
    if "humaneval" in suites or "recode" in suites:
        from pocketpilot.evaluation.humaneval import EvalCache, evaluate_humaneval, evaluate_recode

        # nominal HumanEval generations are reused by ReCode's nominal set, and kept in the checkpoint
        cache = EvalCache(None if ckpt is None else ckpt[0].scope(ckpt[1], "generate"))
        if "humaneval" in suites:
            res["humaneval"] = _timed(evaluate_humaneval, loaded, problems, progress=_tqdm(f"{label} humaneval"),
                                      cache=cache)
            log(f"   humaneval: n={res['humaneval']['n']} pass@1 {res['humaneval']['pass@1']:.2f}% "
                f"({res['humaneval']['wall_s']} s)")
        if "recode" in suites:
            rec = res["recode"] = _timed(evaluate_recode, loaded, categories=recode_categories, limit=limit,
                                         progress=_tqdm(f"{label} recode"), cache=cache)
            log(f"   recode: nominal {rec['nominal']:.2f}%, " + ", ".join(
                f"{c} mean {v['mean']:.1f} (drop {v['drop_mean']:+.1f})" for c, v in rec["categories"].items())
                + f" ({rec['wall_s']} s)")
    return res


def _run_baseline(first: str | None, suites, tasks, examples, log) -> dict:
    from pocketpilot.teachers import teacher_gguf
    from pocketpilot.evaluation.llamacpp import LlamaCppEngine

    teacher = teacher_of(first)
    gguf = teacher_gguf(teacher, lambda m, f: log(f"   {m}"))
    engine = LlamaCppEngine(gguf)
    label = f"llama.cpp {gguf.name}"
    log(f"== {label} (baseline)")
    entry: dict = {"name": f"llama.cpp:{gguf}", "size_bytes": gguf.stat().st_size, "baseline": True}
    if tasks is not None:
        from pocketpilot.evaluation.line_completion import evaluate_lines

        entry["lines"] = evaluate_lines(engine, tasks, progress=_tqdm(f"{label} lines"))
    if "codexglue" in suites and examples:
        from pocketpilot.evaluation.codexglue import evaluate_codexglue

        entry["codexglue"] = evaluate_codexglue(engine, examples, progress=_tqdm(f"{label} codexglue"))
    return {label: entry}


#: (suite, metric, higher is better) compared across models
RATIO_METRICS = (("lines", "es", True), ("lines", "em", True), ("lines", "latency_ms_p50", False),
                 ("codexglue", "es", True), ("codexglue", "em", True), ("humaneval", "pass@1", True),
                 ("cost", "decode_ms_per_token", False), ("cost", "latency_ms_p50", False),
                 ("cost", "peak_rss_bytes", False), ("cost", "energy_j_per_1000", False))


def ratios(models: dict) -> dict:
    """Each model's metrics as a ratio to the first model's (``value / reference``), plus size.

    Returns ``{label: {"suite.metric": ratio or None}}`` (``None`` where either value is missing or the reference is 0).
    """
    labels = list(models)
    if not labels:
        return {}
    ref = models[labels[0]]
    out = {}
    for label in labels:
        m = models[label]
        row = {}
        for suite, metric, _ in RATIO_METRICS:
            a, b = (m.get(suite) or {}).get(metric), (ref.get(suite) or {}).get(metric)
            row[f"{suite}.{metric}"] = round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
        a, b = m.get("size_bytes"), ref.get("size_bytes")
        row["size_bytes"] = round(a / b, 3) if a and b else None
        out[label] = row
    return out


def slim(result: dict) -> dict:
    """``result`` without per-item predictions (for printing)."""
    return {**result, "models": {k: {s: (_drop_predictions(v) if isinstance(v, dict) else v) for s, v in m.items()}
                                 for k, m in result["models"].items()}}
