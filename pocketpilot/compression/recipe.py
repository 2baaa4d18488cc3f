"""Hardware probe and the "compress for this machine" recipe chooser.

:func:`probe_hardware` reads what the machine has (cores, ISA flags, RAM, CUDA, MPS).
:func:`probe_speed` times the kernels each recipe's inference runs on (a few seconds):
matmul throughput (GFLOP/s) for prefill and weight streaming (GB/s) for one-token decode,
per quantization method. :func:`predict` turns those figures and a teacher's shape into a
predicted one-line completion latency and memory use; :func:`choose_recipe` picks the best
teacher and method that fit the latency budget and the memory. All three are pure functions of
their inputs, so synthetic hardware profiles test the chooser; :func:`compress_for_this_machine`
runs them on the real machine, builds the artifact, measures its real latency and records the
decision, predictions and measurements in the manifest.

Latency model (roofline style, as in Williams et al., CACM 2009): a one-line completion is a
prefill of ``PROMPT_TOKENS`` tokens (compute bound: ``2 * params * tokens / FLOP/s``) plus
``LINE_TOKENS`` decode steps (memory bound: weight bytes / bandwidth, plus a per-layer
framework overhead). The budget refers to a cold completion (no KV-cache reuse), as
``pocketpilot eval`` measures it; in the editor most requests reuse the cache and are faster.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field

from pocketpilot.errors import PocketPilotError

#: default latency budget: one-line completion p50, ms
DEFAULT_BUDGET_MS = 300.0
#: prompt and completion length the latency budget is predicted for (tokens)
PROMPT_TOKENS = 512
LINE_TOKENS = 12
#: memory kept free for the editor and the OS: at most this share of available RAM is planned
RAM_SHARE = 0.8


@dataclass(frozen=True)
class TeacherShape:
    """What the chooser needs to know of a teacher without downloading it.

    Attributes:
        alias: packaged teacher alias.
        arch: ``model_type`` (``"llama"`` or ``"qwen2"``).
        layers, hidden, ffn, heads, kv_heads, head_dim, vocab: the decoder's shape.
        tied: the LM head shares the embedding.
        quality: measured ES on standard-library line completion, fp32 (0-100; higher is better).
    """

    alias: str
    arch: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    quality: float

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (count)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.ffn + 2 * h

    @property
    def params(self) -> int:
        """All parameters (count)."""
        return self.layers * self.layer_params + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def mini_config(self, layers: int):
        """A ``transformers`` config of this shape with ``layers`` layers and a 256-token vocabulary."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.arch, vocab_size=256, hidden_size=self.hidden, intermediate_size=self.ffn,
                                    num_hidden_layers=layers, num_attention_heads=self.heads,
                                    num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
                                    max_position_embeddings=2048, tie_word_embeddings=True)


#: the packaged teachers, best first (shapes from their config.json). ES: Qwen2.5-Coder-1.5B 68 vs
#: SmolLM2-135M 51 on the same stdlib line-completion tasks (first issue, fp32).
TEACHERS: tuple[TeacherShape, ...] = (
    TeacherShape("qwen2.5-coder-1.5b", "qwen2", 28, 1536, 8960, 12, 2, 128, 151936, False, 68.0),
    TeacherShape("smollm2-135m", "llama", 30, 576, 1536, 9, 3, 64, 49152, True, 51.0),
)


@dataclass(frozen=True)
class MethodShape:
    """Per-method facts for prediction.

    Attributes:
        name: quantization method (registry key).
        bytes_per_weight: stored bytes per linear weight (scales included, roughly).
        compute: dtype of prefill matmuls: ``"float32"`` or ``"bfloat16"``.
        tier: expected quality tier (0 = no measurable loss vs fp32, 1 = some loss), from the README.
        needs: optional module the method imports.
    """

    name: str
    bytes_per_weight: float
    compute: str
    tier: int
    needs: str | None = None


METHODS: tuple[MethodShape, ...] = (
    MethodShape("int8", 1.02, "bfloat16", 0),
    MethodShape("bf16", 2.0, "bfloat16", 0),
    MethodShape("none", 4.0, "float32", 0),
    MethodShape("bnb-nf4", 0.56, "bfloat16", 1, "bitsandbytes"),
    MethodShape("bnb-int8", 1.02, "float32", 1, "bitsandbytes"),
)

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


@dataclass
class HardwareProfile:
    """What :func:`probe_hardware` found.

    Attributes:
        cpus: logical CPUs this process may use.
        cpu_model: CPU model name.
        isa: ISA flag -> present (AVX2, AVX-512, VNNI, AMX; NEON on ARM).
        torch_cpu_capability: what PyTorch's CPU kernels dispatch to (e.g. ``"AVX512"``).
        ram_total_bytes, ram_available_bytes: RAM (bytes).
        disk_free_bytes: free space where artifacts are cached (bytes).
        cuda: one ``{"name", "memory_bytes"}`` per CUDA device.
        mps: Apple Metal available.
        bitsandbytes: the optional bitsandbytes package is installed.
    """

    cpus: int
    cpu_model: str
    isa: dict[str, bool]
    torch_cpu_capability: str
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int
    cuda: list[dict] = field(default_factory=list)
    mps: bool = False
    bitsandbytes: bool = False


def probe_hardware() -> HardwareProfile:
    """Read cores, ISA flags, RAM, free disk, CUDA devices and MPS of this machine (no benchmark)."""
    import importlib.util
    import shutil

    import psutil
    import torch

    from pocketpilot.compression.artifacts import home

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
    except OSError:  # macOS, Windows: torch's dispatch level still tells the vector width
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mem = psutil.virtual_memory()
    target = home()
    while not target.exists() and target != target.parent:
        target = target.parent
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append({"name": props.name, "memory_bytes": int(props.total_memory)})
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return HardwareProfile(
        cpus=cpus, cpu_model=model, isa={f: f in flags for f in ISA_FLAGS},
        torch_cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
        ram_total_bytes=int(mem.total), ram_available_bytes=int(mem.available),
        disk_free_bytes=int(shutil.disk_usage(target).free), cuda=cuda, mps=mps,
        bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
    )


@dataclass
class SpeedProbe:
    """Speeds measured on this machine by :func:`probe_speed`.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        gflops: matmul throughput by compute dtype (GFLOP/s).
        weight_gbps: weight bytes streamed per second by a one-row matmul, per method (GB/s; the LM head).
        layers: ``"teacher/method"`` -> ``{"decode_ms", "prefill_ms"}``: one decoder layer of that
            teacher's shape, compressed with that method, for one decode step with 512 tokens
            cached and for a 128-token prefill chunk (ms), as the difference between a 3-layer
            and a 1-layer model (so embedding, final norm and framework overhead cancel out).
        base_decode_ms: the rest of a decode step: embedding, final norm, sampling (ms).
        seconds: how long the probe took (s).
    """

    device: str
    gflops: dict[str, float]
    weight_gbps: dict[str, float]
    layers: dict[str, dict[str, float]]
    base_decode_ms: float
    seconds: float = 0.0


def _best_ms(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _available_methods() -> tuple[str, ...]:
    import importlib.util

    return tuple(m.name for m in METHODS if not m.needs or importlib.util.find_spec(m.needs))


def probe_speed(teachers: tuple[TeacherShape, ...] = TEACHERS, methods: tuple[str, ...] | None = None) -> SpeedProbe:
    """Measure, on this CPU, what each teacher's layers cost under each method (about 30 s).

    For each teacher, a randomly initialised model of the teacher's exact layer shape (1 and 3
    layers, tiny vocabulary) is compressed in memory with each method (PocketPilot's int8, bf16,
    float32, and the bitsandbytes layers when installed) and timed: one decode step with 512
    cached tokens, and a 128-token prefill. The difference between 3 and 1 layers is the cost of
    one layer. The LM head is timed as a one-row matmul per method. No download is needed.

    Args:
        teachers: teacher shapes to time.
        methods: methods to time (default: those in :data:`METHODS` whose package is installed).

    Returns:
        :class:`SpeedProbe`.
    """
    import copy

    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    t_start = time.perf_counter()
    methods = methods or _available_methods()
    torch.manual_seed(0)
    gflops = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(256, 1536, dtype=dt), torch.randn(1536, 4096, dtype=dt)
        gflops[name] = round(2 * 256 * 1536 * 4096 / (_best_ms(lambda: a @ b) * 1e-3) / 1e9, 1)
    gbps = {}
    lin = nn.Linear(1536, 4096, bias=False)
    with torch.inference_mode():
        for m in methods:
            layer, x = _method_linear(m, lin)
            if layer is not None:
                gbps[m] = round(lin.weight.numel() * _method(m).bytes_per_weight
                                / (_best_ms(lambda: layer(x), repeats=20) * 1e-3) / 1e9, 2)
    layers, base = {}, []
    for t in teachers:
        ref = AutoModelForCausalLM.from_config(t.mini_config(3)).eval()
        for m in methods:
            model = _compress_in_memory(copy.deepcopy(ref), m)
            if model is None:
                continue
            times = {}
            for n in (3, 1):
                model.model.layers = model.model.layers[:n]
                model.config.num_hidden_layers = n
                times[n] = _time_forward(model)
            layers[f"{t.alias}/{m}"] = {k: round(max(0.0, (times[3][k] - times[1][k]) / 2), 3)
                                        for k in ("decode_ms", "prefill_ms")}
            base.append(max(0.0, times[1]["decode_ms"] - layers[f"{t.alias}/{m}"]["decode_ms"]))
            del model
        del ref
    return SpeedProbe("cpu", gflops, gbps, layers, round(min(base), 3) if base else 0.0,
                      round(time.perf_counter() - t_start, 1))


def _method(name: str) -> MethodShape:
    return next(m for m in METHODS if m.name == name)


def _method_linear(method: str, lin):
    """``(layer, input)``: ``lin`` as ``method`` stores it, and a one-row input; ``(None, None)`` if unsupported."""
    import copy

    import torch

    from pocketpilot.runtime.qlinear import Int8Linear

    x = torch.randn(1, lin.in_features)
    if method == "none":
        return lin, x
    if method == "bf16":
        return copy.deepcopy(lin).to(torch.bfloat16), x.to(torch.bfloat16)
    if method == "int8":
        return Int8Linear.from_linear(lin), x.to(torch.bfloat16)
    if method in ("bnb-int8", "bnb-nf4"):
        layer = _bnb_linear(method, lin)
        return (layer, x.to(torch.bfloat16) if method == "bnb-nf4" else x) if layer is not None else (None, None)
    return None, None


def _bnb_linear(method: str, lin):
    """A bitsandbytes copy of ``lin`` on CPU, or ``None`` if bitsandbytes cannot run it here."""
    try:
        import bitsandbytes as bnb
        import torch

        if method == "bnb-int8":
            layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                        has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
        if lin.bias is not None:
            layer.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        return layer.to("cpu")
    except Exception:  # noqa: BLE001 - a backend that cannot run here is simply not timed
        return None


def _compress_in_memory(model, method: str):
    """``model`` (float32) compressed in place with ``method`` for timing, or ``None`` if unsupported."""
    import torch
    from torch import nn

    from pocketpilot.compression.quantize import quantize_int8_modules
    from pocketpilot.runtime.qlinear import get_submodule_parent

    if method == "none":
        return model
    if method == "bf16":
        return model.to(torch.bfloat16)
    if method == "int8":
        quantize_int8_modules(model)
        return model
    for path, mod in list(model.model.layers.named_modules()):
        if isinstance(mod, nn.Linear):
            new = _bnb_linear(method, mod)
            if new is None:
                return None
            parent, name = get_submodule_parent(model.model.layers, path)
            setattr(parent, name, new)
    return model.to(torch.bfloat16) if method == "bnb-nf4" else model


def _time_forward(model) -> dict[str, float]:
    """``{"decode_ms", "prefill_ms"}``: one decode step after 512 cached tokens; a 128-token prefill (ms)."""
    import torch

    ids = torch.randint(0, 256, (1, 512))
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values

        def step():
            model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)  # drop the token just added (transformers 5 takes a negative count)

        decode = _best_ms(step, repeats=8)
        prefill = _best_ms(lambda: model(input_ids=ids[:, :128], use_cache=True, logits_to_keep=1), repeats=2)
    return {"decode_ms": decode, "prefill_ms": prefill}


def predict(teacher: TeacherShape, method: MethodShape, speed: SpeedProbe) -> dict:
    """Predicted one-line completion latency and memory of ``teacher`` compressed with ``method``.

    decode = base + layers * measured layer decode + LM head (``vocab * hidden`` weights at the
    method's measured one-row bandwidth); prefill (:data:`PROMPT_TOKENS` tokens) = layers *
    measured 128-token layer prefill * ``PROMPT_TOKENS / 128`` + one head row; line = prefill +
    :data:`LINE_TOKENS` decode steps.

    Returns:
        ``{"prefill_ms", "decode_ms_per_token", "line_ms", "weights_bytes", "serve_bytes", "build_bytes"}``
        (ms; bytes: weights on disk, resident memory while serving, peak memory while compressing, when
        the teacher is dequantized to float32 and copied once). Latencies are ``None`` when the
        method could not be timed here.
    """
    layer = speed.layers.get(f"{teacher.alias}/{method.name}")
    gbps = speed.weight_gbps.get(method.name)
    weights = int(teacher.params * method.bytes_per_weight)
    out = {"prefill_ms": None, "decode_ms_per_token": None, "line_ms": None, "weights_bytes": weights,
           "serve_bytes": weights + 400_000_000,  # runtime, tokenizer, KV caches (kvCacheMb 256)
           "build_bytes": int(teacher.params * 4 * 2.2) + 300_000_000}
    if layer and gbps:
        head = teacher.vocab * teacher.hidden * method.bytes_per_weight / (gbps * 1e9) * 1e3
        decode = speed.base_decode_ms + teacher.layers * layer["decode_ms"] + head
        prefill = teacher.layers * layer["prefill_ms"] * PROMPT_TOKENS / 128 + head
        out.update(prefill_ms=round(prefill, 1), decode_ms_per_token=round(decode, 2),
                   line_ms=round(prefill + LINE_TOKENS * decode, 1))
    return out


@dataclass
class Decision:
    """The chooser's pick and its reasons.

    Attributes:
        teacher, method: the recipe (``compress --teacher TEACHER --method METHOD``).
        device: where it runs (``"cpu"`` or ``"cuda"``).
        budget_ms: the latency budget (one-line completion p50, ms).
        meets_budget: the predicted latency is within the budget.
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

    def to_json(self) -> dict:
        """JSON-able dict (bytes, ms)."""
        return asdict(self)


def choose_recipe(profile: HardwareProfile, speed: SpeedProbe, budget_ms: float = DEFAULT_BUDGET_MS,
                  teachers: tuple[TeacherShape, ...] = TEACHERS,
                  methods: tuple[MethodShape, ...] = METHODS) -> Decision:
    """Pick the best teacher and method for this machine.

    Rules, in order: a candidate must fit in memory (compressing: ``build_bytes``, serving:
    ``serve_bytes``, both within :data:`RAM_SHARE` of available RAM, or within 90% of the first
    GPU's memory for a CUDA recipe) and have its packages installed; among those within the
    latency budget, the best teacher (highest measured ES) wins, then the method with no
    measured quality loss (tier 0), then the fastest. If none is within the budget, the fastest
    candidate that fits wins and the decision says the budget is not met.

    With CUDA the recipe runs the model on the GPU in bfloat16 (``bf16``), or NF4 when bf16
    does not fit in GPU memory; the CPU kernels are not considered.

    Raises:
        PocketPilotError: nothing fits in memory (the message says how much is needed).
    """
    if budget_ms <= 0:
        raise PocketPilotError(f"latency budget must be positive, got {budget_ms} ms")
    rows = []
    gpu = profile.cuda[0] if profile.cuda else None
    for t in teachers:
        for m in methods:
            row = {"teacher": t.alias, "method": m.name, "quality": t.quality, "tier": m.tier,
                   "device": "cuda" if gpu else "cpu", **predict(t, m, speed)}
            if m.needs == "bitsandbytes" and not profile.bitsandbytes:
                row["rejected"] = "bitsandbytes not installed (pip install bitsandbytes)"
            elif gpu and m.name not in ("bf16", "bnb-nf4"):
                row["rejected"] = "on a GPU only bf16 and NF4 are considered"
            elif row["build_bytes"] > RAM_SHARE * profile.ram_available_bytes:
                row["rejected"] = (f"compressing needs about {row['build_bytes'] / 1e9:.1f} GB of RAM, "
                                   f"{profile.ram_available_bytes / 1e9:.1f} GB available")
            elif gpu and row["serve_bytes"] > 0.9 * gpu["memory_bytes"]:
                row["rejected"] = f"needs {row['serve_bytes'] / 1e9:.1f} GB of GPU memory, {gpu['memory_bytes'] / 1e9:.1f} GB there"
            elif not gpu and row["serve_bytes"] > RAM_SHARE * profile.ram_available_bytes:
                row["rejected"] = f"serving needs about {row['serve_bytes'] / 1e9:.1f} GB of RAM"
            elif row["line_ms"] is None:
                row["rejected"] = f"the {m.name} kernel could not be timed on this machine"
            rows.append(row)
    fits = [r for r in rows if "rejected" not in r]
    if not fits:
        need = min(r["build_bytes"] for r in rows)
        raise PocketPilotError(f"no recipe fits in {profile.ram_available_bytes / 1e9:.1f} GB of available RAM "
                               f"(the smallest needs {need / 1e9:.1f} GB to compress); close other programs and retry")
    within = [r for r in fits if r["line_ms"] <= budget_ms]
    if within:
        best = min(within, key=lambda r: (-r["quality"], r["tier"], r["line_ms"]))
        others = [r for r in within if r is not best]
        reason = (f"{best['teacher']} {best['method']}: predicted one-line p50 {best['line_ms']:.0f} ms within "
                  f"{budget_ms:.0f} ms; the best teacher that fits"
                  + (f" (also within budget: {', '.join(r['teacher'] + ' ' + r['method'] for r in others[:3])})" if others else ""))
    else:
        best = min(fits, key=lambda r: (r["line_ms"], r["tier"]))
        reason = (f"no recipe is predicted within {budget_ms:.0f} ms here; {best['teacher']} {best['method']} is the "
                  f"fastest that fits ({best['line_ms']:.0f} ms predicted, cold 512-token prompt; KV-cache reuse "
                  f"makes most editor requests far faster)")
    for r in rows:
        r["chosen"] = r is best
    return Decision(best["teacher"], best["method"], best["device"], budget_ms, bool(within), reason, rows)


def front_pick(profile: HardwareProfile, budget_ms: float, teachers: tuple[TeacherShape, ...] = TEACHERS):
    """The best point of the stored search fronts (``pocketpilot search``) of ``teachers`` for this budget.

    Only searches measured on this machine (same CPU model and cores) count; a point must fit in
    memory when served. Among the teachers' picks
    (:func:`pocketpilot.compression.search.pick_for_budget`), one within the budget beats one that
    is not, then the higher measured ES wins.

    Returns:
        ``(search state, Pick)`` or ``None`` when no usable search is stored.
    """
    from pocketpilot.compression.search import SERVE_OVERHEAD_BYTES, load_search, pick_for_budget

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
                              progress=None, teachers: tuple[TeacherShape, ...] = TEACHERS):
    """Probe this machine, choose a recipe, compress, measure the real latency, and make it active.

    When ``pocketpilot search`` has stored a measured front for a teacher on this machine, its
    points are candidates too (:func:`front_pick`): the front's pick is built (or reused) and
    activated when it meets the budget, or when no plain recipe does.

    The decision (profile, speed probe, every candidate's prediction, the reason) and the
    measured one-line p50 on ``eval_tasks`` stdlib tasks are recorded in the artifact's
    manifest under ``machine_decision``. ``teachers`` (default: the packaged ones) may name any
    teacher spec as ``alias``, e.g. a local folder.

    Returns:
        ``(CompressResult, Decision)``.

    Raises:
        PocketPilotError: nothing fits in memory; and the errors of :func:`pocketpilot.compression.compress`.
    """
    from pocketpilot.compression.api import compress
    from pocketpilot.compression.artifacts import MANIFEST, write_json

    progress = progress or (lambda msg, frac: None)
    progress("probing this machine (cores, ISA, memory, kernel speeds)", 0.0)
    profile = probe_hardware()
    speed = probe_speed(teachers)
    decision = choose_recipe(profile, speed, budget_ms, teachers)
    front = front_pick(profile, budget_ms, teachers)
    if front is not None and (front[1].meets_budget or not decision.meets_budget):
        from pocketpilot.compression.search import materialize

        state, pick = front
        decision = Decision(state["teacher"], f"search:{pick.key}", "cpu", budget_ms, pick.meets_budget,
                            f"from the measured search front of {state['teacher']} ({pick.candidates} points): "
                            f"{pick.reason}", decision.candidates)
        progress(f"chose {pick.key}: {decision.reason}", 0.05)
        result = materialize(state, pick, progress)
        predicted = pick.measured["line_ms"]
    else:
        progress(f"chose {decision.teacher} {decision.method}: {decision.reason}", 0.05)
        result = compress(decision.teacher, decision.method, force=force, eval_tasks=eval_tasks, progress=progress)
        predicted = None
    manifest = result.manifest
    measured = (manifest.get("metrics") or {}).get("artifact", {}).get("latency_ms_p50")
    if measured is None and eval_tasks > 0:  # a cached artifact built without measurements
        from pocketpilot.compression.api import load_artifact
        from pocketpilot.evaluation.line_completion import evaluate_lines
        from pocketpilot.evaluation.tasks import make_tasks
        from pocketpilot.runtime import CompletionEngine

        progress(f"measuring {result.artifact_id} on {eval_tasks} line-completion tasks", 0.9)
        measured = evaluate_lines(CompletionEngine(load_artifact(result.artifact_id)),
                                  make_tasks(n=eval_tasks, seed=0))["latency_ms_p50"]
    if predicted is None:
        predicted = next(r for r in decision.candidates if r["chosen"])["line_ms"]
    manifest["machine_decision"] = {
        **decision.to_json(), "profile": asdict(profile), "speed_probe": asdict(speed),
        "source": "search front" if decision.method.startswith("search:") else "recipe chooser",
        "predicted_line_ms": predicted, "measured_line_ms_p50": measured,
        "measured_meets_budget": None if measured is None else measured <= budget_ms,
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(result.folder / MANIFEST, manifest)
    return result, decision
