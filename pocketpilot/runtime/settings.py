"""Engine settings (no torch import, so the server can parse settings before loading a model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSettings:
    """Decoding and context settings.

    Attributes:
        max_new_tokens: decode at most this many tokens (tokens).
        prefix_tokens: keep at most this many tokens of text before the cursor (tokens).
        suffix_tokens: keep at most this many tokens of text after the cursor, FIM only (tokens).
        multiline: on a blank line after a block opener (``:`` in Python, ``{`` elsewhere), complete
            the whole block body; if False, always stop at the end of the current line.
        block_max_tokens: decode at most this many tokens for a block body (tokens).
        context_tokens: budget for snippets from other open documents placed before the prefix
            (tokens); 0 turns them off.
        kv_cache_mb: memory for the KV caches kept per document between requests (MB, 10^6 bytes);
            least recently used documents are dropped first; 0 turns KV-cache and typed-ahead reuse off.
        draft_tokens: prompt-lookup draft tokens verified per decode step (tokens); 0 turns
            speculative decoding off. Greedy output is the same either way.
    """

    max_new_tokens: int = 48
    prefix_tokens: int = 512
    suffix_tokens: int = 128
    multiline: bool = True
    block_max_tokens: int = 96
    context_tokens: int = 256
    kv_cache_mb: int = 256
    draft_tokens: int = 8

    def __post_init__(self) -> None:
        if self.draft_tokens < 0 or self.draft_tokens > 15:
            raise ValueError(f"draft_tokens must be in 0..15, got {self.draft_tokens}")
        if self.context_tokens < 0:
            raise ValueError(f"context_tokens must be >= 0, got {self.context_tokens}")
        for name in ("max_new_tokens", "prefix_tokens", "block_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_cache_mb < 0:
            raise ValueError(f"kv_cache_mb must be >= 0, got {self.kv_cache_mb}")
        if self.suffix_tokens < 0:
            raise ValueError(f"suffix_tokens must be >= 0, got {self.suffix_tokens}")
