"""The "compress for this machine" recipe chooser.

:func:`predict` turns the speeds :func:`pocketpilot.compression.hardware.probe_speed` measured
and a teacher's shape into a predicted one-line completion latency and memory use for a
quantization method; :func:`choose_recipe` picks the best teacher and method that fit the
latency budget and the memory. Both are pure functions of their inputs, so synthetic hardware
profiles test the chooser; :func:`compress_for_this_machine` runs them on the real machine,
builds the artifact, measures its real latency and records the decision, predictions and
measurements in the manifest. Every per-method fact (bytes per weight, kernels, quality tier,
GPU use) is read from the method objects of :mod:`pocketpilot.compression.methods`.

Latency model (roofline style, as in Williams et al., CACM 2009): prefill is compute bound
(``2 * params * tokens / FLOP/s``, from the measured 128-row layer prefill), decode memory bound
(weight bytes / bandwidth, plus a per-layer framework overhead). What the user feels is budgeted
in two parts: a *warm* model run in the editor, one keystroke after the last request, which
prefills ``KEYSTROKE_TOKENS`` (the rest of the prompt's keys/values are reused) and decodes
``LINE_TOKENS``; and the *warm-up* of a document's prompt, ``PROMPT_TOKENS`` prefilled in the
background when it is opened or focused. A cold one-line completion (``line_ms``, what
``pocketpilot eval`` measures) is predicted too, for reference.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from pocketpilot.compression.api import compress
from pocketpilot.compression.build import CompressResult
from pocketpilot.compression.hardware import HardwareProfile, SpeedProbe, probe_hardware, probe_speed
from pocketpilot.compression.methods import CHOOSER_METHODS, METHODS, QuantMethod
from pocketpilot.compression.search import load_search, materialize, pick_for_budget
from pocketpilot.compression.shapes import (
    DEFAULT_BUDGET_MS,
    DEFAULT_WARMUP_MS,
    KEYSTROKE_TOKENS,
    LINE_TOKENS,
    PROMPT_TOKENS,
    RAM_SHARE,
    SERVE_OVERHEAD_BYTES,
    TEACHERS,
    TeacherShape,
)
from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime.engine import CompletionEngine
from pocketpilot.runtime.loader import load_artifact
from pocketpilot.store import Progress, no_progress, write_manifest



def predict(teacher: TeacherShape, method: QuantMethod, speed: SpeedProbe) -> dict:
    """Predicted one-line completion latency and memory of ``teacher`` compressed with ``method``.

    decode = base + layers * measured layer decode + LM head (``vocab * hidden`` weights at the
    measured one-row bandwidth of the method's head kernel, :meth:`QuantMethod.head_ms`); prefill
    of n tokens = layers * measured 128-token layer prefill * ``n / 128`` (at least one decode
    step: a few rows cost a weight read) + one head row; warm-up = prefill of
    :data:`PROMPT_TOKENS`; warm = prefill of :data:`KEYSTROKE_TOKENS` + :data:`LINE_TOKENS`
    decode steps; line (cold) = warm-up + :data:`LINE_TOKENS` decode steps.

    Returns:
        ``{"prefill_ms", "decode_ms_per_token", "line_ms", "warm_ms", "warmup_ms", "weights_bytes",
        "serve_bytes", "build_bytes"}`` (ms; bytes: weights on disk, resident memory while serving,
        peak memory while compressing, when the teacher is dequantized to float32 and copied once).
        Latencies are ``None`` when the method could not be timed here.
    """
    layer = speed.layers.get(f"{teacher.alias}/{method.name}")
    head = method.head_ms(teacher.vocab * teacher.hidden, speed.weight_gbps)
    weights = method.weight_bytes(teacher.body_params, teacher.head_params)
    out = {"prefill_ms": None, "decode_ms_per_token": None, "line_ms": None, "warm_ms": None, "warmup_ms": None,
           "weights_bytes": weights,
           "serve_bytes": weights + SERVE_OVERHEAD_BYTES,
           "build_bytes": int(teacher.params * 4 * 2.2) + 300_000_000}
    if layer and head is not None:
        decode = speed.base_decode_ms + teacher.layers * layer["decode_ms"] + head
        prefill = teacher.layers * layer["prefill_ms"] * PROMPT_TOKENS / 128 + head
        keystroke = max(decode, teacher.layers * layer["prefill_ms"] * KEYSTROKE_TOKENS / 128 + head)
        out.update(prefill_ms=round(prefill, 1), decode_ms_per_token=round(decode, 2),
                   line_ms=round(prefill + LINE_TOKENS * decode, 1), warmup_ms=round(prefill, 1),
                   warm_ms=round(keystroke + LINE_TOKENS * decode, 1))
    return out


@dataclass
class Decision:
    """The chooser's pick and its reasons.

    Attributes:
        teacher, method: the recipe (``compress --teacher TEACHER --method METHOD``).
        device: where it runs (``"cpu"`` or ``"cuda"``).
        budget_ms: the warm latency budget (a model run while typing, ms).
        meets_budget: the predicted warm latency and warm-up time are within their budgets.
        reason: one line a person can read.
        candidates: every candidate with its prediction and, if rejected, why.
    """

    teacher: str
    method: str
    device: str
    budget_ms: float
    meets_budget: bool
    reason: str
    candidates: list[dict]
    warmup_budget_ms: float = DEFAULT_WARMUP_MS

    def to_json(self) -> dict:
        """JSON-able dict (bytes, ms)."""
        return asdict(self)


def _rejection(m: QuantMethod, row: dict, profile: HardwareProfile, gpu: dict | None) -> str | None:
    """Why candidate ``row`` (method ``m``) cannot run on this machine, or ``None`` when it can."""
    ram = RAM_SHARE * profile.ram_available_bytes
    missing = [req for mod, req in m.requires if not profile.has_package(mod)]
    if missing:
        return f"{', '.join(missing)} not installed (pip install {' '.join(missing)})"
    if gpu and not m.gpu:
        return "on a GPU only " + " and ".join(x.name for x in METHODS.values() if x.gpu) + " are considered"
    if row["build_bytes"] > ram:
        return (f"compressing needs about {row['build_bytes'] / 1e9:.1f} GB of RAM, "
                f"{profile.ram_available_bytes / 1e9:.1f} GB available")
    if gpu and row["serve_bytes"] > 0.9 * gpu["memory_bytes"]:
        return f"needs {row['serve_bytes'] / 1e9:.1f} GB of GPU memory, {gpu['memory_bytes'] / 1e9:.1f} GB there"
    if not gpu and row["serve_bytes"] > ram:
        return f"serving needs about {row['serve_bytes'] / 1e9:.1f} GB of RAM"
    if row["line_ms"] is None:
        return f"the {m.name} kernel could not be timed on this machine"
    return None


def choose_recipe(profile: HardwareProfile, speed: SpeedProbe, budget_ms: float = DEFAULT_BUDGET_MS,
                  teachers: tuple[TeacherShape, ...] = TEACHERS,
                  methods: tuple[QuantMethod, ...] = CHOOSER_METHODS,
                  warmup_budget_ms: float = DEFAULT_WARMUP_MS) -> Decision:
    """Pick the best teacher and method for this machine.

    Rules, in order: a candidate must fit in memory (compressing: ``build_bytes``, serving:
    ``serve_bytes``, both within :data:`RAM_SHARE` of available RAM, or within 90% of the first
    GPU's memory for a CUDA recipe) and have its packages installed; among those whose predicted
    warm latency is within ``budget_ms`` and warm-up within ``warmup_budget_ms`` (see
    :func:`predict`), the best teacher (highest measured ES) wins, then the method with no
    measured quality loss (:attr:`QuantMethod.quality_tier` 0), then the fastest (warm). If none
    is within both budgets, the candidate with the fastest warm latency that fits wins and the
    decision says the budget is not met.

    With CUDA only the methods marked :attr:`QuantMethod.gpu` (bf16, NF4) are considered; the
    CPU kernels are not.

    Raises:
        PocketPilotError: nothing fits in memory (the message says how much is needed).
    """
    if budget_ms <= 0 or warmup_budget_ms <= 0:
        raise PocketPilotError(f"latency budget must be positive, got {budget_ms} ms "
                               f"(warm-up budget {warmup_budget_ms} ms)")
    gpu = profile.cuda[0] if profile.cuda else None
    rows = []
    for t in teachers:
        for m in methods:
            row = {"teacher": t.alias, "method": m.name, "engine": m.engine, "quality": t.quality,
                   "tier": m.quality_tier, "device": "cuda" if gpu else "cpu", **predict(t, m, speed)}
            why = _rejection(m, row, profile, gpu)
            if why:
                row["rejected"] = why
            rows.append(row)
    fits = [r for r in rows if "rejected" not in r]
    if not fits:
        need = min(r["build_bytes"] for r in rows)
        raise PocketPilotError(f"no recipe fits in {profile.ram_available_bytes / 1e9:.1f} GB of available RAM "
                               f"(the smallest needs {need / 1e9:.1f} GB to compress); close other programs and retry")
    within = [r for r in fits if r["warm_ms"] <= budget_ms and r["warmup_ms"] <= warmup_budget_ms]

    def figures(r: dict) -> str:
        return (f"predicted {r['warm_ms']:.0f} ms per suggestion while typing and {r['warmup_ms'] / 1000:.1f} s to "
                f"warm a file up")

    if within:
        best = min(within, key=lambda r: (-r["quality"], r["tier"], r["warm_ms"]))
        others = [r for r in within if r is not best]
        reason = (f"{best['teacher']} {best['method']} ({best['engine']} engine): {figures(best)}, within "
                  f"{budget_ms:.0f} ms and {warmup_budget_ms / 1000:.1f} s; the best teacher that fits"
                  + (f" (also within budget: {', '.join(r['teacher'] + ' ' + r['method'] for r in others[:3])})" if others else ""))
    else:
        best = min(fits, key=lambda r: (r["warm_ms"], r["tier"]))
        reason = (f"no recipe is predicted within {budget_ms:.0f} ms while typing and {warmup_budget_ms / 1000:.1f} s "
                  f"to warm up here; {best['teacher']} {best['method']} ({best['engine']} engine) is the fastest "
                  f"that fits: {figures(best)}")
    for r in rows:
        r["chosen"] = r is best
    return Decision(best["teacher"], best["method"], best["device"], budget_ms, bool(within), reason, rows,
                    warmup_budget_ms)


def front_pick(profile: HardwareProfile, budget_ms: float, teachers: tuple[TeacherShape, ...] = TEACHERS):
    """The best point of the stored search fronts (``pocketpilot search``) of ``teachers`` for this budget.

    Only searches measured on this machine (same CPU model and cores) count; a point must fit in
    memory when served. Among the teachers' picks
    (:func:`pocketpilot.compression.search.pick_for_budget`), one within the budget beats one that
    is not, then the higher measured ES wins.

    Returns:
        ``(search state, Pick)`` or ``None`` when no usable search is stored.
    """
    picks = []
    limit = int(RAM_SHARE * profile.ram_available_bytes) - SERVE_OVERHEAD_BYTES
    for t in teachers:
        state = load_search(t.alias)
        machine = (state or {}).get("machine") or {}
        if not state or not state.get("evaluated") or machine.get("cpu") != profile.cpu_model \
                or machine.get("cores") != profile.cpus:
            continue
        try:
            picks.append((state, pick_for_budget(state, budget_ms, max(1, limit))))
        except PocketPilotError:
            continue
    if not picks:
        return None
    return max(picks, key=lambda sp: (sp[1].meets_budget, sp[1].measured["es"]))


def compress_for_this_machine(budget_ms: float = DEFAULT_BUDGET_MS, *, eval_tasks: int = 10, force: bool = False,
                              progress: Progress | None = None,
                              teachers: tuple[TeacherShape, ...] = TEACHERS,
                              warmup_budget_ms: float = DEFAULT_WARMUP_MS) -> tuple[CompressResult, "Decision"]:
    """Probe this machine, choose a recipe, compress, measure the real latency, and make it active.

    When ``pocketpilot search`` has stored a measured front for a teacher on this machine, its
    points are candidates too (:func:`front_pick`): the front's pick is built (or reused) and
    activated when it meets the budget, or when no plain recipe does.

    The decision (profile, speed probe, every candidate's prediction, the reason), the measured
    cold one-line p50 on ``eval_tasks`` stdlib tasks and the measured warm latency (a request one
    keystroke after the previous one, on up to 5 of them) are recorded in the artifact's manifest
    under ``machine_decision``. A search front's points carry measured cold latencies only, so
    they are compared with ``budget_ms`` as they are (a stricter test). ``teachers`` (default: the packaged ones) may name any
    teacher spec as ``alias``, e.g. a local folder.

    Returns:
        ``(CompressResult, Decision)``.

    Raises:
        PocketPilotError: nothing fits in memory; and the errors of :func:`pocketpilot.compression.compress`.
    """
    progress = progress or no_progress
    progress("probing this machine (cores, ISA, memory, kernel speeds)", 0.0)
    profile = probe_hardware()
    speed = probe_speed(teachers)
    decision = choose_recipe(profile, speed, budget_ms, teachers, warmup_budget_ms=warmup_budget_ms)
    front = front_pick(profile, budget_ms, teachers)
    if front is not None and (front[1].meets_budget or not decision.meets_budget):
        state, pick = front
        decision = Decision(state["teacher"], f"search:{pick.key}", "cpu", budget_ms, pick.meets_budget,
                            f"from the measured search front of {state['teacher']} ({pick.candidates} points): "
                            f"{pick.reason}", decision.candidates, warmup_budget_ms)
        progress(f"chose {pick.key}: {decision.reason}", 0.05)
        result = materialize(state, pick, progress)
        predicted, predicted_warm = pick.measured["line_ms"], None
    else:
        progress(f"chose {decision.teacher} {decision.method}: {decision.reason}", 0.05)
        result = compress(decision.teacher, decision.method, force=force, eval_tasks=eval_tasks, progress=progress)
        chosen = next(r for r in decision.candidates if r["chosen"])
        predicted, predicted_warm = chosen["line_ms"], chosen["warm_ms"]
    measured = _measured_line_ms(result, eval_tasks, progress)
    warm = _measured_warm_ms(result, min(eval_tasks, 5), progress)
    result.manifest.machine_decision = {
        **decision.to_json(), "profile": asdict(profile), "speed_probe": asdict(speed),
        "source": "search front" if decision.method.startswith("search:") else "recipe chooser",
        "predicted_line_ms": predicted, "measured_line_ms_p50": measured,
        "predicted_warm_ms": predicted_warm, "measured_warm_ms_p50": warm,
        "measured_meets_budget": None if warm is None else warm <= budget_ms,
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_manifest(result.folder, result.manifest)
    return result, decision


def _measured_line_ms(result: CompressResult, eval_tasks: int, progress: Progress) -> float | None:
    """The artifact's measured one-line p50 (ms): from its manifest, else measured now on ``eval_tasks`` tasks."""
    measured = (result.manifest.metrics or {}).get("artifact", {}).get("latency_ms_p50")
    if measured is None and eval_tasks > 0:  # a cached artifact built without measurements
        progress(f"measuring {result.artifact_id} on {eval_tasks} line-completion tasks", 0.9)
        measured = evaluate_lines(CompletionEngine(load_artifact(result.artifact_id)),
                                  make_tasks(n=eval_tasks, seed=0))["latency_ms_p50"]
    return measured


def _measured_warm_ms(result: CompressResult, n: int, progress: Progress) -> float | None:
    """Median latency of a request one keystroke after the previous one (ms), on ``n`` stdlib
    line-completion tasks: the task's prefix minus its last character first, then the whole
    prefix, with KV reuse as the server does; ``None`` for ``n`` 0."""
    if n <= 0:
        return None
    progress(f"measuring {result.artifact_id} while typing on {n} tasks", 0.95)
    engine = CompletionEngine(load_artifact(result.artifact_id))
    times = []
    for i, task in enumerate(make_tasks(n=n, seed=0)):
        engine.complete(task["prefix"][:-1], task["suffix"], cache_key=f"t{i}", allow_block=False)
        times.append(engine.complete(task["prefix"], task["suffix"], cache_key=f"t{i}", allow_block=False).total_ms)
        engine.forget(f"t{i}")
    return round(sorted(times)[len(times) // 2], 1)
