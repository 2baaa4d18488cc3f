"""What the completion engine runs a model through: token ids in, next-token logits out, a KV cache kept.

Two engines implement it: :class:`TorchBackend` (a ``transformers`` causal LM, the float, int8 and
int4 artifacts) and :class:`pocketpilot.runtime.llamacpp.LlamaCppModel` (a GGUF served by
llama.cpp). :class:`pocketpilot.runtime.CompletionEngine` and the speed measurement only use
:class:`Backend`'s members, so prompt building, KV reuse, token healing, prompt-lookup
drafts, cancellation and post-processing are the same for both.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch

from pocketpilot.runtime.kvcache import cache_keyword, crop_to, new_cache, returned_cache


class Backend(Protocol):
    """A model that extends a KV cache by token ids and returns the logits of the last positions.

    A cache must offer ``get_seq_length()`` and ``crop(-n)`` (drop the last ``n`` tokens), as
    transformers' caches do.
    """

    #: the engine's name as manifests record it: ``"torch"`` or ``"llama.cpp"``
    engine: str

    def new_cache(self) -> Any:
        """An empty cache for one sequence."""

    def forward(self, ids: list[int], cache: Any, keep: int) -> tuple[torch.Tensor, Any]:
        """Run ``ids`` (tokens) after what ``cache`` holds.

        Returns:
            ``(logits, cache)``: float32 logits ``[keep, vocab]`` of the last ``keep`` positions
            of ``ids``, and the cache, now holding ``ids`` too.
        """

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` CPU threads from the next forward pass on."""

    @property
    def can_shift(self) -> bool:
        """True when :meth:`splice` works for this model (rotary position embeddings it can re-rotate)."""

    def splice(self, cache: Any, keep: int, middle: list[int], src: int, length: int) -> Any:
        """Keep the first ``keep`` cached tokens, run ``middle`` after them, then move the ``length``
        cached tokens that were at positions ``src``... to follow ``middle``.

        The moved keys are re-rotated by the position delta ``keep + len(middle) - src`` (RoPE
        rotations compose, so a key computed at position p becomes the key at p + delta); their
        keys and values still reflect the old context before them, which makes this an
        approximation beyond the first layer (llama.cpp's ``--cache-reuse`` makes the same one).
        Returns the cache, holding ``keep + len(middle) + length`` tokens.

        Raises:
            NotImplementedError: :attr:`can_shift` is False.
        """


class TorchBackend:
    """:class:`Backend` over a ``transformers`` causal LM (CPU, or CUDA for a GPU recipe)."""

    engine = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._cache_kw = cache_keyword(model)  # "cache", or "past_key_values" before transformers renamed it

    def new_cache(self) -> Any:
        """An empty :func:`pocketpilot.runtime.kvcache.new_cache`."""
        return new_cache()

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: Any, keep: int) -> tuple[torch.Tensor, Any]:
        """See :meth:`Backend.forward`; the cache goes under the keyword the installed transformers expects."""
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=keep,
                         **{self._cache_kw: cache})
        return out.logits[0], returned_cache(out)

    def set_threads(self, threads: int) -> None:
        """``torch.set_num_threads`` (intra-op threads of this process), only when it changes."""
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    @functools.cached_property
    def _rotary(self) -> Any:
        """The model's rotary embedding module when keys can be re-rotated exactly, else ``None``.

        Needs plain RoPE (``rope_type`` default, no attention scaling) on every layer, full
        attention only (no sliding window), and a rotation as wide as the head.
        """
        cfg = self.model.config
        rotary = getattr(getattr(self.model, "model", None), "rotary_emb", None)
        if rotary is None or float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
            return None
        if getattr(rotary, "rope_type", "default") != "default" or getattr(cfg, "use_sliding_window", False):
            return None
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return None
        return rotary

    @property
    def can_shift(self) -> bool:
        """See :meth:`Backend.can_shift`."""
        return self._rotary is not None

    @torch.inference_mode()
    def splice(self, cache: Any, keep: int, middle: list[int], src: int, length: int) -> Any:
        """See :meth:`Backend.splice`: keys ``[1, kv_heads, tokens, head_dim]`` are rotated by
        ``k cos(delta) + rotate_half(k) sin(delta)`` with the model's own rotary embedding.

        Raises:
            NotImplementedError: :attr:`can_shift` is False.
        """
        if self._rotary is None:
            raise NotImplementedError(f"{type(self.model).__name__}: cached keys cannot be re-rotated")
        moved = [(layer.keys[..., src:src + length, :].clone(), layer.values[..., src:src + length, :].clone())
                 for layer in cache.layers]
        crop_to(cache, keep)
        if middle:
            _, cache = self.forward(middle, cache, keep=1)
        delta = keep + len(middle) - src
        k0 = moved[0][0]
        cos, sin = self._rotary(k0, torch.tensor([[delta]], device=k0.device))  # [1, 1, head_dim]
        cos, sin = cos[:, None].to(k0.dtype), sin[:, None].to(k0.dtype)
        for layer, (k, v) in zip(cache.layers, moved):
            half = k.shape[-1] // 2
            rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
            layer.update(k * cos + rotated * sin, v)
        return cache
