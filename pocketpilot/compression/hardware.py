"""Hardware probe: what this machine has, and how fast each method's kernels run on it.

:func:`probe_hardware` reads cores, ISA flags, RAM, free disk, CUDA and MPS (no benchmark).
:func:`probe_speed` times the kernels each method's inference runs on (a few seconds): matmul
throughput (GFLOP/s) for prefill and weight streaming (GB/s) for one-token decode, per
quantization method, on mini models of each teacher's exact layer shape.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pocketpilot.compression.methods import CHOOSER_METHODS, get_method
from pocketpilot.compression.shapes import MINI_VOCAB, TEACHERS, TeacherShape
from pocketpilot.runtime.kvcache import cache_keyword, returned_cache
from pocketpilot.store import home

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

    def has_package(self, module: str) -> bool:
        """The optional Python package ``module`` is installed (bitsandbytes as probed, others looked up now)."""
        return self.bitsandbytes if module == "bitsandbytes" else importlib.util.find_spec(module) is not None


def probe_hardware() -> HardwareProfile:
    """Read cores, ISA flags, RAM, free disk, CUDA devices and MPS of this machine (no benchmark)."""
    import torch  # lazy: torch

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


def probe_speed(teachers: tuple[TeacherShape, ...] = TEACHERS, methods: tuple[str, ...] | None = None) -> SpeedProbe:
    """Measure, on this CPU, what each teacher's layers cost under each method (about 30 s; a
    minute or two more with the llama.cpp engine installed).

    For each teacher, a randomly initialised model of the teacher's exact layer shape (1 and 3
    layers, tiny vocabulary) is compressed in memory with each method (PocketPilot's int8, bf16,
    float32, and the bitsandbytes layers when installed) and timed: one decode step with 512
    cached tokens, and a 128-token prefill. The difference between 3 and 1 layers is the cost of
    one layer. The LM head is timed as a one-row matmul per method. For the llama.cpp methods the
    same mini models are written as GGUF, quantized by llama.cpp and timed in llama.cpp; their head
    rate is their layers' measured weight rate. No download is needed.

    Args:
        teachers: teacher shapes to time.
        methods: method names to time (default: the chooser's methods whose packages are installed);
            each is timed with its own :attr:`QuantMethod.in_memory` and :attr:`QuantMethod.probe_linear`.

    Returns:
        :class:`SpeedProbe`.
    """
    import torch  # lazy: torch (doctor and the chooser's tests read the profile classes torch-free)
    from torch import nn
    from transformers import AutoModelForCausalLM

    from pocketpilot.runtime.kernels import time_ms  # lazy: torch

    t_start = time.perf_counter()
    methods = methods or tuple(m.name for m in CHOOSER_METHODS if m.available())
    torch.manual_seed(0)
    gflops = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(256, 1536, dtype=dt), torch.randn(1536, 4096, dtype=dt)
        gflops[name] = round(2 * 256 * 1536 * 4096 / (time_ms(lambda: a @ b, repeats=5) * 1e-3) / 1e9, 1)
    gbps = {}
    lin = nn.Linear(1536, 4096, bias=False)
    with torch.inference_mode():
        for m in methods:
            probe = get_method(m, check=False).probe_linear(lin)
            if probe is not None:
                layer, x = probe
                gbps[m] = round(lin.weight.numel() * get_method(m, check=False).body_bytes_per_weight
                                / (time_ms(lambda: layer(x), repeats=20) * 1e-3) / 1e9, 2)
    layers, base = {}, []
    exports = tempfile.TemporaryDirectory(prefix="pocketpilot-probe-")  # float32 GGUFs, shared by the GGUF types
    for t in teachers:
        ref = AutoModelForCausalLM.from_config(t.mini_config(3)).eval()
        for m in methods:
            method = get_method(m, check=False)
            if method.engine == "llama.cpp":
                timed = _llamacpp_layer(ref, t, method, Path(exports.name))
                if timed is not None:
                    layers[f"{t.alias}/{m}"], layer_gbps = timed
                    gbps.setdefault(m, layer_gbps)  # the largest teacher's layers (listed first) set the head's rate
                continue
            model = method.in_memory(copy.deepcopy(ref))
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
    exports.cleanup()
    return SpeedProbe("cpu", gflops, gbps, layers, round(min(base), 3) if base else 0.0,
                      round(time.perf_counter() - t_start, 1))


def _llamacpp_layer(ref, teacher: TeacherShape, method, exports: Path) -> tuple[dict[str, float], float] | None:
    """One decoder layer of ``teacher``'s shape in llama.cpp with ``method``'s GGUF type.

    The random mini model ``ref`` (3 layers) and its 1-layer cut are written as float32 GGUF
    (once per teacher, into ``exports``), quantized by llama.cpp's quantizer and timed as
    :func:`_time_forward` times torch models; one layer is the difference over two layers.

    Returns:
        ``(layer {"decode_ms", "prefill_ms"}, weight GB/s of the layer's matmuls in a decode step)``,
        or ``None`` when llama-cpp-python is missing.
    """
    from pocketpilot.compression.gguf_export import export_gguf  # lazy: gguf writer
    from pocketpilot.compression.methods._gguf import file_type
    from pocketpilot.errors import MissingDependencyError
    from pocketpilot.runtime.llamacpp import LlamaContext, quantize_gguf

    times = {}
    try:
        for n in (3, 1):
            f32 = exports / f"{teacher.alias}-{n}.f32.gguf"
            if not f32.is_file():
                model = copy.deepcopy(ref)
                model.model.layers = model.model.layers[:n]
                model.config.num_hidden_layers = n
                export_gguf(model, f32)
            q = exports / f"{teacher.alias}-{n}.{method.gguf_type}.gguf"
            quantize_gguf(f32, q, file_type(method.gguf_type))
            times[n] = _time_llama_context(LlamaContext(q, n_ctx=1024), MINI_VOCAB)
            q.unlink()
    except MissingDependencyError:
        return None
    layer = {k: round(max(0.0, (times[3][k] - times[1][k]) / 2), 3) for k in ("decode_ms", "prefill_ms")}
    layer_bytes = teacher.body_params / teacher.layers * method.body_bytes_per_weight
    gbps = round(layer_bytes / (layer["decode_ms"] * 1e-3) / 1e9, 2) if layer["decode_ms"] else 0.0
    return layer, gbps


def _time_llama_context(ctx, vocab: int) -> dict[str, float]:
    """``{"decode_ms", "prefill_ms"}`` of a llama.cpp context, as :func:`_time_forward` measures torch."""
    import torch  # lazy: torch

    from pocketpilot.runtime.kernels import time_ms

    ids = torch.randint(0, vocab, (512,)).tolist()
    ctx.decode(ids, 0, 1)

    def step():
        ctx.decode(ids[:1], 512, 1)
        ctx.remove_from(512)

    def prefill():
        ctx.remove_from(0)
        ctx.decode(ids[:128], 0, 1)

    return {"decode_ms": time_ms(step, repeats=8), "prefill_ms": time_ms(prefill, repeats=2)}


def _time_forward(model) -> dict[str, float]:
    """``{"decode_ms", "prefill_ms"}``: one decode step after 512 cached tokens; a 128-token prefill (ms)."""
    import torch  # lazy: torch

    from pocketpilot.runtime.kernels import time_ms

    ids = torch.randint(0, MINI_VOCAB, (1, 512))
    cache_kw = cache_keyword(model)  # "cache" where transformers renamed it; "past_key_values" warns there
    with torch.inference_mode():
        cache = returned_cache(model(input_ids=ids, use_cache=True, logits_to_keep=1))

        def step():
            model(input_ids=ids[:, :1], use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            cache.crop(-1)  # drop the token just added (transformers 5 takes a negative count)

        decode = time_ms(step, repeats=8)
        prefill = time_ms(lambda: model(input_ids=ids[:, :128], use_cache=True, logits_to_keep=1), repeats=2)
    return {"decode_ms": decode, "prefill_ms": prefill}


