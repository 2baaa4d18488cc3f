"""A KV cache whose per-layer storage grows by doubling, so appending a token copies nothing.

transformers' ``DynamicLayer`` appends with ``torch.cat``, copying the whole layer cache at
every decode step (7.5% of a SmolLM2 int8 decode step here, growing with the prompt).
:class:`GrowingLayer` keeps keys and values in a buffer with spare room and hands out views;
``crop`` only moves the end. Falls back to transformers' own ``DynamicCache`` when its
internals differ from what this relies on (``Cache.layer_class_to_replicate``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: smallest buffer, in tokens
MIN_CAPACITY = 256


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` with amortized O(1) appends.

    Keys and values ``[batch, kv_heads, tokens, head_dim]`` are views of buffers with room for
    ``capacity >= tokens``; a full buffer is reallocated at twice the size.
    """

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self._len + key_states.shape[-2]
        if self._kbuf is None or need > self._kbuf.shape[-2]:
            cap = max(need, MIN_CAPACITY, 2 * (0 if self._kbuf is None else self._kbuf.shape[-2]))
            kbuf = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
            vbuf = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
            if self._len:
                kbuf[..., : self._len, :] = self._kbuf[..., : self._len, :]
                vbuf[..., : self._len, :] = self._vbuf[..., : self._len, :]
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[..., self._len : need, :] = key_states
        self._vbuf[..., self._len : need, :] = value_states
        self._len = need
        self.keys = self._kbuf[..., :need, :]
        self.values = self._vbuf[..., :need, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Remove ``-tokens_to_remove`` tokens from the end (a negative count, as transformers expects)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(0, self._len + tokens_to_remove)
        self.keys = self._kbuf[..., : self._len, :]
        self.values = self._vbuf[..., : self._len, :]

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers (bytes), spare room included."""
        if not self.is_initialized or self._kbuf is None:
            return 0
        return self._kbuf.nbytes + self._vbuf.nbytes


def new_cache() -> DynamicCache:
    """An empty cache for one sequence, built from :class:`GrowingLayer` where supported."""
    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer and not cache.layers:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


def cache_bytes(cache) -> int | None:
    """Memory held by a cache made by :func:`new_cache` (bytes), or ``None`` if unknown."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(layer, GrowingLayer) for layer in layers):
        return None
    return sum(layer.nbytes for layer in layers)


def crop_to(cache, tokens: int) -> None:
    """Keep the keys/values of the first ``tokens`` tokens of ``cache`` (a no-op if it holds no more).

    Works for any transformers ``Cache`` with ``get_seq_length`` and ``crop``.
    """
    extra = cache.get_seq_length() - tokens
    if extra > 0:
        cache.crop(-extra)  # a negative count removes that many tokens (transformers 4.x and 5.x)


@functools.cache
def _forward_takes_cache(model_class: type) -> bool:
    return "cache" in inspect.signature(model_class.forward).parameters


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward keyword that takes a KV cache for ``model``.

    Newer transformers 5.x name it ``cache`` and warn ("`past_key_values` is deprecated ...
    Use `cache` instead") when given ``past_key_values``; older releases only know
    ``past_key_values``. Read from the signature of the model class's ``forward`` (cached per class).
    """
    return "cache" if _forward_takes_cache(type(model)) else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``None`` if none), read without the deprecated name.

    Args:
        out: a transformers ``ModelOutput``; its field is ``cache`` in newer transformers 5.x
            (reading ``past_key_values`` there warns), ``past_key_values`` before.
    """
    return out.get("cache" if _output_has_cache(type(out)) else "past_key_values")


@functools.cache
def _output_has_cache(output_class: type) -> bool:
    return dataclasses.is_dataclass(output_class) and "cache" in {f.name for f in dataclasses.fields(output_class)}
