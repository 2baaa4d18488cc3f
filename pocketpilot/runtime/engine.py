"""Completion engine: prompt building (FIM or prefix), greedy decoding with a KV cache, stops."""

from __future__ import annotations

import bisect
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from pocketpilot.runtime.kvcache import cache_bytes, new_cache
from pocketpilot.runtime.loader import LoadedModel
from pocketpilot.runtime.postprocess import block_end, block_opener, finalize, indentation, open_brackets
from pocketpilot.runtime.settings import EngineSettings

#: prompt tokens per forward pass during prefill; cancellation is polled between chunks
PREFILL_CHUNK = 128
#: the trailing word, run of punctuation or run of whitespace that token healing re-generates
_TRAILING_RUN = re.compile(r"(\w+|[^\w\s]+|\s+)$")

#: FIM token spellings, tried in order: (prefix, suffix, middle).
FIM_STYLES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM
)


@dataclass
class Completion:
    """One completion and what it cost.

    Attributes:
        text: text to insert at the cursor (may be empty).
        raw: decoded model output before post-processing.
        prompt_tokens: tokens prefilled (tokens).
        new_tokens: tokens decoded (tokens).
        prefill_ms: wall time of the prefill (ms).
        decode_ms: wall time of all decode steps (ms).
        cancelled: generation stopped because ``should_stop`` returned True.
        reused_tokens: prompt tokens whose keys/values came from the document's cached KV (tokens).
        typed_ahead: answered from the previous suggestion without running the model.
        drafted: tokens proposed by prompt lookup and checked by the model (tokens).
        accepted_drafts: drafted tokens the model agreed with, each a decode step saved (tokens).
        block: the cursor started a block body, so the completion may span several lines.
        context_tokens: prompt tokens taken by snippets from other documents (tokens).
    """

    text: str
    raw: str
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    decode_ms: float
    cancelled: bool = False
    reused_tokens: int = 0
    typed_ahead: bool = False
    drafted: int = 0
    accepted_drafts: int = 0
    block: bool = False
    context_tokens: int = 0

    @property
    def total_ms(self) -> float:
        """Prefill plus decode time (ms)."""
        return self.prefill_ms + self.decode_ms


@dataclass
class _DocState:
    """What the engine remembers of a document between requests (see ``cache_key``)."""

    ids: list[int]  # tokens whose keys/values are in ``cache``
    cache: Any  # a transformers Cache
    window_start: int  # character offset where the prefix window starts
    prefix: str  # the last request ...
    suffix: str
    text: str  # ... and its answer


class CompletionEngine:
    """Greedy code completion from a :class:`LoadedModel`.

    Uses a fill-in-the-middle prompt (prefix + suffix) when the tokenizer has FIM tokens,
    else the prefix alone. With a ``cache_key`` (one per document), it keeps that
    document's KV cache and reuses the longest common token prefix on the next request
    (only new tokens are prefilled), keeps the prefix window's start stable while it fits,
    and answers at once when the user has typed the start of the previous suggestion.
    Not thread-safe: call from one worker thread.
    """

    def __init__(self, loaded: LoadedModel, settings: EngineSettings | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = next(self.model.parameters()).device  # cpu, or cuda for a GPU recipe
        self.tokenizer = loaded.tokenizer
        self.settings = settings or EngineSettings()
        vocab = self.tokenizer.get_vocab()
        self.fim: tuple[int, int, int] | None = None
        for style in FIM_STYLES:
            if all(t in vocab for t in style):
                self.fim = tuple(vocab[t] for t in style)  # type: ignore[assignment]
                break
        self.stop_ids = self._stop_ids(vocab)
        self._special_ids = set(self.tokenizer.all_special_ids or []) | set(
            getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        self._texts: list[str] | None = None
        self._sorted_ids = torch.empty(0, dtype=torch.long)
        self._sorted_texts: list[str] = []
        self._text_ids: dict[str, list[int]] = {}
        self._docs: OrderedDict[str, _DocState] = OrderedDict()
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        elem = torch.finfo(loaded.dtype).bits // 8
        #: bytes of keys + values per cached token
        self.kv_bytes_per_token = cfg.num_hidden_layers * 2 * kv_heads * head_dim * elem

    def _stop_ids(self, vocab: dict[str, int]) -> set[int]:
        ids = set(self.tokenizer.all_special_ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        for name in ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|repo_name|>", "<file_sep>", "<|im_end|>"):
            if name in vocab:
                ids.add(vocab[name])
        return ids

    @property
    def uses_fim(self) -> bool:
        """True when prompts are fill-in-the-middle."""
        return self.fim is not None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def build_prompt(self, prefix: str, suffix: str, window_start: int | None = None,
                     context: Sequence[int] = ()) -> list[int]:
        """Token ids of the prompt: FIM ``<prefix>CP<suffix>S<middle>`` or just ``CP``.

        The prefix ``P`` keeps its last ``prefix_tokens`` tokens (or, with ``window_start``, the
        text from that character offset on) and the suffix ``S`` its first ``suffix_tokens``
        tokens (text is cut to about 6 characters a token first). ``C`` is ``context``, token ids
        of snippets from other documents (see :meth:`pack_context`).
        """
        s = self.settings
        if window_start is None:
            p_ids = self._encode(prefix[-s.prefix_tokens * 6 :])[-s.prefix_tokens :]
        else:
            p_ids = self._encode(prefix[window_start:])
        p_ids = [*context, *p_ids]
        if self.fim is None:
            return p_ids or [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id or 0]
        s_ids = self._encode(suffix[: s.suffix_tokens * 6])[: s.suffix_tokens] if s.suffix_tokens else []
        fp, fs, fm = self.fim
        return [fp, *p_ids, fs, *s_ids, fm]

    def pack_context(self, snippets: Sequence[str]) -> list[int]:
        """Token ids of as many ``snippets`` (rendered text, best first) as fit ``context_tokens``."""
        ids: list[int] = []
        for text in snippets:
            more = self._encode(text)
            if len(ids) + len(more) > self.settings.context_tokens:
                break
            ids.extend(more)
        return ids

    @torch.inference_mode()
    def complete(
        self,
        prefix: str,
        suffix: str = "",
        *,
        max_new_tokens: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        cache_key: str | None = None,
        language: str | None = None,
        snippets: Sequence[str] = (),
        allow_block: bool = True,
    ) -> Completion:
        """Complete the code at the cursor between ``prefix`` and ``suffix``.

        Args:
            prefix: document text before the cursor.
            suffix: document text after the cursor.
            max_new_tokens: override of ``settings.max_new_tokens`` or, for a block body,
                ``settings.block_max_tokens`` (tokens).
            should_stop: polled before the prefill, between prefill chunks of
                :data:`PREFILL_CHUNK` tokens and between decode steps; returning True cancels:
                the text so far comes back with ``cancelled=True`` and the keys/values computed
                so far are kept for the document's next request.
            cache_key: identifies the document (e.g. its URI) for KV-cache and typed-ahead reuse;
                ``None`` computes from scratch and remembers nothing.
            language: LSP language id (``"python"`` ...); picks the block opener and comment style.
            snippets: rendered snippets from other documents, best first; as many as fit
                ``settings.context_tokens`` go before the prefix.
            allow_block: False keeps to one line even where a block body could start.

        Returns:
            A :class:`Completion`. Its text ends before the first newline unless the cursor starts
            a block body (a blank line after ``:`` in Python or ``{`` elsewhere) and
            ``settings.multiline`` is on; then it holds the body up to where the indentation
            returns to the opener's level.
        """
        if should_stop is not None and should_stop():
            return Completion(text="", raw="", prompt_tokens=0, new_tokens=0, prefill_ms=0.0, decode_ms=0.0,
                              cancelled=True)
        opener = block_opener(prefix, suffix, language) if self.settings.multiline and allow_block else None
        limit = max_new_tokens or (self.settings.block_max_tokens if opener is not None else self.settings.max_new_tokens)
        if cache_key is not None:
            ahead = self._typed_ahead(cache_key, prefix, suffix)
            if ahead is not None:
                return ahead
        start = self._window_start(prefix, cache_key) if cache_key is not None else None
        context = self.pack_context(snippets) if snippets and self.settings.context_tokens else []
        ids = self.build_prompt(prefix, suffix, window_start=start, context=context)
        ids, healed = self._heal(ids)
        line_prefix = prefix.rsplit("\n", 1)[-1]
        t0 = time.perf_counter()
        logits, cache, reused, fed_count = self._prefill(ids, cache_key, should_stop)
        t1 = time.perf_counter()
        if logits is None:  # cancelled during the prefill
            if cache_key is not None and cache is not None:
                self._remember(cache_key, _DocState(ids[:fed_count], cache, start or 0, prefix, suffix, ""))
            return Completion(text="", raw="", prompt_tokens=len(ids), new_tokens=0, prefill_ms=(t1 - t0) * 1e3,
                              decode_ms=0.0, cancelled=True, reused_tokens=reused, block=opener is not None,
                              context_tokens=len(context))
        next_id, heal_left = self._pick(logits, healed)
        fed = list(ids)  # tokens whose keys/values are in ``cache``
        generated: list[int] = []
        raw = ""
        cancelled = truncated = False
        drafted = accepted_drafts = 0

        def take(tok: int) -> bool:
            """Append a chosen token; False when generation ends here."""
            nonlocal raw, truncated, cancelled
            if tok in self.stop_ids:
                return False
            generated.append(tok)
            raw = self.tokenizer.decode(generated, skip_special_tokens=True)
            if healed:
                raw = raw[len(healed):] if raw.startswith(healed) else ""
            if opener is None and "\n" in raw:
                return False
            if opener is not None and block_end(raw, line_prefix, opener) is not None:
                return False
            if len(generated) >= limit:
                truncated = True
                return False
            if should_stop is not None and should_stop():
                cancelled = True
                return False
            return True

        while take(next_id):
            room = min(self.settings.draft_tokens, limit - len(generated))
            drafts = [] if heal_left or room <= 0 else _lookup_draft(fed + [next_id], room)
            out = self.model(input_ids=torch.tensor([[next_id, *drafts]], device=self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=len(drafts) + 1)
            cache = out.past_key_values
            fed.append(next_id)
            rows = out.logits[0]
            next_id, heal_left = self._pick(rows[0], heal_left)
            drafted += len(drafts)
            ended = False
            for i, draft in enumerate(drafts):  # greedy verification: keep drafts the model agrees with
                if next_id != draft:
                    break
                if not take(draft):
                    ended = True
                    break
                fed.append(draft)
                accepted_drafts += 1
                next_id, _ = self._pick(rows[i + 1], "")
            extra = cache.get_seq_length() - len(fed)
            if extra > 0:
                cache.crop(-extra)  # drop the keys/values of rejected drafts
            if ended:
                break
        t2 = time.perf_counter()
        tail = prefix[-4000:]
        text = finalize(raw, line_prefix, suffix, still_open=open_brackets(tail, language), opener_indent=opener,
                        uses_tabs=_uses_tabs(tail), truncated=truncated)
        if cache_key is not None:
            self._remember(cache_key, _DocState(fed, cache, start or 0, prefix, suffix, "" if cancelled else text))
        return Completion(
            text=text,
            raw=raw,
            prompt_tokens=len(ids),
            new_tokens=len(generated),
            prefill_ms=(t1 - t0) * 1e3,
            decode_ms=(t2 - t1) * 1e3,
            cancelled=cancelled,
            reused_tokens=reused,
            drafted=drafted,
            accepted_drafts=accepted_drafts,
            block=opener is not None,
            context_tokens=len(context),
        )

    def _heal(self, ids: list[int]) -> tuple[list[int], str]:
        """Token healing: drop the prompt's last tokens so the model may re-tokenize across the cursor.

        A prompt that ends inside what is normally one token (``"\\n"`` before an indent that
        the tokenizer merges as ``"\\n    "``, ``" "`` before a word, or half a word) is out of
        distribution for a left-to-right model. The fewest last tokens (at most 3) that cover
        the trailing word, run of punctuation or run of whitespace are removed, and decoding is
        constrained to write their text back first (see :meth:`_pick`); the model may go on past
        it in the same token (token healing, Microsoft guidance, 2023). FIM prompts are left
        alone: FIM training cuts documents at character positions and tokenizes the pieces
        apart (Bavarian et al., 2022, "Efficient Training of Language Models to Fill in the
        Middle"), so FIM models know prefixes that end inside a token.

        Returns:
            ``(ids, removed text)``; nothing is removed (``""``) for FIM prompts, one-token
            prompts and special last tokens.
        """
        if self.fim is not None or len(ids) < 2:
            return ids, ""
        texts = self._token_texts()
        end_text = "".join(texts[i] for i in ids[-4:])
        match = _TRAILING_RUN.search(end_text)
        want = len(match.group(0)) if match else 1
        removed, k = "", 0
        while k < min(3, len(ids) - 1) and len(removed) < want:
            tok = ids[-1 - k]
            if tok in self.stop_ids or tok in self._special_ids or not texts[tok]:
                break
            removed = texts[tok] + removed
            k += 1
        return (ids[: len(ids) - k], removed) if k else (ids, "")

    def _pick(self, logits: torch.Tensor, heal_left: str) -> tuple[int, str]:
        """Greedy next token, constrained while healed text remains to be written back.

        Args:
            logits: next-token logits [vocab].
            heal_left: text removed by :meth:`_heal` and not yet regenerated ("" = unconstrained).

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

    def _token_texts(self) -> list[str]:
        """Decoded text of every token id (built once, about 1 s for a 150k vocabulary)."""
        if self._texts is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            for i in self._special_ids:
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
        self._token_texts()
        lo = bisect.bisect_left(self._sorted_texts, text)
        hi = bisect.bisect_left(self._sorted_texts, text + "\U0010ffff")
        return lo, hi

    @torch.inference_mode()
    def _prefill(
        self, ids: list[int], cache_key: str | None, should_stop: Callable[[], bool] | None = None
    ) -> tuple[torch.Tensor | None, Any, int, int]:
        """Run the prompt through the model, reusing the document's cached keys/values.

        New tokens go through in chunks of :data:`PREFILL_CHUNK`; ``should_stop`` is polled
        between chunks. At least the last prompt token is always recomputed.

        Returns:
            ``(logits, cache, reused, fed)``: ``logits`` [vocab] of the last prompt token (``None``
            if cancelled), the cache, the count of prompt tokens taken from the document's cache,
            and the count of prompt tokens whose keys/values are now in ``cache`` (tokens).
        """
        state = self._docs.pop(cache_key, None) if cache_key is not None else None
        cache, reused = None, 0
        if state is not None:
            reused = min(_common_prefix(state.ids, ids), len(ids) - 1)
            if reused > 0:
                cache = state.cache
                extra = cache.get_seq_length() - reused
                if extra > 0:
                    cache.crop(-extra)  # a negative count removes that many tokens (transformers 4.x and 5.x)
        pos = reused
        if cache is None:
            cache = new_cache()
        while True:
            end = min(len(ids), pos + PREFILL_CHUNK)
            out = self.model(input_ids=torch.tensor([ids[pos:end]], device=self.device), past_key_values=cache, use_cache=True,
                             logits_to_keep=1)
            cache, pos = out.past_key_values, end
            if pos == len(ids):
                return out.logits[0, -1], cache, reused, pos
            if should_stop is not None and should_stop():
                return None, cache, reused, pos

    def _window_start(self, prefix: str, cache_key: str) -> int:
        """Character offset where the prefix window starts, kept stable while it fits.

        A window that slid by one token per keystroke would defeat KV reuse, so the previous
        start is kept while ``prefix[start:]`` fits in ``prefix_tokens``; a new start is put at a
        line start about three quarters of the budget back.
        """
        budget = self.settings.prefix_tokens
        state = self._docs.get(cache_key)
        if state is not None and state.window_start <= len(prefix):
            if len(self._encode(prefix[state.window_start :])) <= budget:
                return state.window_start
        base = max(0, len(prefix) - budget * 6)
        tail = prefix[base:]
        offsets = self.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= budget and base == 0:
            return 0
        pos = offsets[max(0, len(offsets) - budget * 3 // 4)][0]
        newline = tail.find("\n", pos)
        return base + (newline + 1 if 0 <= newline < len(tail) - 1 else pos)

    def _typed_ahead(self, cache_key: str, prefix: str, suffix: str) -> Completion | None:
        """The rest of the previous suggestion if the user has typed its start, else ``None``."""
        state = self._docs.get(cache_key)
        if state is None or not state.text or suffix != state.suffix or not prefix.startswith(state.prefix):
            return None
        typed = prefix[len(state.prefix) :]
        if not typed or not state.text.startswith(typed) or len(typed) >= len(state.text):
            return None
        self._docs.move_to_end(cache_key)
        rest = state.text[len(typed) :]
        return Completion(text=rest, raw=rest, prompt_tokens=0, new_tokens=0, prefill_ms=0.0, decode_ms=0.0,
                          typed_ahead=True)

    def _remember(self, cache_key: str, state: _DocState) -> None:
        """Keep a document's state; drop least recently used ones beyond ``kv_cache_mb``."""
        self._docs[cache_key] = state
        self._docs.move_to_end(cache_key)
        limit = self.settings.kv_cache_mb * 1_000_000
        while len(self._docs) > 1 and self.cached_bytes > limit:
            self._docs.popitem(last=False)
        if self.cached_bytes > limit:  # even the newest alone is too big
            self._docs.clear()

    @property
    def cached_bytes(self) -> int:
        """Memory held by the kept KV caches (bytes: buffer sizes, else estimated from token counts)."""
        total = 0
        for state in self._docs.values():
            held = cache_bytes(state.cache)
            total += held if held is not None else len(state.ids) * self.kv_bytes_per_token
        return total

    def forget(self, cache_key: str) -> None:
        """Drop what is kept for a document (e.g. when it is closed)."""
        self._docs.pop(cache_key, None)


def _lookup_draft(seq: list[int], k: int, ngram: tuple[int, ...] = (3, 2)) -> list[int]:
    """Prompt-lookup drafting: the ``k`` tokens that followed the latest earlier match of ``seq``'s tail.

    Code repeats itself, so the tokens after an earlier occurrence of the last 3 (else 2)
    tokens are a cheap guess of what comes next; the model verifies all of them in one forward
    pass and greedy output is unchanged (Saxena, 2023, "Prompt Lookup Decoding"; verification
    as in speculative decoding, Leviathan et al., ICML 2023). Returns ``[]`` without a match.
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


def _uses_tabs(text: str) -> bool:
    """True when the last indented line of ``text`` is indented with a tab."""
    for line in reversed(text.split("\n")):
        ws = indentation(line)
        if ws and line.strip():
            return ws.startswith("\t")
    return False


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

