"""Predicted objectives: the Pareto filter, the fitted latency model and the ES predictor."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from pocketpilot.compression.hardware import probe_speed
from pocketpilot.compression.search.space import (
    DISTILL_STEPS,
    SearchSpace,
    StudentConfig,
    config_params,
    quant_method,
)
from pocketpilot.compression.shapes import LINE_TOKENS, PROMPT_TOKENS, TeacherShape

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

