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

The package, one topic a module (each imports only those above it):

* :mod:`.space`: :class:`StudentConfig`, parameter and byte counts, :class:`SearchSpace`, :func:`make_space`;
* :mod:`.models`: :func:`non_dominated`, :class:`LatencyModel`, :func:`features`, :class:`ESPredictor`;
* :mod:`.builder`: :class:`Builder` (the artifact of a configuration), :func:`measure_point` (with RAPL energy);
* :mod:`.run`: :class:`Search`, :func:`run_search`, the stored state (:func:`search_path`);
* :mod:`.front`: :func:`load_search`, :class:`Pick`, :func:`pick_for_budget`, :func:`materialize`, :func:`table`, :func:`plot`.
"""

from __future__ import annotations

from pocketpilot.compression.search.builder import (
    Builder,
    measure_point,
)
from pocketpilot.compression.search.front import (
    Pick,
    load_search,
    materialize,
    pick_for_budget,
    plot,
    table,
)
from pocketpilot.compression.search.models import (
    ESPredictor,
    LatencyModel,
    features,
    non_dominated,
)
from pocketpilot.compression.search.run import (
    SEARCH_FORMAT,
    Search,
    machine_fingerprint,
    run_search,
    search_path,
)
from pocketpilot.compression.search.space import (
    ALPHAS,
    DISTILL_STEPS,
    FFN_KEEP,
    PICKS,
    TEMPERATURES,
    SearchSpace,
    StudentConfig,
    available_quants,
    config_bytes,
    config_params,
    emb_params,
    ffn_widths,
    layer_params,
    make_space,
    quant_method,
    search_quants,
    shape_of,
)

__all__ = [
    "ALPHAS",
    "DISTILL_STEPS",
    "FFN_KEEP",
    "PICKS",
    "SEARCH_FORMAT",
    "TEMPERATURES",
    "Builder",
    "ESPredictor",
    "LatencyModel",
    "Pick",
    "Search",
    "SearchSpace",
    "StudentConfig",
    "available_quants",
    "config_bytes",
    "config_params",
    "emb_params",
    "features",
    "ffn_widths",
    "layer_params",
    "load_search",
    "machine_fingerprint",
    "make_space",
    "materialize",
    "measure_point",
    "non_dominated",
    "pick_for_budget",
    "plot",
    "quant_method",
    "run_search",
    "search_path",
    "search_quants",
    "shape_of",
    "table",
]
