"""Shared by the float methods: cast and save a whole model."""

from __future__ import annotations

import copy
from pathlib import Path


def save_float(model, out: Path, dtype) -> None:
    """Cast ``model`` to ``dtype`` in place and save it as safetensors with its config into ``out``."""
    model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)


def float_linear(lin, dtype):
    """``(copy of lin in dtype, one-row input [1, in_features] in dtype)`` for the bandwidth probe."""
    import torch  # lazy: torch (methods are listed by the torch-free CLI help)

    return copy.deepcopy(lin).to(dtype), torch.randn(1, lin.in_features, dtype=dtype)
