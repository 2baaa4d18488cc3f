"""Quantization methods: one module per method, each defining ONE :class:`QuantMethod` named ``METHOD``.

Every fact about a method lives on its object (see :class:`QuantMethod`): the registry
(:data:`METHODS`, :func:`get_method`), ``compress``, the recipe chooser, the speed probe, the
search space and the size / latency models all read it. Adding a method is adding one module
to this package: the registry imports every module here whose name does not start with ``_``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pocketpilot.errors import MissingDependencyError, UnknownMethodError

#: ``apply(model, out_dir, calibration) -> recipe details``; see :attr:`QuantMethod.apply`
Apply = Callable[[Any, Path, "list | None"], dict]


@dataclass(frozen=True)
class QuantMethod:
    """Everything PocketPilot knows about one quantization method.

    Attributes:
        name: registry key (``--method NAME``).
        description: one line for ``--help`` and the manifest.
        body_bytes_per_weight: bytes stored per weight of the decoder layers' linears (per-row
            scales included, rounded; checked against real artifacts by a test).
        head_bytes_per_weight: bytes stored per weight of the token embedding and LM head.
        compute_dtype: dtype of the prefill matmuls: ``"float32"`` or ``"bfloat16"``.
        quality_tier: expected quality loss, for the chooser: 0 = none measured vs fp32, 1 = some.
        apply: ``apply(model, out_dir, calibration) -> dict``: compress a float32 ``transformers``
            causal LM and write its weights (and ``config.json``) into ``out_dir``;
            ``calibration`` is a list of token-id tensors ``[1, T]`` or ``None``. Returns the
            JSON-able recipe details recorded in the manifest.
        in_memory: ``in_memory(model) -> model or None``: the model compressed in place for the
            speed probe (``None`` where the kernel cannot run here).
        probe_linear: ``probe_linear(linear) -> (layer, x) or None``: one ``nn.Linear`` as this
            method stores it and a one-row input ``[1, in_features]``, for the bandwidth probe.
        body_kernel, head_kernel: the method whose measured kernel the decoder layers / the LM
            head run with (the probe times each kernel once); default: this method.
        requires: optional packages, as ``(module, pip requirement)``.
        gguf_type: for a method served by llama.cpp, the GGUF file type it writes (``"Q8_0"``,
            ``"Q4_K_M"``: a ``LLAMA_FTYPE_MOSTLY_*`` name); ``None`` for the torch engine. Such a
            method's artifact is written from the teacher's GGUF by llama.cpp's quantizer (see
            :mod:`._gguf`), not by :attr:`apply`.
        chooser: offered by ``compress --for-this-machine``.
        search: offered by ``pocketpilot search``.
        gpu: considered on a CUDA machine.
        rank: position in listings (lower first).
    """

    name: str
    description: str
    body_bytes_per_weight: float
    head_bytes_per_weight: float
    compute_dtype: str
    quality_tier: int
    apply: Apply
    in_memory: Callable[[Any], Any]
    probe_linear: Callable[[Any], "tuple | None"]
    body_kernel: str = ""
    head_kernel: str = ""
    requires: tuple[tuple[str, str], ...] = ()
    gguf_type: str | None = None
    chooser: bool = True
    search: bool = True
    gpu: bool = False
    rank: int = 50

    def __post_init__(self):
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"method {self.name!r}: compute_dtype must be float32 or bfloat16")
        if min(self.body_bytes_per_weight, self.head_bytes_per_weight) <= 0:
            raise ValueError(f"method {self.name!r}: bytes per weight must be positive")
        object.__setattr__(self, "body_kernel", self.body_kernel or self.name)
        object.__setattr__(self, "head_kernel", self.head_kernel or self.name)

    @property
    def engine(self) -> str:
        """What serves the artifact: ``"torch"``, or ``"llama.cpp"`` (a GGUF file; :mod:`pocketpilot.runtime.llamacpp`)."""
        return "torch" if self.gguf_type is None else "llama.cpp"

    def missing(self) -> list[str]:
        """pip requirements of :attr:`requires` that are not installed."""
        return [req for mod, req in self.requires if importlib.util.find_spec(mod) is None]

    def available(self) -> bool:
        """Every package the method needs is installed."""
        return not self.missing()

    def check_available(self) -> None:
        """Raise :class:`MissingDependencyError` (message: the pip command) if a required package is missing."""
        missing = self.missing()
        if missing:
            raise MissingDependencyError(
                f"method {self.name!r} needs {', '.join(missing)}; install it with: pip install {' '.join(missing)}"
            )

    def weight_bytes(self, body_params: int, head_params: int) -> int:
        """Predicted weight bytes on disk: ``body_params`` decoder-layer weights and ``head_params``
        embedding / LM-head weights (count a tied head once)."""
        return int(body_params * self.body_bytes_per_weight + head_params * self.head_bytes_per_weight)

    def head_ms(self, head_params: int, weight_gbps: dict[str, float]) -> float | None:
        """One LM-head matmul (``head_params`` weights) at the measured bandwidth of :attr:`head_kernel`
        (``weight_gbps``: kernel -> GB/s, as :func:`pocketpilot.compression.hardware.probe_speed`
        reports), in ms; ``None`` when that kernel was not timed."""
        gbps = weight_gbps.get(self.head_kernel)
        return head_params * self.head_bytes_per_weight / (gbps * 1e9) * 1e3 if gbps else None


def lazy_impl(module: str, function: str, **bound) -> Callable:
    """``function`` of ``pocketpilot.compression.methods.<module>``, imported on first call (the
    implementations import torch; the registry must not), with ``bound`` keyword arguments added."""
    def call(*args, **kwargs):
        impl = getattr(importlib.import_module(f"{__name__}.{module}"), function)  # lazy: torch
        return impl(*args, **bound, **kwargs)

    call.__name__ = call.__qualname__ = f"{module}.{function}"
    return call


def _discover() -> dict[str, QuantMethod]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if not isinstance(method, QuantMethod):
            raise TypeError(f"{__name__}.{info.name} must define METHOD = QuantMethod(...)")
        found.append(method)
    return {m.name: m for m in sorted(found, key=lambda m: (m.rank, m.name))}


#: every registered method, by name, in listing order
METHODS: dict[str, QuantMethod] = _discover()


#: the methods ``compress --for-this-machine`` considers (see :attr:`QuantMethod.chooser`)
CHOOSER_METHODS: tuple[QuantMethod, ...] = tuple(m for m in METHODS.values() if m.chooser)


def get_method(name: str, check: bool = True) -> QuantMethod:
    """Look up a method by name (and, with ``check``, that its optional packages are installed).

    Raises:
        UnknownMethodError: ``name`` is not registered; the message lists the supported ones.
        MissingDependencyError: ``check`` and a package the method needs is missing (message: the pip command).
    """
    try:
        method = METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; supported: {', '.join(METHODS)}") from None
    if check:
        method.check_available()
    return method
