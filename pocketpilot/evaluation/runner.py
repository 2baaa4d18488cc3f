"""``pocketpilot eval``: run the chosen suites on one or more models and compare them.

Suites (:data:`SUITES`, the one table of them):

- ``lines``: line completion on raw code (:mod:`.tasks`, :mod:`.line_completion`): ES / EM.
- ``codexglue``: CodeXGLUE line completion (py150 or Java dev split) with the official metrics (:mod:`.codexglue`).
- ``humaneval``: HumanEval pass@1, greedy; the code runs in :mod:`.sandbox` (:mod:`.humaneval`).
- ``recode``: ReCode robustness: pass@1 on every perturbed set, per category, robust drop (:mod:`.humaneval`).
- ``summarize``: docstrings for documented functions: CodeXGLUE smoothed BLEU-4, ROUGE-L, latency (:mod:`.summarize`).
- ``cost``: size, load time, peak RSS, prefill / decode latency, one-line p50 / p95, tokens/s,
  energy and CO2e per 1000 completions, in a child process per model (:mod:`.cost`).

Everything is deterministic for a given ``seed`` (greedy decoding, seeded task sampling).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from pocketpilot.corpus import default_source_dir, held_out_files
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.evaluation import cost
from pocketpilot.evaluation.checkpoint import Checkpoint, CheckpointedEngine, CheckpointScope, model_fingerprint
from pocketpilot.evaluation.codexglue import evaluate_codexglue, load_examples
from pocketpilot.evaluation.humaneval import EvalCache, evaluate_humaneval, evaluate_recode, load_problems
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.summarize import checkpoint_settings, evaluate_summaries, make_summary_tasks
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.store import read_manifest, resolve_artifact, weight_files
from pocketpilot.teachers import parse_spec, teacher_gguf


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
    """The teacher spec behind a model name: itself for a teacher spec, else the artifact manifest's teacher.

    A distilled student's teacher is its source artifact's (``recipe.source_artifact.teacher``);
    ``None`` for a folder without a readable manifest.

    Raises:
        UnknownTeacherError: ``name`` is neither an artifact nor a teacher spec.
    """
    try:
        folder = resolve_artifact(name)
    except PocketPilotError:
        parse_spec(name)
        return name
    try:
        manifest = read_manifest(folder)
    except ArtifactError:  # a plain Hugging Face folder, or an unreadable manifest: no teacher known
        return None
    source = manifest.recipe.get("source_artifact") or {}
    return source.get("teacher") or manifest.teacher.spec


@dataclass
class _Inputs:
    """What every model is evaluated on, prepared once (``None`` where no chosen suite reads it)."""

    tasks: list[dict] | None
    examples: list[dict] | None
    problems: list[dict] | None
    limit: int | None
    recode_categories: list[str] | None
    cost_completions: int
    summaries: list[dict] | None = None


class _ModelRun:
    """One model's suites: its loaded form, completion engine, HumanEval cache and checkpoint scopes.

    Args:
        name: the model name (:func:`pocketpilot.runtime.loader.load_any`; ``None``: the active artifact).
        label: its name in reports (:func:`model_label`).
        inputs: the suites' inputs.
        log: one-line progress messages.
        ckpt: the run's :class:`.checkpoint.Checkpoint`, or ``None``.
    """

    def __init__(self, name: str | None, label: str, inputs: _Inputs, log: Callable[[str], None],
                 ckpt: Checkpoint | None) -> None:
        self.name, self.label, self.inputs, self.log, self.ckpt = name, label, inputs, log, ckpt
        self.loaded = None
        self.fingerprint: str | None = None  # of the model's weights, computed once when there is a checkpoint
        self._engine = None
        self._cache: EvalCache | None = None

    def load(self) -> int:
        """Load the model in this process; returns the bytes of its weight files (safetensors or GGUF)."""
        from pocketpilot.runtime.loader import load_any  # lazy: torch

        t0 = time.perf_counter()
        self.loaded = load_any(self.name)
        size = sum(p.stat().st_size for p in weight_files(Path(self.loaded.folder)))
        self.log(f"   loaded in {time.perf_counter() - t0:.1f} s ({size / 1e6:.0f} MB of weights)")
        if self.ckpt is not None:
            self.fingerprint = model_fingerprint(self.loaded.folder)
        return size

    def release(self) -> None:
        """Drop the loaded model and everything that holds it."""
        self.loaded = self._engine = self._cache = None

    def scope(self, kind: str, settings=None) -> CheckpointScope | None:
        """The checkpoint scope of this model's ``kind`` of output, or ``None`` without a checkpoint."""
        if self.ckpt is None:
            return None
        if self.fingerprint is None:  # not loaded here (the cost suite): fingerprint the folder
            from pocketpilot.runtime.loader import resolve_any  # lazy: torch

            self.fingerprint = model_fingerprint(resolve_any(self.name))
        return self.ckpt.scope(self.fingerprint, kind, settings)

    def engine(self):
        """The completion engine, wrapped so that its completions are kept in and reused from the checkpoint
        (a new wrapper each call, counting its own ``reused``)."""
        if self._engine is None:
            from pocketpilot.runtime import CompletionEngine  # lazy: torch

            self._engine = CompletionEngine(self.loaded)
        if self.ckpt is None:
            return self._engine
        return CheckpointedEngine(self._engine, self.scope("complete", self._engine.settings.output_key()))

    def eval_cache(self) -> EvalCache:
        """HumanEval generations shared by ``humaneval`` and ReCode's nominal set, kept in the checkpoint."""
        if self._cache is None:
            self._cache = EvalCache(self.scope("generate"))
        return self._cache


def _timed(fn, *args, **kw) -> dict:
    """``fn(*args, **kw)`` (a suite's result dict) with its wall time added as ``wall_s`` (s)."""
    t0 = time.perf_counter()
    res = fn(*args, **kw)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _suite_lines(run: _ModelRun) -> dict:
    engine = run.engine()
    res = _timed(evaluate_lines, engine, run.inputs.tasks, progress=_tqdm(f"{run.label} lines"))
    res["reused"] = getattr(engine, "reused", 0)
    run.log(f"   lines: n={res['n']} ES {res['es']:.2f} EM {res['em']:.2f}% "
            f"p50 {res['latency_ms_p50']} ms ({res['wall_s']} s)")
    return res


def _suite_codexglue(run: _ModelRun) -> dict:
    engine = run.engine()
    res = _timed(evaluate_codexglue, engine, run.inputs.examples, progress=_tqdm(f"{run.label} codexglue"))
    res["reused"] = getattr(engine, "reused", 0)
    run.log(f"   codexglue: n={res['n']} ES {res['es']:.2f} EM {res['em']:.2f}% ({res['wall_s']} s)")
    return res


def _suite_humaneval(run: _ModelRun) -> dict:
    res = _timed(evaluate_humaneval, run.loaded, run.inputs.problems, progress=_tqdm(f"{run.label} humaneval"),
                 cache=run.eval_cache())
    run.log(f"   humaneval: n={res['n']} pass@1 {res['pass@1']:.2f}% ({res['wall_s']} s)")
    return res


def _suite_recode(run: _ModelRun) -> dict:
    rec = _timed(evaluate_recode, run.loaded, categories=run.inputs.recode_categories, limit=run.inputs.limit,
                 progress=_tqdm(f"{run.label} recode"), cache=run.eval_cache())
    run.log(f"   recode: nominal {rec['nominal']:.2f}%, " + ", ".join(
        f"{c} mean {v['mean']:.1f} (drop {v['drop_mean']:+.1f})" for c, v in rec["categories"].items())
        + f" ({rec['wall_s']} s)")
    return rec


def _suite_summarize(run: _ModelRun) -> dict:
    run.engine()  # the plain engine (docstrings are checkpointed by the suite itself)
    res = _timed(evaluate_summaries, run._engine, run.inputs.summaries, progress=_tqdm(f"{run.label} summarize"),
                 scope=run.scope("summarize", checkpoint_settings()))
    run.log(f"   summarize: n={res['n']} BLEU {res['bleu']:.2f} ROUGE-L {res['rouge_l']:.2f} "
            f"p50 {res['latency_ms_p50']} ms ({res['wall_s']} s)")
    return res


def _suite_cost(run: _ModelRun) -> dict:
    tasks = run.inputs.tasks
    return _cost(run.name, tasks, min(run.inputs.cost_completions, len(tasks)), run.log, run.scope("cost"))


def _cost(name, tasks, n_completions: int, log, scope) -> dict:
    """The cost suite for one model, reused from the checkpoint ``scope`` when it holds a result
    for the same first ``n_completions`` tasks."""
    item = [n_completions, [[t["prefix"], t.get("suffix", "")] for t in tasks[:n_completions]]]
    stored = scope.get(item) if scope is not None else None
    if isinstance(stored, dict):
        log("   cost: reused from the checkpoint")
        return {**stored, "reused": 1}
    log(f"   cost: child process, {n_completions} completions")
    res = cost.measure_cost(name, tasks, n_completions=n_completions)
    if scope is not None:
        scope.put(item, res)
    return res


@dataclass(frozen=True)
class Suite:
    """One suite of :func:`run_eval`.

    Attributes:
        run: ``run(model_run) -> result dict`` for one model.
        in_process: runs on the model loaded in this process (``cost`` loads it in a child process).
        needs: the inputs it reads, prepared once for all models: ``"tasks"`` (raw-code
            line-completion tasks), ``"examples"`` (CodeXGLUE), ``"problems"`` (HumanEval), ``"summaries"``
            (summarization tasks).
    """

    run: Callable[[_ModelRun], dict]
    in_process: bool = True
    needs: tuple[str, ...] = ()


#: every suite, by name, in the order they run and are reported
SUITES: dict[str, Suite] = {
    "lines": Suite(_suite_lines, needs=("tasks",)),
    "codexglue": Suite(_suite_codexglue, needs=("examples",)),
    "humaneval": Suite(_suite_humaneval, needs=("problems",)),
    "recode": Suite(_suite_recode),  # reads its own problem sets (ReCode's nominal and perturbed files)
    "summarize": Suite(_suite_summarize, needs=("summaries",)),
    "cost": Suite(_suite_cost, in_process=False, needs=("tasks",)),
}


def _needs(suites: list[str], what: str) -> bool:
    return any(what in SUITES[s].needs for s in suites)


def _default_tasks(n: int, seed: int, held_out: bool) -> tuple[list[dict], str]:
    """``n`` tasks cut from the standard library with ``seed`` (``held_out``: distillation's held-out files), and their label."""
    root = default_source_dir()
    tasks = make_tasks(root, n=n, seed=seed, files=held_out_files([root]) if held_out else None)
    label = f"{len(tasks)} tasks cut from the Python standard library{' (held-out files)' if held_out else ''}, seed {seed}"
    return tasks, label


def _check_args(models: list[str | None], suites: list[str], baseline: str | None) -> list[str | None]:
    """``models`` (``[None]`` when empty) after checking ``suites`` and ``baseline``.

    Raises:
        PocketPilotError: an unknown suite or baseline.
    """
    bad = [s for s in suites if s not in SUITES]
    if bad:
        raise PocketPilotError(f"unknown suite {', '.join(bad)}; choose from {', '.join(SUITES)} or all")
    if baseline not in (None, "llama.cpp"):
        raise PocketPilotError(f"unknown baseline {baseline!r}; the only one is llama.cpp")
    return models or [None]


def _eval_model(name: str | None, suites: list[str], inputs: _Inputs, log, ckpt: Checkpoint | None) -> dict:
    """One model's entry of :func:`run_eval`'s ``models``: ``{"name", "size_bytes", SUITE: result...}``."""
    run = _ModelRun(name, model_label(name), inputs, log, ckpt)
    log(f"== {run.label}")
    entry: dict = {"name": name}
    chosen = [s for s in SUITES if s in suites]
    in_process = [s for s in chosen if SUITES[s].in_process]
    if in_process:
        entry["size_bytes"] = run.load()
        for suite in in_process:
            entry[suite] = SUITES[suite].run(run)
        run.release()
    for suite in (s for s in chosen if not SUITES[s].in_process):
        entry[suite] = SUITES[suite].run(run)
    if "cost" in entry:
        entry.setdefault("size_bytes", entry["cost"].get("weights_bytes"))
    return entry


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
    summary_tasks: list[dict] | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Evaluate ``models`` on ``suites``; the first model is the reference for ratios.

    Args:
        models: names :func:`pocketpilot.runtime.loader.load_any` accepts (``None``: the active artifact).
        suites: names in :data:`SUITES` (run in its order).
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
        summary_tasks: ``summarize`` tasks (default: ``n`` cut from the standard library's documented
            functions with ``seed``, from the held-out files with ``held_out``).
        log: one-line progress messages.

    Returns:
        ``{"config", "models": {label: {"name", "size_bytes", SUITE: result...}}, "ratios", "wall_s"}``;
        each suite's result is that module's dict (``lines``, ``codexglue`` and ``cost`` also give
        ``reused``: items taken from the checkpoint; HumanEval marks each reused generation
        ``cached``); ratios are to the first model.

    Raises:
        PocketPilotError: unknown model, suite, or missing data, before any model runs where possible.
    """
    t_start = time.perf_counter()
    ckpt = Checkpoint(checkpoint) if checkpoint else None
    models = _check_args(models, suites, baseline)
    if baseline or _needs(suites, "tasks"):
        if tasks is None:
            tasks, tasks_label = _default_tasks(n, seed, held_out)
        if limit and len(tasks) > limit:
            tasks, tasks_label = tasks[:limit], f"{tasks_label} (first {limit})"
    examples = load_examples(codexglue_lang, limit=min(codexglue_n, limit or codexglue_n), seed=seed) \
        if _needs(suites, "examples") else None
    problems = load_problems(limit=limit) if _needs(suites, "problems") else None
    summaries, summaries_label = _summary_inputs(suites, summary_tasks, n, seed, held_out, limit)
    config = {"suites": suites, "seed": seed, "limit": limit, "tasks": tasks_label if tasks is not None else None,
              "codexglue": f"{codexglue_lang} dev, {len(examples)} examples (seed {seed})" if examples else None,
              "humaneval": f"{len(problems)} problems" if problems else None, "summarize": summaries_label,
              "recode_categories": recode_categories, "baseline": baseline,
              "checkpoint": str(checkpoint) if checkpoint else None}
    inputs = _Inputs(tasks, examples, problems, limit, recode_categories, cost_completions, summaries)
    out: dict = {"config": config, "models": {model_label(m): _eval_model(m, suites, inputs, log, ckpt) for m in models}}
    if baseline:
        out["models"].update(_run_baseline(models[0], suites, tasks, examples, log))
    out["ratios"] = ratios(out["models"])
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    if ckpt is not None:
        log(ckpt.summary())
    return out


def _summary_inputs(suites, tasks, n: int, seed: int, held_out: bool, limit: int | None) -> tuple[list[dict] | None, str | None]:
    """The ``summarize`` tasks (given, else cut from the standard library) and their label; ``(None, None)`` without the suite."""
    if not _needs(suites, "summaries"):
        return None, None
    label = f"{len(tasks)} given tasks" if tasks is not None else ""
    if tasks is None:
        root = default_source_dir()
        tasks = make_summary_tasks(root, n=n, seed=seed, files=held_out_files([root]) if held_out else None)
        label = (f"{len(tasks)} documented functions of the Python standard library"
                 f"{' (held-out files)' if held_out else ''}, seed {seed}")
    if limit and len(tasks) > limit:
        tasks, label = tasks[:limit], f"{label} (first {limit})"
    return tasks, label


def _run_baseline(first: str | None, suites, tasks, examples, log) -> dict:
    """The llama.cpp baseline: ``first``'s teacher GGUF on the ``lines`` tasks and CodeXGLUE examples."""
    from pocketpilot.evaluation.llamacpp import LlamaCppEngine  # lazy: torch (runtime.engine)

    teacher = teacher_of(first)
    gguf = teacher_gguf(teacher, lambda m, f: log(f"   {m}"))
    engine = LlamaCppEngine(gguf)
    label = f"llama.cpp {gguf.name}"
    log(f"== {label} (baseline)")
    entry: dict = {"name": f"llama.cpp:{gguf}", "size_bytes": gguf.stat().st_size, "baseline": True}
    if tasks is not None:
        entry["lines"] = evaluate_lines(engine, tasks, progress=_tqdm(f"{label} lines"))
    if "codexglue" in suites and examples:
        entry["codexglue"] = evaluate_codexglue(engine, examples, progress=_tqdm(f"{label} codexglue"))
    return {label: entry}


#: (suite, metric, higher is better) compared across models
RATIO_METRICS = (("lines", "es", True), ("lines", "em", True), ("lines", "latency_ms_p50", False),
                 ("codexglue", "es", True), ("codexglue", "em", True), ("humaneval", "pass@1", True),
                 ("summarize", "bleu", True), ("summarize", "rouge_l", True), ("summarize", "latency_ms_p50", False),
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
