"""What the completion engine keeps of each document between requests.

Per document (one ``cache_key``, e.g. its URI): the prompt tokens whose keys/values are in a
KV cache, where the prefix window starts, and the last request with its answer. With these,
the next request prefills only the tokens after the longest common prefix, the prefix window
stays put while it fits, and a user who types the start of the previous suggestion gets the
rest at once. Documents are dropped least recently used first beyond a byte budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
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
        stale: prompt tokens inserted or removed before the FIM suffix since the suffix's cached
            keys/values were computed (they were moved since, not recomputed; tokens).
    """

    ids: list[int]
    cache: Any
    window_start: int
    prefix: str
    suffix: str
    text: str
    stale: int = 0


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

    def take_reusable(self, key: str | None, ids: list[int], anchor: int | None = None,
                      max_stale: int = 0) -> Reuse:
        """Take the document's cache for a prompt, cropped to the tokens it shares with ``ids``.

        The document's state is removed (put it back with :meth:`remember`). At least the last
        prompt token is left to recompute, so the caller gets its logits.

        With ``anchor`` (the index in ``ids`` where a movable chunk starts: the FIM suffix, from
        its ``<fim_suffix>`` token to just before the last prompt token), the chunk is looked
        for in the cached tokens after the common prefix too; when it is there unchanged and at
        least :data:`MIN_MOVE` tokens long, the result asks the caller to move it (the cache is
        then left uncropped, for :meth:`pocketpilot.runtime.backends.Backend.splice`), unless
        its keys/values would then be staler than ``max_stale`` tokens (tokens inserted plus
        removed before it since they were computed): then it is recomputed.

        Args:
            key: the document, or ``None`` for no reuse.
            ids: the new prompt's token ids.
            anchor: start of the movable chunk in ``ids``, or ``None``.
            max_stale: most staleness allowed for a moved chunk (tokens); 0 = never move.

        Returns:
            A :class:`Reuse`.
        """
        state = self._docs.pop(key, None) if key is not None else None
        if state is None:
            return Reuse(None, 0)
        reused = min(common_prefix(state.ids, ids), len(ids) - 1)
        if anchor is not None and 0 < reused < anchor:
            length = len(ids) - 1 - anchor
            src = _find(state.ids, ids[anchor], reused)
            stale = state.stale + (anchor - reused) + (src - reused)
            if (length >= MIN_MOVE and src >= 0 and stale <= max_stale
                    and state.cache.get_seq_length() >= src + length
                    and state.ids[src:src + length] == ids[anchor:anchor + length]):
                return Reuse(state.cache, reused, src, length, stale)
        if reused <= 0:
            return Reuse(None, 0)
        crop_to(state.cache, reused)
        return Reuse(state.cache, reused)

    def note_answer(self, key: str, prefix: str, suffix: str, text: str) -> None:
        """Record the suggestion shown for ``prefix``/``suffix`` (for typed-ahead), keeping the KV state."""
        state = self._docs.get(key)
        if state is not None:
            state.prefix, state.suffix, state.text = prefix, suffix, text

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


@dataclass
class Reuse:
    """What :meth:`DocStates.take_reusable` found reusable for a prompt.

    Attributes:
        cache: the document's cache (``None``: nothing reusable). Cropped to ``reused`` tokens
            unless a chunk is to be moved.
        reused: leading prompt tokens whose keys/values the cache holds (tokens).
        move_src: position in the cache of a chunk to move after the new tokens (with ``move_len``).
        move_len: length of that chunk (tokens); 0 = nothing to move.
        stale: the moved chunk's staleness after the move (see :attr:`DocState.stale`; tokens).
    """

    cache: Any
    reused: int
    move_src: int = 0
    move_len: int = 0
    stale: int = 0


#: shortest chunk worth moving instead of recomputing (tokens)
MIN_MOVE = 4


def _find(ids: list[int], token: int, start: int) -> int:
    """Index of the first ``token`` in ``ids`` at or after ``start``, or -1."""
    try:
        return ids.index(token, start)
    except ValueError:
        return -1


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists (tokens)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Suggestions:
    """Recent suggestions keyed by the context they were made for (least recently used dropped).

    Accepting a suggestion that was computed ahead (the speculative next suggestion), or undoing
    an edit and typing it again, finds the answer here without running the model.

    Args:
        size: most suggestions kept.
    """

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._kept: OrderedDict[bytes, str] = OrderedDict()

    @staticmethod
    def key(prefix: str, suffix: str, snippets: Sequence[str] = (), *extra: object) -> bytes:
        """A digest of everything a prompt is built from: the prefix and suffix text that can enter
        it, the snippets and ``extra`` (e.g. the token limit and whether a block may start)."""
        h = hashlib.blake2b(digest_size=16)
        for part in (prefix, suffix, *snippets, *map(repr, extra)):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.digest()

    def get(self, key: bytes) -> str | None:
        """The suggestion kept for ``key`` (marked recently used), or ``None``."""
        text = self._kept.get(key)
        if text is not None:
            self._kept.move_to_end(key)
        return text

    def put(self, key: bytes, text: str) -> None:
        """Keep ``text`` as the suggestion for ``key``."""
        self._kept[key] = text
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)
