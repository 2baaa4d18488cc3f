"""Token healing: let the model re-tokenize across the cursor when a prompt ends inside a token.

A prompt that ends inside what is normally one token (``"\\n"`` before an indent that the
tokenizer merges as ``"\\n    "``, ``" "`` before a word, or half a word) is out of distribution
for a left-to-right model. :meth:`TokenHealer.heal` removes the fewest last prompt tokens (at
most 3) that cover the trailing word, run of punctuation or run of whitespace, and
:meth:`TokenHealer.pick` constrains decoding to write their text back first; the model may go
on past it in the same token (token healing, Microsoft guidance, 2023).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Any

import torch

#: the trailing word, run of punctuation or run of whitespace that token healing re-generates
TRAILING_RUN = re.compile(r"(\w+|[^\w\s]+|\s+)$")
#: at most this many last prompt tokens are removed (tokens)
MAX_HEALED_TOKENS = 3


class TokenHealer:
    """Removes a prompt's last tokens and constrains greedy decoding to write their text back.

    The table of token texts is built on first use (about 1 s for a 150k vocabulary).

    Args:
        tokenizer: a Hugging Face tokenizer (``batch_decode``, ``len``).
        special_ids: special and added token ids; their text counts as empty and they are
            never healed away.
        stop_ids: token ids that end generation; never healed away either.
        enabled: False (FIM prompts) makes :meth:`heal` a no-op. FIM training cuts documents
            at character positions and tokenizes the pieces apart (Bavarian et al., 2022,
            "Efficient Training of Language Models to Fill in the Middle"), so FIM models know
            prefixes that end inside a token.
    """

    def __init__(self, tokenizer: Any, special_ids: Iterable[int], stop_ids: Iterable[int] = (),
                 enabled: bool = True) -> None:
        self.tokenizer = tokenizer
        self.special_ids = set(special_ids)
        self.never_removed = self.special_ids | set(stop_ids)
        self.enabled = enabled
        self._texts: list[str] | None = None
        self._sorted_ids = torch.empty(0, dtype=torch.long)
        self._sorted_texts: list[str] = []
        self._text_ids: dict[str, list[int]] = {}

    def heal(self, ids: list[int]) -> tuple[list[int], str]:
        """Drop the prompt's last tokens so the model may re-tokenize across the cursor.

        Args:
            ids: prompt token ids.

        Returns:
            ``(ids, removed text)``; nothing is removed (``""``) when healing is disabled (FIM
            prompts), for one-token prompts and for special last tokens.
        """
        if not self.enabled or len(ids) < 2:
            return ids, ""
        texts = self.token_texts()
        end_text = "".join(texts[i] for i in ids[-4:])
        match = TRAILING_RUN.search(end_text)
        want = len(match.group(0)) if match else 1
        removed, k = "", 0
        while k < min(MAX_HEALED_TOKENS, len(ids) - 1) and len(removed) < want:
            tok = ids[-1 - k]
            if tok in self.never_removed or not texts[tok]:
                break
            removed = texts[tok] + removed
            k += 1
        return (ids[: len(ids) - k], removed) if k else (ids, "")

    def pick(self, logits: torch.Tensor, heal_left: str) -> tuple[int, str]:
        """Greedy next token, constrained while healed text remains to be written back.

        Args:
            logits: next-token logits [vocab].
            heal_left: text removed by :meth:`heal` and not yet regenerated ("" = unconstrained).

        Returns:
            ``(token id, text still to regenerate)``. While ``heal_left`` is set the token must
            either start with it or be a non-empty prefix of it.
        """
        if not heal_left:
            return int(logits.argmax()), ""
        lo, hi = self._tokens_starting_with(heal_left)
        allowed = self._sorted_ids[lo:hi].tolist()
        for k in range(1, len(heal_left)):
            allowed.extend(self._text_ids.get(heal_left[:k], ()))
        if not allowed:
            return int(logits.argmax()), ""
        index = torch.tensor(allowed, device=logits.device)
        tok = int(index[int(logits[index].argmax())])
        text = self._texts[tok] if self._texts is not None else ""
        return tok, heal_left[len(text) :] if heal_left.startswith(text) and len(text) < len(heal_left) else ""

    def token_texts(self) -> list[str]:
        """Decoded text of every token id, ``""`` for special ones (built once)."""
        if self._texts is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            for i in self.special_ids:
                if i < len(texts):
                    texts[i] = ""
            order = sorted(range(len(texts)), key=texts.__getitem__)
            self._texts = texts
            self._sorted_ids = torch.tensor(order)
            self._sorted_texts = [texts[i] for i in order]
            self._text_ids = {}
            for i, t in enumerate(texts):
                if t:
                    self._text_ids.setdefault(t, []).append(i)
        return self._texts

    def _tokens_starting_with(self, text: str) -> tuple[int, int]:
        """Range ``[lo, hi)`` of ``self._sorted_ids`` whose token text starts with ``text``."""
        self.token_texts()
        lo = bisect.bisect_left(self._sorted_texts, text)
        hi = bisect.bisect_left(self._sorted_texts, text + "\U0010ffff")
        return lo, hi
