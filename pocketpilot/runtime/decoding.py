"""Greedy decoding bookkeeping: the tokens decoded so far, when to stop, and prompt-lookup drafts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pocketpilot.runtime.postprocess import block_end


@dataclass
class Generation:
    """The tokens decoded for one request, and why decoding ended.

    Attributes:
        fed: tokens whose keys/values are in the KV cache: the prompt, then each token accepted
            and run through the model (tokens).
        decode: token ids -> text (the tokenizer's ``decode`` without special tokens).
        stop_ids: token ids that end generation.
        healed: text removed from the prompt by token healing; the first decoded text must
            start with it and it is cut from ``raw``.
        line_prefix: text of the cursor's line before the cursor.
        opener: indentation of the block opener when a block body is completed, else ``None``
            (one line only).
        limit: at most this many tokens are decoded (tokens).
        should_stop: polled after each accepted token; True cancels.
        deadline: ``time.perf_counter()`` value after which decoding stops (``cut``); ``None`` = none.
        generated: tokens decoded so far (tokens).
        raw: their text, healed text removed.
        cancelled: ``should_stop`` returned True.
        truncated: ``limit`` was reached.
        cut: the ``deadline`` (the request's time budget) passed before generation ended.
        drafted: tokens proposed by prompt lookup and checked by the model (tokens).
        accepted_drafts: drafted tokens the model agreed with (tokens).
    """

    fed: list[int]
    decode: Callable[[list[int]], str]
    stop_ids: set[int]
    healed: str
    line_prefix: str
    opener: str | None
    limit: int
    should_stop: Callable[[], bool] | None = None
    deadline: float | None = None
    generated: list[int] = field(default_factory=list)
    raw: str = ""
    cancelled: bool = False
    truncated: bool = False
    cut: bool = False
    drafted: int = 0
    accepted_drafts: int = 0

    @property
    def room(self) -> int:
        """Tokens that may still be decoded (tokens)."""
        return self.limit - len(self.generated)

    def take(self, tok: int) -> bool:
        """Append a chosen token; False when generation ends here (the token may still be kept).

        Ends on a stop token (not kept), a newline in single-line mode, the end of the block
        body, ``limit`` tokens (``truncated``), ``should_stop`` (``cancelled``) or the ``deadline`` (``cut``).
        """
        if tok in self.stop_ids:
            return False
        self.generated.append(tok)
        raw = self.decode(self.generated)
        if self.healed:
            raw = raw[len(self.healed) :] if raw.startswith(self.healed) else ""
        self.raw = raw
        if self.opener is None and "\n" in raw:
            return False
        if self.opener is not None and block_end(raw, self.line_prefix, self.opener) is not None:
            return False
        if len(self.generated) >= self.limit:
            self.truncated = True
            return False
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
            return False
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.cut = True
            return False
        return True

    @property
    def complete_lines(self) -> str:
        """:attr:`raw` up to and including its last newline: the lines a time budget cut keeps ("" for none)."""
        end = self.raw.rfind("\n")
        return self.raw[: end + 1] if end >= 0 else ""

    def accept_drafts(self, drafts: list[int], rows: Any, next_id: int,
                      pick: Callable[[Any, str], tuple[int, str]]) -> tuple[int, bool]:
        """Greedy verification: take the leading drafts the model agrees with.

        Args:
            drafts: the drafted token ids, run through the model after the last token of
                :attr:`fed` (tokens).
            rows: logits [1 + len(drafts), vocab]; row ``i`` predicts the token after ``drafts[:i]``.
            next_id: the model's choice from row 0.
            pick: greedy choice from one row of logits (see :meth:`TokenHealer.pick`).

        Returns:
            ``(next token id, ended)``; ``ended`` is True when generation stopped on a draft.
            Accepted drafts are appended to :attr:`fed` and counted in :attr:`accepted_drafts`.
        """
        for i, draft in enumerate(drafts):
            if next_id != draft:
                break
            if not self.take(draft):
                return next_id, True
            self.fed.append(draft)
            self.accepted_drafts += 1
            next_id, _ = pick(rows[i + 1], "")
        return next_id, False


def lookup_draft(seq: list[int], k: int, ngram: tuple[int, ...] = (3, 2)) -> list[int]:
    """Prompt-lookup drafting: the ``k`` tokens that followed the latest earlier match of ``seq``'s tail.

    Code repeats itself, so the tokens after an earlier occurrence of the last 3 (else 2)
    tokens are a cheap guess of what comes next; the model verifies all of them in one forward
    pass and greedy output is unchanged (Saxena, 2023, "Prompt Lookup Decoding"; verification
    as in speculative decoding, Leviathan et al., ICML 2023). Only the last 2048 positions are
    searched. Returns ``[]`` without a match.
    """
    for n in ngram:
        if len(seq) <= n:
            continue
        tail = seq[-n:]
        first = tail[0]
        for p in range(len(seq) - n - 1, max(-1, len(seq) - 2048), -1):
            if seq[p] == first and seq[p : p + n] == tail:
                return seq[p + n : p + n + k]
    return []
