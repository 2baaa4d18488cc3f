"""What the completion engine keeps of each document between requests.

Per document (one ``cache_key``, e.g. its URI): the prompt tokens whose keys/values are in a
KV cache, where the prefix window starts, and the last request with its answer. With these,
the next request prefills only the tokens after the longest common prefix, the prefix window
stays put while it fits, and a user who types the start of the previous suggestion gets the
rest at once. Documents are dropped least recently used first beyond a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pocketpilot.runtime.kvcache import cache_bytes, crop_to


@dataclass
class DocState:
    """What the engine remembers of a document between requests.

    Attributes:
        ids: prompt (and decoded) tokens whose keys/values are in ``cache`` (tokens).
        cache: a transformers ``Cache`` holding them.
        window_start: character offset where the prefix window starts.
        prefix: text before the cursor of the last request.
        suffix: text after the cursor of the last request.
        text: the completion it got ("" when cancelled).
    """

    ids: list[int]
    cache: Any
    window_start: int
    prefix: str
    suffix: str
    text: str


class DocStates:
    """A least-recently-used map from document key to :class:`DocState`.

    Args:
        bytes_per_token: keys + values of one cached token (bytes); used to estimate a cache's
            memory when its buffers cannot be measured (see :func:`cache_bytes`).
    """

    def __init__(self, bytes_per_token: int) -> None:
        self.bytes_per_token = bytes_per_token
        self._docs: OrderedDict[str, DocState] = OrderedDict()

    def __getitem__(self, key: str) -> DocState:
        return self._docs[key]

    def __contains__(self, key: object) -> bool:
        return key in self._docs

    def __iter__(self) -> Iterator[str]:
        """Document keys, least recently used first."""
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, key: str) -> DocState | None:
        """The document's state without marking it used, or ``None``."""
        return self._docs.get(key)

    def typed_ahead(self, key: str, prefix: str, suffix: str) -> str | None:
        """The rest of the previous suggestion if the user has typed its start, else ``None``.

        A hit marks the document as most recently used.
        """
        state = self._docs.get(key)
        if state is None or not state.text or suffix != state.suffix or not prefix.startswith(state.prefix):
            return None
        typed = prefix[len(state.prefix) :]
        if not typed or not state.text.startswith(typed) or len(typed) >= len(state.text):
            return None
        self._docs.move_to_end(key)
        return state.text[len(typed) :]

    def take_reusable(self, key: str | None, ids: list[int]) -> tuple[Any, int]:
        """Take the document's cache for a prompt, cropped to the tokens it shares with ``ids``.

        The document's state is removed (put it back with :meth:`remember`). At least the last
        prompt token is left to recompute, so the caller gets its logits.

        Args:
            key: the document, or ``None`` for no reuse.
            ids: the new prompt's token ids.

        Returns:
            ``(cache, reused)``: the cropped cache (``None`` when nothing is reusable) and the
            count of leading prompt tokens whose keys/values it holds (tokens).
        """
        state = self._docs.pop(key, None) if key is not None else None
        if state is None:
            return None, 0
        reused = min(common_prefix(state.ids, ids), len(ids) - 1)
        if reused <= 0:
            return None, 0
        crop_to(state.cache, reused)
        return state.cache, reused

    def window_start(self, key: str, prefix: str, budget: int, tokenizer: Any) -> int:
        """Character offset where the document's prefix window starts, kept stable while it fits.

        A window that slid by one token per keystroke would defeat KV reuse, so the previous
        start is kept while ``prefix[start:]`` fits in ``budget`` tokens; a new start is put at a
        line start about three quarters of the budget back.

        Args:
            key: the document.
            prefix: text before the cursor.
            budget: prefix window size (tokens).
            tokenizer: a Hugging Face fast tokenizer (offsets mapping needed).
        """
        state = self._docs.get(key)
        if (state is not None and state.window_start <= len(prefix)
                and len(tokenizer.encode(prefix[state.window_start :], add_special_tokens=False)) <= budget):
            return state.window_start
        base = max(0, len(prefix) - budget * 6)
        tail = prefix[base:]
        offsets = tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= budget and base == 0:
            return 0
        pos = offsets[max(0, len(offsets) - budget * 3 // 4)][0]
        newline = tail.find("\n", pos)
        return base + (newline + 1 if 0 <= newline < len(tail) - 1 else pos)

    def remember(self, key: str, state: DocState, limit_bytes: int) -> None:
        """Keep a document's state; drop least recently used ones beyond ``limit_bytes`` (bytes)."""
        self._docs[key] = state
        self._docs.move_to_end(key)
        while len(self._docs) > 1 and self.nbytes > limit_bytes:
            self._docs.popitem(last=False)
        if self.nbytes > limit_bytes:  # even the newest alone is too big
            self._docs.clear()

    def forget(self, key: str) -> None:
        """Drop what is kept for a document (e.g. when it is closed)."""
        self._docs.pop(key, None)

    @property
    def nbytes(self) -> int:
        """Memory held by the kept KV caches (bytes: buffer sizes, else estimated from token counts)."""
        total = 0
        for state in self._docs.values():
            held = cache_bytes(state.cache)
            total += held if held is not None else len(state.ids) * self.bytes_per_token
        return total


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (tokens)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
