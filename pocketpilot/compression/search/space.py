"""The search space: a student configuration, its parameter and byte counts, and the Z3 space of valid ones.

:class:`StudentConfig` is one point; :class:`SearchSpace` holds the constraints (depth, FFN width,
attention shape, method, distillation settings, size and memory limits) and enumerates the valid
configurations; :func:`make_space` builds it for a fetched teacher on this machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

# transformers loads with compression.build and prune anyway (the search is imported lazily by
# the CLI); z3 stays lazy below (and scikit-learn and matplotlib in .models and .front), so that
# the chooser (recipe imports this package for the stored front) never loads them.
import psutil
from transformers import AutoConfig

from pocketpilot.compression.methods import METHODS, QuantMethod, get_method
from pocketpilot.compression.prune import FFN_MULTIPLE
from pocketpilot.compression.shapes import RAM_SHARE, SERVE_OVERHEAD_BYTES, TeacherShape
from pocketpilot.errors import PocketPilotError

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
    shape = shape_of(AutoConfig.from_pretrained(teacher_obj.folder, local_files_only=True, trust_remote_code=False), teacher_obj.spec.spec)
    offered = available_quants()
    missing = [q for q in quants or () if q not in offered]
    if missing:
        raise PocketPilotError(f"method(s) {', '.join(missing)} cannot be searched here (installed: {', '.join(offered)})")
    steps = tuple(s for s in DISTILL_STEPS if max_steps is None or s <= max_steps)
    return SearchSpace(shape, tuple(quants or offered), steps=steps, max_bytes=max_bytes, max_params=max_params,
                       ram_bytes=psutil.virtual_memory().available, min_layers=min_layers)
