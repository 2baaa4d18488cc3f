"""Prefill kernels chosen by measurement on this machine, not by a constant or an ISA guess.

A quantized linear can multiply a prefill chunk (many rows) in several ways, and which is
fastest depends on the CPU: on a Zen 4 core with AVX-512 BF16, dequantizing to bf16 and running
a dense bf16 matmul won; on a Zen 3 core with AVX2 only, torch's bf16 GEMM is 7-10x slower than
float32 and the same layer is fastest through float32 or through the int8 kernel itself. So
each quantized module family (``"int8"``, ``"int4"``) offers named candidate paths, and
:func:`choose` times them once per weight shape and thread count on random inputs of
:data:`PROBE_ROWS` rows, keeps the fastest, and remembers it in ``<home>/kernels.json``
(keyed by CPU model, torch version and thread count) so the next process starts without timing.

``POCKETPILOT_PREFILL_PATH=NAME`` forces one path where the family has it (for benchmarks that
compare paths side by side).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping

import torch

from pocketpilot.errors import PocketPilotError
from pocketpilot.store import home, write_json

log = logging.getLogger(__name__)

#: rows of the random input each candidate is timed on (one prefill chunk of the engine)
PROBE_ROWS = 128
#: timed runs per candidate after one warm-up; the best counts
PROBE_REPEATS = 2
#: environment variable that forces a path by name
FORCE_ENV = "POCKETPILOT_PREFILL_PATH"
#: file under the cache home that keeps measured choices across processes
CHOICES_FILE = "kernels.json"

_lock = threading.Lock()
_choices: dict[str, str] = {}
_loaded = False


def machine_key() -> str:
    """What a measured choice depends on besides the shape: CPU model, torch version, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|torch {torch.__version__}|{torch.backends.cpu.get_cpu_capability()}|{torch.get_num_threads()} threads"


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        data = json.loads((home() / CHOICES_FILE).read_text())
        if isinstance(data, dict):
            _choices.update({k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)})
    except (OSError, ValueError):
        pass  # absent or unreadable: measure again


def _save() -> None:
    try:
        home().mkdir(parents=True, exist_ok=True)
        write_json(home() / CHOICES_FILE, dict(sorted(_choices.items())))
    except (OSError, PocketPilotError) as exc:  # read-only or full cache: the choice still holds for this process
        log.debug("cannot save %s: %s", CHOICES_FILE, exc)


def time_ms(fn: Callable[[], object], repeats: int = PROBE_REPEATS) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up (ms)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def choose(family: str, shape: tuple[int, ...], candidates: Mapping[str, Callable[[], object]],
           timer: Callable[[Callable[[], object]], float] = time_ms, remember: bool = True) -> str:
    """The fastest of ``candidates`` for a ``family`` weight of ``shape`` on this machine.

    Args:
        family: the quantized module family (``"int8"``, ``"int4"``).
        shape: the weight's shape ``(out_features, in_features)``.
        candidates: path name -> a call running that path on a :data:`PROBE_ROWS`-row input.
        timer: ``timer(fn) -> ms`` (default :func:`time_ms`; tests pass their own).
        remember: keep the choice in ``<home>/kernels.json`` for later processes.

    Returns:
        The chosen path name: the one named by ``POCKETPILOT_PREFILL_PATH`` when it is a
        candidate, else a choice measured earlier for this machine key, else the fastest now.
    """
    forced = os.environ.get(FORCE_ENV)
    if forced in candidates:
        return forced
    key = f"{machine_key()}|{family}|{'x'.join(map(str, shape))}"
    with _lock:
        if remember:
            _load()
        known = _choices.get(key)
        if known in candidates:
            return known
        times = {name: timer(fn) for name, fn in candidates.items()}
        best = min(times, key=times.get)
        log.info("prefill path for %s %s: %s (%s ms for %d rows)", family, "x".join(map(str, shape)), best,
                 ", ".join(f"{n} {t:.1f}" for n, t in times.items()), PROBE_ROWS)
        _choices[key] = best
        if remember:
            _save()
        return best


def forget_choices() -> None:
    """Drop the choices held by this process (the file is re-read on the next :func:`choose`)."""
    global _loaded
    with _lock:
        _choices.clear()
        _loaded = False


def scratch(numel: int) -> torch.Tensor:
    """A float32 buffer of at least ``numel`` elements, reused by this thread's float32 prefill path."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = torch.empty(numel, dtype=torch.float32)
        _scratch.buf = buf
    return buf[:numel]


_scratch = threading.local()
