"""What the completion engine runs a model through: token ids in, next-token logits out, a KV cache kept.

Two engines implement it: :class:`TorchBackend` (a ``transformers`` causal LM, the float, int8 and
int4 artifacts) and :class:`pocketpilot.runtime.llamacpp.LlamaCppModel` (a GGUF served by
llama.cpp). :class:`pocketpilot.runtime.CompletionEngine` and the speed measurement only use
:class:`Backend`'s three members, so prompt building, KV reuse, token healing, prompt-lookup
drafts, cancellation and post-processing are the same for both.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pocketpilot.runtime.kvcache import cache_keyword, new_cache, returned_cache


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
