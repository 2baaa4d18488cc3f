"""The search loop: :class:`Search` over a teacher's space, :func:`run_search`, and the stored state.

The state is saved after every point under ``<home>/search/<teacher>.json`` (:func:`search_path`),
so an interrupted search resumes; it is only reused for the same teacher build, machine
(:func:`machine_fingerprint`) and task set.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

from pocketpilot.compression.hardware import probe_hardware
from pocketpilot.compression.search.builder import Builder, measure_point
from pocketpilot.compression.search.models import (
    ESPredictor,
    LatencyModel,
    features,
    non_dominated,
)
from pocketpilot.compression.search.space import (
    SearchSpace,
    StudentConfig,
    config_bytes,
    config_params,
    make_space,
)
from pocketpilot.compression.shapes import TeacherShape
from pocketpilot.corpus import default_source_dir, held_out_files
from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.store import (
    Progress,
    home,
    no_progress,
    resolve_artifact,
    verify_artifact,
    write_json,
)
from pocketpilot.teachers import Teacher, fetch_teacher, parse_spec

log = logging.getLogger(__name__)

#: layout of ``<home>/search/<teacher>.json``; a different value starts a new search
SEARCH_FORMAT = 1


# --------------------------------------------------------------------------- the search


def search_path(slug: str) -> Path:
    """Where the search state of a teacher is kept: ``<home>/search/<slug>.json``."""
    return home() / "search" / f"{slug}.json"


def machine_fingerprint() -> dict:
    """CPU model and usable cores: stored figures are only reused on the same machine."""
    hw = probe_hardware()
    return {"cpu": hw.cpu_model, "cores": hw.cpus, "machine": platform.machine(),
            "cuda": [d["name"] for d in hw.cuda]}


def _spread(cands: list[StudentConfig], chosen: list[StudentConfig], k: int, shape: TeacherShape) -> list[StudentConfig]:
    """Greedy farthest-point picks of ``k`` configs from ``cands`` (distance on :func:`features`)."""
    def dist(a, b):
        return math.dist(features(shape, a), features(shape, b))

    picked = []
    pool = [c for c in cands if c not in chosen]
    for _ in range(k):
        if not pool:
            break
        best = max(pool, key=lambda c: (min((dist(c, d) for d in chosen + picked), default=0.0), c.key()))
        picked.append(best)
        pool.remove(best)
    return picked


def _objectives(row: dict) -> tuple[float, float, float]:
    return (row["line_ms"], row["bytes"], row["es"])


class Search:
    """One run of the search over a teacher's space: the stored state, the predictions, the measured points.

    :func:`run_search` drives it: :meth:`run` measures the :meth:`initial_design`, then
    :meth:`next_point` until the budget is spent (each through :meth:`evaluate`, which saves the
    state); :meth:`measure_references`; :meth:`summary`.

    Attributes:
        teacher_obj, space, shape: the fetched teacher, its :class:`SearchSpace` and shape.
        configs: the valid configurations whose latency the timed kernels predict.
        state: the JSON-able search state, saved to :attr:`path` after every point.
        preds: config -> predicted ``{"prefill_ms", "decode_ms_per_token", "line_ms"}`` (ms), ``"bytes"``, ``"params"``.
        done: key -> evaluated row (this run's and the stored ones).
        task_rows: the held-out line-completion tasks every point is measured on.
        predictor: the :class:`ESPredictor`, refitted before every prediction.
    """

    def __init__(self, teacher_obj: Teacher, space: SearchSpace, *, tasks: int, seed: int, fresh: bool = False,
                 distill_settings: dict | None = None, progress: Progress = no_progress, t0: float | None = None):
        """Enumerate the space, open (or start) the stored state, fit the latency model if needed, predict
        every configuration and cut the tasks. ``t0``: ``time.perf_counter()`` at the start of the run."""
        self.teacher_obj, self.space, self.shape = teacher_obj, space, space.shape
        self.progress, self.distill_settings = progress, distill_settings
        self.t0 = time.perf_counter() if t0 is None else t0
        configs = space.enumerate()
        self.t_space = time.perf_counter() - self.t0
        progress(f"{len(configs)} valid configurations ({self.t_space:.1f} s)", 0.02)
        self.path = search_path(teacher_obj.slug)
        self.state = self._open_state(tasks, seed, fresh)
        lat = self._latency_model()
        self.preds = {c: {**lat.predict(self.shape, c), "bytes": config_bytes(self.shape, c),
                          "params": config_params(self.shape, c)} for c in configs}
        self.configs = [c for c in configs if self.preds[c]["line_ms"] is not None]
        root = default_source_dir()
        self.task_rows = make_tasks(root, n=tasks, seed=seed, files=held_out_files([root]))
        self.done = {row["key"]: row for row in self.state["evaluated"]}
        self.valid_keys = {c.key() for c in self.configs}
        self.predictor = ESPredictor(self.shape)
        self._builder: Builder | None = None

    def _open_state(self, tasks: int, seed: int, fresh: bool) -> dict:
        """The stored state if it was made for this teacher build, machine and task set, else a new one."""
        t, fp = self.teacher_obj, machine_fingerprint()
        state = None if fresh else _load_state(self.path)
        if state and (state.get("teacher_sha256") != t.source_sha256 or state.get("machine") != fp
                      or state.get("tasks", {}).get("n") != tasks or state.get("tasks", {}).get("seed") != seed):
            self.progress("stored search is for another teacher build, machine or task set; starting over", None)
            state = None
        return state or {"format": SEARCH_FORMAT, "teacher": t.spec.spec, "teacher_slug": t.slug,
                         "teacher_sha256": t.source_sha256, "machine": fp,
                         "tasks": {"n": tasks, "seed": seed, "source": "held-out Python standard-library files"},
                         "evaluated": [], "seconds": {}}

    def _latency_model(self) -> LatencyModel:
        """The stored latency model, refitted (and stored) when it misses a width or kernel of the space."""
        state = self.state
        if "latency_model" not in state or not LatencyModel(**state["latency_model"]).covers(self.space):
            self.progress("timing this machine's kernels at every FFN width", 0.05)
            t = time.perf_counter()
            state["latency_model"] = asdict(LatencyModel.fit(self.shape, self.space.ffn, self.space.quants))
            state["seconds"]["latency_probe"] = round(time.perf_counter() - t, 1)
        return LatencyModel(**state["latency_model"])

    def save(self) -> None:
        """Write the state to :attr:`path`."""
        _save_state(self.path, self.state)

    def measured_points(self) -> list[tuple[StudentConfig, float]]:
        """``[(config, measured ES)]`` of every evaluated point."""
        return [(StudentConfig.from_key(k), r["measured"]["es"]) for k, r in self.done.items()]

    def n_valid_done(self) -> int:
        """Evaluated points valid under the current limits (the ones the budget counts)."""
        return sum(1 for k in self.done if k in self.valid_keys)

    def initial_design(self, evaluate: int, distill_seeds: int) -> list[StudentConfig]:
        """The teacher itself, then up to ``min(evaluate, 4)`` points in all spread over the space by
        farthest-point sampling, ``distill_seeds`` of them distilled (when the space has distilled points)."""
        shape = self.shape
        teacher_cfg = StudentConfig(shape.layers, "even", shape.ffn, "none")
        initial = [teacher_cfg] if teacher_cfg in self.preds else []
        free = [c for c in self.configs if c.steps == 0]
        kd = [c for c in self.configs if c.steps > 0]
        k_init = max(0, min(evaluate, 4) - len(initial))
        n_kd = min(distill_seeds, len(kd), max(0, k_init - 1)) if kd else 0
        initial += _spread(free, initial, k_init - n_kd, shape)
        initial += _spread(kd, initial, n_kd, shape)
        return initial

    def next_point(self) -> StudentConfig | None:
        """The predicted Pareto front point farthest from every measured point (None: the front is all measured)."""
        front = _predicted_front(self.configs, self.preds, self.predictor.fit(self.measured_points()), self.done)
        todo = [c for c, _ in front if c.key() not in self.done]
        if not todo:
            return None
        measured = [StudentConfig.from_key(k) for k in self.done]
        return _spread(todo, measured, 1, self.shape)[0]

    def run(self, evaluate: int, distill_seeds: int) -> None:
        """Evaluate points until ``evaluate`` valid ones are measured: the initial design, then :meth:`next_point`."""
        t_eval = time.perf_counter()
        for cfg in self.initial_design(evaluate, distill_seeds):
            if self.n_valid_done() >= evaluate:
                break
            if cfg.key() not in self.done:
                self.evaluate(cfg, "initial design")
        while self.n_valid_done() < evaluate:
            nxt = self.next_point()
            if nxt is None:
                break
            self.evaluate(nxt, "predicted Pareto front, farthest from the measured points")
        seconds = self.state["seconds"]
        seconds["evaluation"] = round(seconds.get("evaluation", 0) + time.perf_counter() - t_eval, 1)

    def builder(self) -> Builder:
        """The :class:`Builder` (the teacher is loaded on first use)."""
        if self._builder is None:
            self.progress("loading the teacher for building students", None)
            self._builder = Builder(self.teacher_obj, self.progress, self.distill_settings)
        return self._builder

    def evaluate(self, cfg: StudentConfig, why: str) -> dict:
        """Predict ``cfg``'s ES (before measuring it, so the out-of-sample error is honest), build it, measure
        it on :attr:`task_rows`, record and save the row; returns the row."""
        builder = self.builder()
        self.predictor.fit(self.measured_points())
        before = self.predictor.predict([cfg])
        t = time.perf_counter()
        aid, folder = builder.build(cfg)
        t_build = time.perf_counter() - t
        self.progress(f"measuring {cfg.key()} on {len(self.task_rows)} tasks", None)
        t = time.perf_counter()
        m = measure_point(folder, self.task_rows)
        row = {"key": cfg.key(), "config": asdict(cfg), "artifact_id": aid, "why": why,
               "predicted": {**self.preds[cfg], "es": before[0][0] if before else None,
                             "es_std": before[0][1] if before else None},
               "measured": m, "build_seconds": round(t_build, 1), "measure_seconds": round(time.perf_counter() - t, 1)}
        self.done[cfg.key()] = row
        self.state["evaluated"] = list(self.done.values())
        self.save()
        self.progress(f"{cfg.key()}: ES {m['es']:.2f}, one-line {m['line_ms']:.0f} ms, {m['bytes'] / 1e6:.0f} MB "
                      f"({len(self.done)} evaluated)", None)
        return row

    def measure_references(self, references: tuple[str, ...]) -> None:
        """Measure cached artifacts (ids) on the same tasks, once each, under ``state["references"]``.

        Raises:
            ArtifactError: a reference is not a valid cached artifact.
        """
        for ref in references:
            if ref in self.state.setdefault("references", {}):
                continue
            folder = resolve_artifact(ref)
            manifest = verify_artifact(folder)
            self.progress(f"measuring the reference {ref} on {len(self.task_rows)} tasks", None)
            self.state["references"][ref] = {"recipe": manifest.recipe.get("description"),
                                             "measured": measure_point(folder, self.task_rows)}
            self.save()

    def summary(self) -> dict:
        """Refit the predictor, record the space, the predictor's and latency model's errors, the measured and
        predicted fronts and the run time in the state; save it and return it."""
        self.predictor.fit(self.measured_points())
        pts, space, state = list(self.done.values()), self.space, self.state
        state["space"] = {"constraints": [why for why, _ in space.constraints()], "size": len(self.configs),
                          "enumerate_seconds": round(self.t_space, 1), "quants": list(space.quants),
                          "ffn": list(space.ffn), "steps": list(space.steps), "max_bytes": space.max_bytes,
                          "max_params": space.max_params}
        oos = [abs(r["predicted"]["es"] - r["measured"]["es"]) for r in pts if r["predicted"].get("es") is not None]
        state["predictor"] = {"model": "sklearn BayesianRidge on 9 configuration features", "points": len(pts),
                              "loo_mae_es": self.predictor.loo_mae(self.measured_points()),
                              "out_of_sample_mae_es": round(sum(oos) / len(oos), 2) if oos else None,
                              "out_of_sample_n": len(oos)}
        state["latency_model_error"] = _latency_error(pts)
        state["front"] = [pts[i]["key"] for i in non_dominated([_objectives(r["measured"]) for r in pts],
                                                               (False, False, True))]
        state["predicted_front"] = [{"key": c.key(), **obj}
                                    for c, obj in _predicted_front(self.configs, self.preds, self.predictor, self.done)]
        state["seconds"]["total_last_run"] = round(time.perf_counter() - self.t0, 1)
        state["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        return state


def run_search(teacher: str | None = None, *, evaluate: int = 10, tasks: int = 100, seed: int = 0,
               max_bytes: int | None = None, max_params: int | None = None, min_layers: int = 2,
               max_steps: int | None = None, quants: tuple[str, ...] | None = None, distill_seeds: int = 1,
               distill_settings: dict | None = None, references: tuple[str, ...] = (), fresh: bool = False,
               progress: Progress | None = None) -> dict:
    """Search the compressed students of a teacher; evaluate up to ``evaluate`` of them on this machine.

    Args:
        teacher: teacher spec (default: the default teacher).
        evaluate: configurations to build and measure in all (resumed searches count earlier ones;
            only points valid under the current limits count). 0: only predict.
        tasks: held-out line-completion tasks (stdlib files that distillation never trains on) per point.
        seed: task seed.
        max_bytes, max_params, min_layers: user constraints (size on disk in bytes; parameter count; depth).
        max_steps: largest distillation step count offered (0: no distillation).
        quants: methods offered (default: every installed one of :func:`search_quants`).
        distill_seeds: distilled configurations in the initial design (the predictor needs some).
        distill_settings: extra :func:`pocketpilot.compression.distill.distill` arguments for distilled
            points (e.g. ``corpus``, ``block_tokens``, ``batch_size``).
        references: cached artifact ids (e.g. a hand-picked distilled student) measured on the same
            tasks, for comparison; kept under ``references``.
        fresh: forget the stored state of this teacher's search.
        progress: callback for progress messages.

    Returns:
        The search state (also saved under :func:`search_path`): ``teacher``, ``space`` (constraints,
        size), ``latency_model``, ``evaluated`` (each point's configuration, artifact, prediction
        made before measuring it, and measurements), ``predictor`` (LOO and out-of-sample MAE),
        ``latency_model_error``, ``front`` (measured Pareto front over line ms, bytes, ES: keys),
        ``predicted_front`` and ``seconds`` per phase.

    Raises:
        PocketPilotError: an empty space, bad arguments; the errors of compress / distill.
    """
    progress = progress or no_progress
    if evaluate < 0 or tasks < 1:
        raise PocketPilotError(f"--evaluate must be >= 0 and --tasks >= 1; got {evaluate} and {tasks}")
    t0 = time.perf_counter()
    teacher_obj = fetch_teacher(parse_spec(teacher), progress)
    space = make_space(teacher_obj, max_bytes=max_bytes, max_params=max_params, min_layers=min_layers,
                       max_steps=max_steps, quants=quants)
    search = Search(teacher_obj, space, tasks=tasks, seed=seed, fresh=fresh, distill_settings=distill_settings,
                    progress=progress, t0=t0)
    search.run(evaluate, distill_seeds)
    search.measure_references(references)
    return search.summary()


def _predicted_front(configs, preds, predictor: ESPredictor, done: dict) -> list[tuple[StudentConfig, dict]]:
    """Pareto front over (line ms, bytes, ES) with measured values where known, predicted elsewhere.

    Returns ``[(config, {"line_ms", "bytes", "es", "measured"})]`` by predicted latency; ``es`` is
    None for an unmeasured point before the predictor can run (fewer than 3 measured points), when
    ES is ranked by parameter count instead. Ties on every objective keep the cheaper configuration
    (fewer distillation steps).
    """
    es = predictor.predict(configs)
    rows, objs = [], []
    for i, c in enumerate(configs):
        if c.key() in done:
            m = done[c.key()]["measured"]
            objs.append({"line_ms": m["line_ms"], "bytes": m["bytes"], "es": m["es"], "measured": True})
            rows.append((m["line_ms"], m["bytes"], m["es"]))
        else:
            p = preds[c]
            objs.append({"line_ms": p["line_ms"], "bytes": p["bytes"], "es": es[i][0] if es else None, "measured": False})
            rows.append((p["line_ms"], p["bytes"], es[i][0] if es else p["params"] / 1e6))
    best: dict[tuple, int] = {}
    for i in non_dominated(rows, (False, False, True)):  # one configuration per objective vector: the cheapest
        j = best.get(rows[i])
        if j is None or (configs[i].steps, configs[i].key()) < (configs[j].steps, configs[j].key()):
            best[rows[i]] = i
    return sorted(((configs[i], objs[i]) for i in best.values()), key=lambda co: preds[co[0]]["line_ms"])


def _latency_error(points: list[dict]) -> dict:
    """Mean absolute percentage error of the latency and size models over the measured points."""
    out = {}
    for k in ("prefill_ms", "decode_ms_per_token", "line_ms", "bytes"):
        errs = [abs(r["predicted"][k] - r["measured"][k]) / r["measured"][k]
                for r in points if r["predicted"].get(k) and r["measured"].get(k)]
        out[f"{k}_mape_pct"] = round(100 * sum(errs) / len(errs), 1) if errs else None
    return out


def _load_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("search state %s is unreadable; starting over", path)
        return None
    return state if isinstance(state, dict) and state.get("format") == SEARCH_FORMAT else None


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, state)
