"""Avatar-style search for compressed students: a Z3 configuration space and a measured Pareto front.

After Avatar (Shi et al., ICSE-SEIS 2024, "Greening Large Language Models of Code"): an SMT
solver (Z3) builds the space of valid student configurations under the size and memory
limits, a multi-objective search finds the Pareto-optimal ones, and the chosen student is
built (pruned, quantized, optionally distilled). Unlike Avatar, which used FLOPs as the proxy
for latency and energy, latency here is measured on this machine: a fitted per-layer latency
model (:class:`LatencyModel`, from :func:`pocketpilot.compression.hardware.probe_speed` timings of
mini models of the teacher's layer shape at every FFN width) ranks the whole space, and every
evaluated point is then built and timed for real, with the model's error reported. ES is
measured on held-out line-completion tasks for evaluated points, and predicted for the rest
by a Bayesian ridge regression on the configuration (Avatar's choice of predictor), whose
leave-one-out and out-of-sample errors are reported.

A configuration (:class:`StudentConfig`):

* ``layers`` kept and which (``pick``: ``even`` spacing, or ``influence``: ShortGPT Block
  Influence, see :mod:`pocketpilot.compression.prune`);
* ``ffn``: FFN width after structured pruning of intermediate channels (importance score in
  :mod:`pocketpilot.compression.prune`);
* ``quant``: quantization method, which sets bits per part (``int8-fhead`` keeps the embedding
  and LM head in float32 while the layers are int8);
* distillation: ``steps`` of knowledge distillation (0 = none), ``temperature``, ``alpha``.

Objectives: one-line latency (ms; a cold completion: a 512-token prefill and 12 decode
steps, as :mod:`pocketpilot.compression.recipe` budgets it), size on disk (bytes), and ES
(0-100, higher is better); energy per completion is recorded where RAPL can be read.

The search (:func:`run_search`, through :class:`Search`) is exhaustive over the Z3-enumerated
space (a few thousand configurations, so no evolutionary search is needed): every
configuration gets predicted objectives; an initial design (the teacher, then configurations
spread across the space by farthest-point sampling, including short distillations) is
measured; then, until the evaluation budget is spent, the predicted Pareto front point
farthest from every measured point is built and measured (its prediction is scored first, so
the out-of-sample error is honest), and the predictor is refitted. The state is saved after every point under
``<home>/search/<teacher>.json``, so an interrupted search resumes.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# torch and transformers load with compression.build and prune anyway (the search is imported
# lazily by the CLI); z3, scikit-learn and matplotlib stay lazy below, so that the chooser
# (recipe imports this module for the stored front) never loads them.
import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pocketpilot.compression.api import compress
from pocketpilot.compression.build import (
    CompressResult,
    Written,
    build_artifact,
    cached,
)
from pocketpilot.compression.calibration import calibration_batches
from pocketpilot.compression.distill import distill, make_student
from pocketpilot.compression.hardware import probe_hardware, probe_speed
from pocketpilot.compression.methods import METHODS, QuantMethod, get_method
from pocketpilot.compression.prune import (
    FFN_MULTIPLE,
    block_influence,
    ffn_channel_importance,
    pick_layers,
    prune_ffn,
)
from pocketpilot.compression.shapes import (
    LINE_TOKENS,
    PROMPT_TOKENS,
    RAM_SHARE,
    SERVE_OVERHEAD_BYTES,
    TeacherShape,
)
from pocketpilot.corpus import CALIBRATION_FILES, default_source_dir, held_out_files
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.speed import measure_speed
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime.engine import CompletionEngine
from pocketpilot.runtime.loader import load_model_folder
from pocketpilot.store import (
    Progress,
    artifacts_dir,
    home,
    no_progress,
    read_manifest,
    resolve_artifact,
    set_active,
    verify_artifact,
    weight_files,
    write_json,
)
from pocketpilot.teachers import DEFAULT_TEACHER, Teacher, fetch_teacher, parse_spec

log = logging.getLogger(__name__)

#: layout of ``<home>/search/<teacher>.json``; a different value starts a new search
SEARCH_FORMAT = 1
#: FFN widths offered, as fractions of the teacher's (rounded to :data:`prune.FFN_MULTIPLE`)
FFN_KEEP = (1.0, 0.75, 0.5, 0.25)
PICKS = ("even", "influence")
#: knowledge-distillation settings offered
DISTILL_STEPS = (0, 30, 120)
TEMPERATURES = (1, 2, 4)
ALPHAS = (0.5, 0.9)


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class StudentConfig:
    """One point of the search space.

    Attributes:
        layers: decoder layers kept (2 .. teacher depth).
        pick: which layers: ``"even"`` or ``"influence"`` (:func:`prune.pick_layers`).
        ffn: FFN width (intermediate channels per layer) after structured pruning.
        quant: quantization method (registry name).
        steps: knowledge-distillation optimizer steps (0: the pruned student as is).
        temperature, alpha: distillation T and soft-loss weight (canonical 2 / 0.5 when ``steps`` is 0).
    """

    layers: int
    pick: str
    ffn: int
    quant: str
    steps: int = 0
    temperature: float = 2.0
    alpha: float = 0.5

    def key(self) -> str:
        """Short id, e.g. ``l24i-f1152-int8`` or ``l15e-f1536-int8-kd30t2a50``."""
        kd = f"-kd{self.steps}t{self.temperature:g}a{round(self.alpha * 100)}" if self.steps else ""
        return f"l{self.layers}{self.pick[0]}-f{self.ffn}-{self.quant}{kd}"

    @classmethod
    def from_key(cls, key: str) -> StudentConfig:
        """Parse :meth:`key`. Raises PocketPilotError on a malformed key."""
        m = re.fullmatch(r"l(\d+)([ei])-f(\d+)-([a-z0-9\-]+?)(?:-kd(\d+)t([\d.]+)a(\d+))?", key)
        if not m:
            raise PocketPilotError(f"not a search configuration: {key!r} (expected e.g. l24i-f1152-int8)")
        steps = int(m.group(5) or 0)
        return cls(int(m.group(1)), "even" if m.group(2) == "e" else "influence", int(m.group(3)), m.group(4), steps,
                   float(m.group(6)) if steps else 2.0, int(m.group(7)) / 100 if steps else 0.5)


def ffn_widths(ffn: int) -> tuple[int, ...]:
    """FFN widths offered for a teacher FFN width ``ffn`` (:data:`FFN_KEEP`, multiples of 32), widest first."""
    out = []
    for keep in FFN_KEEP:
        w = ffn if keep == 1.0 else max(FFN_MULTIPLE, round(keep * ffn / FFN_MULTIPLE) * FFN_MULTIPLE)
        if w not in out and w <= ffn:
            out.append(w)
    return tuple(out)


def shape_of(config, alias: str) -> TeacherShape:
    """A :class:`TeacherShape` from a ``transformers`` config (``quality`` 0: unknown)."""
    heads = config.num_attention_heads
    return TeacherShape(alias, config.model_type, config.num_hidden_layers, config.hidden_size,
                        config.intermediate_size, heads, getattr(config, "num_key_value_heads", None) or heads,
                        getattr(config, "head_dim", None) or config.hidden_size // heads, config.vocab_size,
                        bool(getattr(config, "tie_word_embeddings", False)), 0.0)


def layer_params(shape: TeacherShape, ffn: int) -> int:
    """Parameters of one decoder layer at FFN width ``ffn`` (count)."""
    return replace(shape, ffn=ffn).layer_params


def emb_params(shape: TeacherShape) -> int:
    """Parameters of the embedding, LM head (once if tied) and final norm (count)."""
    return shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden


def config_params(shape: TeacherShape, cfg: StudentConfig) -> int:
    """All parameters of the student (count)."""
    return emb_params(shape) + cfg.layers * layer_params(shape, cfg.ffn)


def quant_method(name: str) -> QuantMethod:
    """The registered method ``name`` (installed or not).

    Raises:
        UnknownMethodError: not registered; the message lists the registered methods.
    """
    return get_method(name, check=False)


def config_bytes(shape: TeacherShape, cfg: StudentConfig) -> int:
    """Predicted weight bytes on disk (:meth:`QuantMethod.weight_bytes`; the final norm counts with the head)."""
    return quant_method(cfg.quant).weight_bytes(cfg.layers * layer_params(shape, cfg.ffn), emb_params(shape))


def search_quants() -> tuple[str, ...]:
    """Names of the registered methods the search offers (:attr:`QuantMethod.search`), in listing order."""
    return tuple(m.name for m in METHODS.values() if m.search)


def available_quants() -> tuple[str, ...]:
    """Methods of :func:`search_quants` whose packages are installed."""
    return tuple(q for q in search_quants() if METHODS[q].available())


# --------------------------------------------------------------------------- the Z3 space


@dataclass
class SearchSpace:
    """The valid student configurations of one teacher, as Z3 constraints.

    Attributes:
        shape: the teacher's shape.
        quants: methods offered; ffn: FFN widths offered; steps, temperatures, alphas: distillation settings.
        max_bytes: size on disk limit (bytes) or None; max_params: parameter limit or None.
        ram_bytes: RAM available (bytes); serving must fit in :data:`RAM_SHARE` of it. None: not checked.
        min_layers: user floor on depth.
    """

    shape: TeacherShape
    quants: tuple[str, ...] = field(default_factory=search_quants)
    ffn: tuple[int, ...] = ()
    steps: tuple[int, ...] = DISTILL_STEPS
    temperatures: tuple[float, ...] = TEMPERATURES
    alphas: tuple[float, ...] = ALPHAS
    max_bytes: int | None = None
    max_params: int | None = None
    ram_bytes: int | None = None
    min_layers: int = 2

    def __post_init__(self):
        self.ffn = tuple(self.ffn) or ffn_widths(self.shape.ffn)
        offered = search_quants()
        unknown = [q for q in self.quants if q not in offered]
        if unknown:
            raise PocketPilotError(f"unknown method(s) for the search: {', '.join(unknown)}; choose from {', '.join(offered)}")
        if not self.quants:
            raise PocketPilotError("no quantization method to search over; give at least one of " + ", ".join(offered))

    def _vars(self):
        import z3  # lazy: z3 (recipe imports this module for the stored front, which needs no solver)

        return {n: z3.Int(n) for n in ("layers", "pick", "ffn", "quant", "steps", "temperature_x10", "alpha_pct",
                                        "hidden", "heads", "kv_heads", "head_dim")}

    def constraints(self) -> list[tuple[str, object]]:
        """``[(why, z3 expression)]``: every constraint of the space, in the order ``--explain`` prints them."""
        import z3  # lazy: z3

        s, v = self.shape, self._vars()
        L, I = s.layers, s.ffn
        params_expr = emb_params(s) + z3.Sum([z3.If(v["ffn"] == w, v["layers"] * layer_params(s, w), 0) for w in self.ffn])
        bytes100 = self._bytes100(v)
        out = [
            ("depth: 2 <= layers <= teacher depth", z3.And(v["layers"] >= max(2, self.min_layers), v["layers"] <= L)),
            ("FFN width: one of the offered widths, a multiple of 32, at most the teacher's",
             z3.And(z3.Or([v["ffn"] == w for w in self.ffn]), z3.Or(v["ffn"] % 32 == 0, v["ffn"] == I), v["ffn"] <= I)),
            ("attention shape: hidden = heads x head_dim, heads a multiple of KV heads (width of attention kept)",
             z3.And(v["hidden"] == s.hidden, v["heads"] == s.heads, v["kv_heads"] == s.kv_heads, v["head_dim"] == s.head_dim,
                    v["hidden"] == v["heads"] * v["head_dim"], v["heads"] % v["kv_heads"] == 0)),
            (f"quantization: one of {', '.join(self.quants)}", z3.And(v["quant"] >= 0, v["quant"] < len(self.quants))),
            ("layer choice: even (0) or Block Influence (1); a full-depth student keeps all layers (even)",
             z3.And(z3.Or(v["pick"] == 0, v["pick"] == 1), z3.Implies(v["layers"] == L, v["pick"] == 0))),
            (f"distillation steps one of {list(self.steps)}; T in {list(self.temperatures)}, alpha in {list(self.alphas)}",
             z3.And(z3.Or([v["steps"] == x for x in self.steps]),
                    z3.Or([v["temperature_x10"] == round(t * 10) for t in self.temperatures]),
                    z3.Or([v["alpha_pct"] == round(a * 100) for a in self.alphas]))),
            ("no distillation: T and alpha take their defaults (2, 0.5)",
             z3.Implies(v["steps"] == 0, z3.And(v["temperature_x10"] == 20, v["alpha_pct"] == 50))),
            ("distillation only for a student smaller than the teacher",
             z3.Implies(v["steps"] > 0, z3.Or(v["layers"] < L, v["ffn"] < I))),
        ]
        if self.max_params is not None:
            out.append((f"parameters <= {self.max_params:,}", params_expr <= self.max_params))
        if self.max_bytes is not None:
            out.append((f"size on disk <= {self.max_bytes / 1e6:.0f} MB", bytes100 <= self.max_bytes * 100))
        if self.ram_bytes is not None:
            limit = int(RAM_SHARE * self.ram_bytes) - SERVE_OVERHEAD_BYTES
            out.append((f"memory at load: weights + {SERVE_OVERHEAD_BYTES / 1e6:.0f} MB <= {RAM_SHARE:.0%} of "
                        f"{self.ram_bytes / 1e9:.1f} GB available RAM", bytes100 <= max(0, limit) * 100))
        return out

    def _bytes100(self, v):
        """Z3 term: predicted size on disk (bytes) x 100, so that fractional bytes per weight give integer
        coefficients: per FFN width and method, ``layers * round(100 * layer params * body bytes per weight)
        + round(100 * embedding and head params * head bytes per weight)`` (as :func:`config_bytes`)."""
        import z3  # lazy: z3

        s = self.shape
        qi = {q: i for i, q in enumerate(self.quants)}
        terms = []
        for w in self.ffn:
            for q in self.quants:
                method = quant_method(q)
                body100 = round(layer_params(s, w) * method.body_bytes_per_weight * 100)
                head100 = round(emb_params(s) * method.head_bytes_per_weight * 100)
                terms.append(z3.If(z3.And(v["ffn"] == w, v["quant"] == qi[q]), v["layers"] * body100 + head100, 0))
        return z3.Sum(terms)

    def solver(self):
        """A Z3 solver (``QF_LIA``) holding :meth:`constraints`, and its variables by name."""
        import z3  # lazy: z3

        sol = z3.SolverFor("QF_LIA")
        for _, c in self.constraints():
            sol.add(c)
        return sol, self._vars()

    def _assign(self, v, cfg: StudentConfig):
        q = self.quants.index(cfg.quant) if cfg.quant in self.quants else -1
        return [v["layers"] == cfg.layers, v["pick"] == PICKS.index(cfg.pick) if cfg.pick in PICKS else v["pick"] == -1,
                v["ffn"] == cfg.ffn, v["quant"] == q, v["steps"] == cfg.steps,
                v["temperature_x10"] == round(cfg.temperature * 10), v["alpha_pct"] == round(cfg.alpha * 100)]

    def why_invalid(self, cfg: StudentConfig) -> list[str]:
        """The constraints ``cfg`` breaks (empty when it is valid)."""
        import z3  # lazy: z3

        v = self._vars()
        broken = []
        for why, c in self.constraints():
            sol = z3.SolverFor("QF_LIA")
            sol.add(c, *self._assign(v, cfg))
            if sol.check() != z3.sat:
                broken.append(why)
        return broken

    def is_valid(self, cfg: StudentConfig) -> bool:
        """Whether ``cfg`` satisfies every constraint."""
        import z3  # lazy: z3

        sol, v = self.solver()
        return sol.check(*self._assign(v, cfg)) == z3.sat

    def enumerate(self) -> list[StudentConfig]:
        """Every valid configuration: Z3 models, each blocked after it is found (a few seconds for thousands).

        Raises:
            PocketPilotError: the space is empty (the message says which limits to relax).
        """
        import z3  # lazy: z3

        sol, v = self.solver()
        keys = ("layers", "pick", "ffn", "quant", "steps", "temperature_x10", "alpha_pct")
        out = []
        while sol.check() == z3.sat:
            m = sol.model()
            vals = {k: m.eval(v[k], model_completion=True).as_long() for k in keys}
            out.append(StudentConfig(vals["layers"], PICKS[vals["pick"]], vals["ffn"], self.quants[vals["quant"]],
                                     vals["steps"], vals["temperature_x10"] / 10, vals["alpha_pct"] / 100))
            sol.add(z3.Or([v[k] != vals[k] for k in keys]))
        if not out:
            raise PocketPilotError("no student configuration satisfies the constraints (see `pocketpilot search --explain`); "
                                   "raise --max-mb / --max-params or lower --min-layers")
        return sorted(out, key=lambda c: (c.layers, c.ffn, c.quant, c.pick, c.steps, c.temperature, c.alpha))

    def explain(self) -> str:
        """The constraints, one per line, each with its Z3 form (for ``pocketpilot search --explain``)."""
        lines = [f"configuration space of a {self.shape.alias} student ({self.shape.layers} layers, FFN "
                 f"{self.shape.ffn}, hidden {self.shape.hidden}, {self.shape.heads} heads); Z3 constraints:"]
        for i, (why, c) in enumerate(self.constraints(), 1):
            lines.append(f"  {i}. {why}\n       {' '.join(str(c).split())[:400]}")
        return "\n".join(lines)


def make_space(teacher_obj, *, max_bytes: int | None = None, max_params: int | None = None, min_layers: int = 2,
               max_steps: int | None = None, quants: tuple[str, ...] | None = None) -> SearchSpace:
    """The search space of a fetched teacher (:class:`~pocketpilot.teachers.Teacher`) on this machine.

    Args:
        max_bytes, max_params, min_layers: user constraints (bytes on disk, parameter count, depth).
        max_steps: largest distillation step count offered (None: all of :data:`DISTILL_STEPS`).
        quants: methods offered (default: every installed one of :func:`search_quants`).

    Raises:
        PocketPilotError: a requested method is not installed here.
    """
    shape = shape_of(AutoConfig.from_pretrained(teacher_obj.folder, local_files_only=True), teacher_obj.spec.spec)
    offered = available_quants()
    missing = [q for q in quants or () if q not in offered]
    if missing:
        raise PocketPilotError(f"method(s) {', '.join(missing)} cannot be searched here (installed: {', '.join(offered)})")
    steps = tuple(s for s in DISTILL_STEPS if max_steps is None or s <= max_steps)
    return SearchSpace(shape, tuple(quants or offered), steps=steps, max_bytes=max_bytes, max_params=max_params,
                       ram_bytes=psutil.virtual_memory().available, min_layers=min_layers)


# --------------------------------------------------------------------------- objectives


def non_dominated(points: list[tuple[float, ...]], maximize: tuple[bool, ...]) -> list[int]:
    """Indices of the Pareto-optimal points (non-dominated sorting, first front).

    ``points[i][k]`` is objective ``k``; ``maximize[k]`` says whether larger is better. A point is
    dominated when another is at least as good in every objective and strictly better in one.
    Duplicates are all kept. Returned in input order.
    """
    def better_eq(a, b, k):
        return a >= b if maximize[k] else a <= b

    keep = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if j != i and all(better_eq(q[k], p[k], k) for k in range(len(p))) and any(q[k] != p[k] for k in range(len(p))):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


@dataclass
class LatencyModel:
    """Predicted prefill / decode / one-line latency of any configuration on this machine.

    Fitted from :func:`pocketpilot.compression.hardware.probe_speed` run on random mini models of
    the teacher's layer shape at each FFN width and each kernel: one layer's decode step (512
    cached tokens) and 128-token prefill, as the 3-layer minus 1-layer difference, plus the LM
    head's one-row matmul bandwidth per kernel. Then::

        decode = base + layers * layer_decode[ffn, kernel] + vocab * hidden * head_bytes_per_weight / head_bandwidth
        prefill = layers * layer_prefill[ffn, kernel] * 512 / 128 + the same head term
        line = prefill + 12 * decode          (ms)

    Attributes:
        alias: teacher alias (probe keys are ``"<alias>@<ffn>/<kernel>"``).
        probe: the :class:`recipe.SpeedProbe` as a dict.
    """

    alias: str
    probe: dict

    @classmethod
    def fit(cls, shape: TeacherShape, widths: tuple[int, ...], quants: tuple[str, ...]) -> LatencyModel:
        """Time this machine (about 10 s per FFN width): each method's :attr:`QuantMethod.body_kernel` and
        :attr:`QuantMethod.head_kernel`, each kernel once."""
        methods = [quant_method(q) for q in quants]
        kernels = tuple(dict.fromkeys([m.body_kernel for m in methods] + [m.head_kernel for m in methods]))
        shapes = tuple(replace(shape, alias=f"{shape.alias}@{w}", ffn=w) for w in widths)
        return cls(shape.alias, asdict(probe_speed(shapes, kernels)))

    def covers(self, space: SearchSpace) -> bool:
        """Whether every FFN width and kernel of ``space`` was timed (else the model must be refitted)."""
        layers, heads = self.probe["layers"], self.probe["weight_gbps"]
        methods = [quant_method(q) for q in space.quants]
        return all(f"{self.alias}@{w}/{m.body_kernel}" in layers and m.head_kernel in heads
                   for w in space.ffn for m in methods)

    def predict(self, shape: TeacherShape, cfg: StudentConfig) -> dict:
        """``{"prefill_ms", "decode_ms_per_token", "line_ms"}`` (ms); values None when a kernel was not timed."""
        method = quant_method(cfg.quant)
        layer = self.probe["layers"].get(f"{self.alias}@{cfg.ffn}/{method.body_kernel}")
        head = method.head_ms(shape.vocab * shape.hidden, self.probe["weight_gbps"])  # one [vocab, hidden] matmul
        if not layer or head is None:
            return {"prefill_ms": None, "decode_ms_per_token": None, "line_ms": None}
        decode = self.probe["base_decode_ms"] + cfg.layers * layer["decode_ms"] + head
        prefill = cfg.layers * layer["prefill_ms"] * PROMPT_TOKENS / 128 + head
        return {"prefill_ms": round(prefill, 1), "decode_ms_per_token": round(decode, 2),
                "line_ms": round(prefill + LINE_TOKENS * decode, 1)}


def features(shape: TeacherShape, cfg: StudentConfig) -> list[float]:
    """The predictor's input for a configuration (9 numbers, each about 0..1)."""
    method = quant_method(cfg.quant)
    return [cfg.layers / shape.layers, cfg.ffn / shape.ffn, config_params(shape, cfg) / shape.params,
            method.body_bytes_per_weight / 4, method.head_bytes_per_weight / 4, float(cfg.pick == "influence"),
            math.log1p(cfg.steps) / math.log1p(max(DISTILL_STEPS)), cfg.temperature / 4, cfg.alpha]


class ESPredictor:
    """ES of unmeasured configurations from measured ones: Bayesian ridge regression (Avatar's predictor).

    scikit-learn's ``BayesianRidge`` on :func:`features`, which also gives a standard deviation.
    Needs at least 3 measured points; with fewer, :meth:`predict` returns ``None``.
    """

    def __init__(self, shape: TeacherShape):
        self.shape = shape
        self.model = None

    def fit(self, points: list[tuple[StudentConfig, float]]) -> ESPredictor:
        """Fit on ``[(config, measured ES)]``."""
        self.model = None
        if len(points) >= 3:
            # lazy: scikit-learn (seconds to import; only a search with measured points needs it)
            from sklearn.linear_model import BayesianRidge

            self.model = BayesianRidge().fit([features(self.shape, c) for c, _ in points], [es for _, es in points])
        return self

    def predict(self, cfgs: list[StudentConfig]) -> list[tuple[float, float]] | None:
        """``[(ES, std)]`` per configuration, ES clipped to 0..100; ``None`` before :meth:`fit` had 3 points."""
        if self.model is None:
            return None
        mean, std = self.model.predict([features(self.shape, c) for c in cfgs], return_std=True)
        return [(round(min(100.0, max(0.0, float(m))), 2), round(float(s), 2)) for m, s in zip(mean, std)]

    def loo_mae(self, points: list[tuple[StudentConfig, float]]) -> float | None:
        """Leave-one-out mean absolute ES error over ``points`` (None with fewer than 4)."""
        if len(points) < 4:
            return None
        errs = []
        for i in range(len(points)):
            pred = ESPredictor(self.shape).fit(points[:i] + points[i + 1:]).predict([points[i][0]])
            errs.append(abs(pred[0][0] - points[i][1]))
        return round(sum(errs) / len(errs), 2)


# --------------------------------------------------------------------------- building and measuring points


def _rapl_uj() -> int | None:
    """Package energy counter (µJ) from Linux powercap RAPL, or None where it cannot be read."""
    total, found = 0, False
    for p in Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"):
        if p.parent.name.count(":") == 1:  # packages only, not sub-zones
            try:
                total += int(p.read_text())
                found = True
            except (OSError, ValueError):
                return None
    return total if found else None


class Builder:
    """Builds the artifact of a configuration (pruned, distilled, quantized) from one loaded teacher.

    Attributes:
        teacher_obj: the fetched teacher; model: it in float32; tokenizer: its tokenizer.
        calibration: token-id tensors ``[1, 512]`` (:func:`calibration_batches`) for pruning scores and int8 scales.
        n_params: the teacher's parameter count.
        distill_settings: extra :func:`distill` arguments for distilled points.
    """

    def __init__(self, teacher_obj: Teacher, progress: Progress, distill_settings: dict | None = None):
        self.teacher_obj = teacher_obj
        self.progress = progress
        # a short distillation reads a few hundred thousand tokens at most: tokenize no more than that
        self.distill_settings = {"max_tokens": 1 << 18, **(distill_settings or {})}
        self.model = AutoModelForCausalLM.from_pretrained(teacher_obj.folder, dtype=torch.float32, local_files_only=True)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_obj.folder, local_files_only=True)
        self.calibration = calibration_batches(self.tokenizer)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self._influence = None

    def influence(self) -> list[float]:
        """Block Influence of the teacher's layers (computed once)."""
        if self._influence is None:
            self._influence = block_influence(self.model, self.calibration)
        return self._influence

    def student(self, cfg: StudentConfig, teacher_model=None):
        """The pruned float32 student of ``cfg`` and its details (search key and configuration, layer map, FFN pruning)."""
        teacher_model = teacher_model or self.model
        n_teacher = teacher_model.config.num_hidden_layers
        infl = self.influence() if cfg.pick == "influence" else None
        layers = pick_layers(n_teacher, cfg.layers, cfg.pick, infl)
        student = make_student(teacher_model, cfg.layers, layers)
        student.eval()
        details = {"search_key": cfg.key(), "search_config": asdict(cfg), "layer_map": layers, "layer_pick": cfg.pick}
        if infl is not None:
            details["block_influence"] = infl
        if cfg.ffn < teacher_model.config.intermediate_size:
            details["ffn_pruning"] = prune_ffn(student, cfg.ffn, ffn_channel_importance(student, self.calibration))
        return student, details

    def is_plain(self, cfg: StudentConfig) -> bool:
        """``cfg`` is the teacher itself, only quantized (all layers, full FFN, no distillation)."""
        return (cfg.layers == self.model.config.num_hidden_layers and cfg.ffn == self.model.config.intermediate_size
                and cfg.steps == 0)

    def artifact_id(self, cfg: StudentConfig) -> str | None:
        """Artifact id of ``cfg``: ``<teacher>-<method>`` for the unpruned teacher, ``<teacher>-<key>`` otherwise;
        ``None`` for the teacher itself (float32, unpruned: measured from the teacher's folder)."""
        if self.is_plain(cfg):
            return None if cfg.quant == "none" else f"{self.teacher_obj.slug}-{cfg.quant}"
        return f"{self.teacher_obj.slug}-{cfg.key()}"

    def build(self, cfg: StudentConfig) -> tuple[str | None, Path]:
        """Build (or reuse) the artifact of ``cfg``; returns ``(artifact id or None, folder)``.

        The teacher itself has no artifact (its own folder is returned). A valid cached artifact of
        this teacher (:func:`cached`) is reused; otherwise the quantized teacher is built by
        :func:`compress`, a distilled student by :func:`distill`, a pruned one by :func:`build_artifact`.

        Raises:
            PocketPilotError: the errors of compress / distill / build_artifact (disk, missing packages).
        """
        aid = self.artifact_id(cfg)
        if aid is None:
            return None, self.teacher_obj.folder
        if cached(aid, self.teacher_obj, self.progress) is not None:
            return aid, artifacts_dir() / aid
        spec = self.teacher_obj.spec.spec
        if self.is_plain(cfg):
            return aid, compress(spec, cfg.quant, eval_tasks=0, activate=False, force=True, progress=self.progress).folder
        if cfg.steps:
            self.progress(f"distilling {cfg.key()} ({cfg.steps} steps)", None)
            res = distill(spec, cfg.layers, then=None if cfg.quant == "none" else cfg.quant, steps=cfg.steps,
                          temperature=cfg.temperature, alpha=cfg.alpha,
                          build_student=lambda teacher_model: self.student(cfg, teacher_model),
                          student_tag=cfg.key(), artifact_id=aid, activate=False, show_progress=False,
                          progress=self.progress, **{"eval_every": cfg.steps, "checkpoint_every": cfg.steps,
                                                     **self.distill_settings})
            return aid, res.folder
        self.progress(f"building {aid}", None)
        res = build_artifact(self.teacher_obj, aid, lambda tmp: self._write_pruned(cfg, tmp), reuse=False,
                             activate=False, progress=self.progress)
        return aid, res.folder

    def _write_pruned(self, cfg: StudentConfig, tmp: Path) -> Written:
        """Prune the teacher to ``cfg``, quantize it with ``cfg.quant`` and write it into ``tmp``."""
        student, details = self.student(cfg)
        qmethod = get_method(cfg.quant)
        student_params = sum(p.numel() for p in student.parameters())  # before the method replaces any layer
        quant = qmethod.apply(student, tmp, self.calibration or None)
        teacher_cfg = self.model.config
        recipe = {"method": f"prune+{qmethod.name}",
                  "description": f"{cfg.layers} of {teacher_cfg.num_hidden_layers} layers ({cfg.pick}), FFN "
                                 f"{cfg.ffn} of {teacher_cfg.intermediate_size}, then {qmethod.description}",
                  "student": details, "quantization": quant, "student_params": student_params}
        return Written(recipe, self.n_params)


def measure_point(folder: Path, tasks: list[dict]) -> dict:
    """Measure an artifact (or teacher) folder: size, prefill/decode/one-line latency, ES/EM, energy.

    Returns ``{"bytes", "prefill_ms", "decode_ms_per_token", "line_ms", "es", "em", "latency_ms_p50",
    "energy_j_per_completion", "energy_source"}``: bytes of weight files; ms; ES/EM 0-100 on ``tasks``;
    energy from RAPL over the task loop (``None`` and ``"unavailable (no RAPL)"`` where it cannot be read).
    """
    loaded = load_model_folder(folder)
    text = "".join((default_source_dir() / n).read_text(encoding="utf-8") for n in CALIBRATION_FILES[:2])
    max_pos = getattr(loaded.model.config, "max_position_embeddings", 2048) or 2048
    prompt = min(PROMPT_TOKENS, max_pos - 2 * LINE_TOKENS)
    speed = measure_speed(loaded, text, prompt_tokens=prompt, new_tokens=LINE_TOKENS, repeats=3)
    e0 = _rapl_uj()
    res = evaluate_lines(CompletionEngine(loaded), tasks)
    e1 = _rapl_uj()
    energy = (e1 - e0) / 1e6 / max(1, len(tasks)) if e0 is not None and e1 is not None and e1 >= e0 else None
    return {
        "bytes": sum(p.stat().st_size for p in weight_files(Path(folder))),
        "prefill_ms": speed["prefill_ms"], "decode_ms_per_token": speed["decode_ms_per_token"],
        "line_ms": round(speed["prefill_ms"] + LINE_TOKENS * speed["decode_ms_per_token"], 1),
        "prompt_tokens": prompt,
        "es": res["es"], "em": res["em"], "latency_ms_p50": res["latency_ms_p50"],
        "energy_j_per_completion": None if energy is None else round(energy, 3),
        "energy_source": "RAPL" if energy is not None else "unavailable (no RAPL on this machine)",
    }


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


def load_search(teacher: str | None = None) -> dict | None:
    """The stored search of a teacher, by spec as given to ``search`` or by slug (None: the default teacher),
    or None when there is none. Never fetches anything.

    Raises:
        PocketPilotError: a stored state is not valid JSON.
    """
    name = teacher or DEFAULT_TEACHER
    folder = home() / "search"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text())
        except ValueError:
            raise PocketPilotError(f"the stored search {path} is corrupt; delete it or run `pocketpilot search --fresh`") from None
        if isinstance(state, dict) and state.get("format") == SEARCH_FORMAT and name in (state.get("teacher"),
                                                                                          state.get("teacher_slug")):
            return state
    return None


# --------------------------------------------------------------------------- picking


@dataclass
class Pick:
    """The point chosen for a budget.

    Attributes:
        key: configuration key; artifact_id: its artifact (None: the float32 teacher itself).
        measured: its measurements (ms, bytes, ES).
        meets_budget: its measured one-line latency is within the budget.
        reason: one line a person can read.
    """

    key: str
    artifact_id: str | None
    measured: dict
    meets_budget: bool
    reason: str
    candidates: int = 0
    config: dict = field(default_factory=dict)


def pick_for_budget(state: dict, budget_ms: float, max_bytes: int | None = None, min_es_share: float = 0.9,
                    floor_share: float = 0.5) -> Pick:
    """The best measured point for a latency budget and a size limit.

    Among measured points within ``max_bytes`` that keep at least ``floor_share`` of the best
    measured ES (a student that lost more than that is no code completer, however fast): the
    highest ES whose one-line latency is within ``budget_ms`` (ties: faster). If none is, the
    fastest point whose ES is at least ``min_es_share`` of the best measured ES, with
    ``meets_budget`` False.

    Raises:
        PocketPilotError: a non-positive budget, or no measured point within the size limit.
    """
    if budget_ms <= 0:
        raise PocketPilotError(f"latency budget must be positive, got {budget_ms} ms")
    rows = [r for r in state.get("evaluated", []) if max_bytes is None or r["measured"]["bytes"] <= max_bytes]
    if not rows:
        smallest = min((r["measured"]["bytes"] for r in state.get("evaluated", [])), default=None)
        raise PocketPilotError(
            "no measured point within " + (f"{max_bytes / 1e6:.0f} MB" if max_bytes else "the limits")
            + (f" (the smallest is {smallest / 1e6:.0f} MB)" if smallest else "")
            + "; run `pocketpilot search` with that --max-mb to measure points under it")
    top = max(r["measured"]["es"] for r in rows)
    within = [r for r in rows if r["measured"]["line_ms"] <= budget_ms and r["measured"]["es"] >= floor_share * top]
    if within:
        best = max(within, key=lambda r: (r["measured"]["es"], -r["measured"]["line_ms"]))
        reason = (f"{best['key']}: best measured ES ({best['measured']['es']:.2f}) of {len(within)} point(s) within "
                  f"{budget_ms:.0f} ms ({best['measured']['line_ms']:.0f} ms, {best['measured']['bytes'] / 1e6:.0f} MB)")
    else:
        good = [r for r in rows if r["measured"]["es"] >= min_es_share * top]
        best = min(good, key=lambda r: r["measured"]["line_ms"])
        reason = (f"no measured point keeping {floor_share:.0%} of the best ES is within {budget_ms:.0f} ms; "
                  f"{best['key']} is the fastest keeping {min_es_share:.0%} of the best ES "
                  f"({best['measured']['es']:.2f}, {best['measured']['line_ms']:.0f} ms)")
    return Pick(best["key"], best["artifact_id"], best["measured"], bool(within), reason, len(rows), best["config"])


def materialize(state: dict, pick: Pick, progress: Progress | None = None, activate: bool = True) -> CompressResult:
    """The artifact of a picked point, rebuilt if it was deleted; made active. Returns ``CompressResult``.

    The float32 teacher itself (no artifact) is written as the ``none`` artifact.

    Raises:
        PocketPilotError: the errors of compress / distill while rebuilding (teacher fetch, disk).
    """
    progress = progress or no_progress
    if pick.artifact_id is None:
        return compress(state["teacher"], "none", eval_tasks=0, activate=activate, progress=progress)
    final = artifacts_dir() / pick.artifact_id
    try:
        manifest = verify_artifact(final)
        reused = True
    except ArtifactError:
        progress(f"rebuilding {pick.artifact_id}", None)
        teacher_obj = fetch_teacher(parse_spec(state["teacher"]), progress)
        Builder(teacher_obj, progress).build(StudentConfig(**pick.config))
        manifest = read_manifest(final)
        reused = False
    if activate:
        set_active(pick.artifact_id)
    return CompressResult(pick.artifact_id, final, reused, manifest)


# --------------------------------------------------------------------------- output


def table(state: dict) -> str:
    """Markdown table of the measured points, front points marked with ``*``."""
    front = set(state.get("front", []))
    lines = ["| | configuration | layers | FFN | method | KD steps | size MB | prefill ms | decode ms/tok | one-line ms "
             "(predicted) | ES (predicted) | EM |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(state.get("evaluated", []), key=lambda r: r["measured"]["line_ms"]):
        c, m, p = r["config"], r["measured"], r["predicted"]
        pes = "-" if p.get("es") is None else f"{p['es']:.1f}"
        lines.append(f"| {'*' if r['key'] in front else ''} | {r['key']} | {c['layers']} ({c['pick']}) | {c['ffn']} | "
                     f"{c['quant']} | {c['steps']} | {m['bytes'] / 1e6:.0f} | {m['prefill_ms']:.0f} | "
                     f"{m['decode_ms_per_token']:.1f} | {m['line_ms']:.0f} ({p['line_ms']:.0f}) | {m['es']:.2f} ({pes}) | "
                     f"{m['em']:.1f} |")
    return "\n".join(lines)


def plot(state: dict, path: Path) -> Path:
    """PNG: predicted ES against predicted one-line latency for the predicted front (grey), measured points
    (marker area = size on disk) and the measured Pareto front (red)."""
    import matplotlib  # lazy: matplotlib (only for the plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib

    pts = state.get("evaluated", [])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    pf = [r for r in state.get("predicted_front", []) if not r.get("measured") and r.get("es") is not None]
    if pf:
        ax.scatter([r["line_ms"] for r in pf], [r["es"] for r in pf], s=10, c="lightgrey",
                   label="predicted front (not built)")
    biggest = max((r["measured"]["bytes"] for r in pts), default=1)
    front = set(state.get("front", []))
    for r in pts:
        m = r["measured"]
        ax.scatter(m["line_ms"], m["es"], s=30 + 600 * m["bytes"] / biggest, alpha=0.6, edgecolors="black",
                   c="tab:red" if r["key"] in front else "tab:blue")
        ax.annotate(f"{r['key']}\n{m['bytes'] / 1e6:.0f} MB", (m["line_ms"], m["es"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=6)
    two_d = non_dominated([(r["measured"]["line_ms"], r["measured"]["es"]) for r in pts], (False, True))
    f2 = sorted((pts[i]["measured"]["line_ms"], pts[i]["measured"]["es"]) for i in two_d)
    if f2:
        ax.step([x for x, _ in f2], [y for _, y in f2], where="post", color="tab:red", linewidth=1,
                label="measured front (latency, ES)")
    ax.set_xscale("log")
    ax.set_xlabel("one-line completion latency, ms (512-token prefill + 12 tokens; log scale)")
    ax.set_ylabel("edit similarity (held-out stdlib tasks)")
    ax.set_title(f"{state.get('teacher')}: measured students (red = Pareto-optimal in latency, size, ES)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["StudentConfig", "SearchSpace", "make_space", "LatencyModel", "ESPredictor", "Pick", "non_dominated", "run_search",
           "Search", "pick_for_budget", "materialize", "load_search", "plot", "table", "ffn_widths", "config_bytes",
           "config_params", "shape_of", "search_quants"]
