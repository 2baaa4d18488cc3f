"""Completion engine: prompt building (FIM or prefix), greedy decoding with a KV cache, stops.

One request runs as named steps: :meth:`CompletionEngine._prompt` (window, snippets, token
healing), :meth:`CompletionEngine._prefill` (reuse the document's cached keys/values, then
prefill the rest in chunks), :meth:`CompletionEngine._decode` (greedy with prompt-lookup
drafts) and :meth:`CompletionEngine._post_process`. Token healing lives in
:mod:`pocketpilot.runtime.healing`, the per-document KV/typed-ahead state in
:mod:`pocketpilot.runtime.docstate`, the decode bookkeeping in :mod:`pocketpilot.runtime.decoding`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pocketpilot.runtime.decoding import Generation, lookup_draft
from pocketpilot.runtime.docstate import DocState, DocStates, Reuse, Suggestions
from pocketpilot.runtime.healing import TokenHealer
from pocketpilot.runtime.kvcache import crop_to
from pocketpilot.runtime.loader import LoadedModel
from pocketpilot.runtime.postprocess import block_opener, finalize, indentation, open_brackets
from pocketpilot.runtime.settings import EngineSettings
from pocketpilot.runtime.threads import FreeCores

#: most prompt tokens per forward pass during prefill; cancellation is polled between chunks. A
#: user request's prefill starts with chunks of :data:`WARM_CHUNK` and doubles them up to this, so
#: a request cancelled soon after it starts (most are: the user typed on) stops within a small chunk
PREFILL_CHUNK = 128
#: most staleness of a moved FIM suffix (tokens typed or deleted before it since its keys/values
#: were computed) before it is recomputed instead; the ES cost of moving is measured at this
#: distance (docs/results.md)
MAX_STALE = 32
#: prompt tokens per forward pass of a background warm-up: a user request waits at most one
#: such chunk before the warm-up yields
WARM_CHUNK = 32
#: token spellings that end generation when the vocabulary has them
STOP_TOKENS = ("<|endoftext|>", "<|file_sep|>", "<|fim_pad|>", "<|repo_name|>", "<file_sep>", "<|im_end|>")

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
        moved_tokens: of ``reused_tokens``, those whose cached keys were moved to new positions (tokens).
        cut: decoding stopped at the time budget (``settings.max_latency_ms``); only complete lines are kept.
        remembered: answered from the suggestion cache (a speculative or earlier suggestion) without the model.
        threads: CPU threads the model ran with.
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
    moved_tokens: int = 0
    cut: bool = False
    remembered: bool = False
    threads: int = 0

    @property
    def total_ms(self) -> float:
        """Prefill plus decode time (ms)."""
        return self.prefill_ms + self.decode_ms

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens run through the model for this request (tokens): not reused, not answered ahead."""
        return self.prompt_tokens - self.reused_tokens



@dataclass
class _Prompt:
    """A request's prompt after token healing.

    Attributes:
        ids: prompt token ids, healed tokens removed (tokens).
        healed: text of the removed tokens, to be written back first ("" = none).
        window_start: character offset where the prefix window starts (0 without a document).
        context_tokens: tokens taken by snippets from other documents (tokens).
    """

    ids: list[int]
    healed: str
    window_start: int
    context_tokens: int


class CompletionEngine:
    """Greedy code completion from a :class:`LoadedModel`.

    Uses a fill-in-the-middle prompt (prefix + suffix) when the tokenizer has FIM tokens,
    else the prefix alone. With a ``cache_key`` (one per document), it keeps that
    document's KV cache and reuses the longest common token prefix on the next request
    (only new tokens are prefilled), keeps the prefix window's start stable while it fits,
    and answers at once when the user has typed the start of the previous suggestion
    (see :class:`DocStates`). Not thread-safe: call from one worker thread.

    Attributes:
        healer: the :class:`TokenHealer` (off for FIM prompts).
        docs: per-document state, least recently used dropped beyond ``settings.kv_cache_mb``.
        suggestions: recent suggestions keyed by their context (:class:`Suggestions`).
        cores: measures the cores other programs leave free (``settings.threads`` 0).
        max_threads: most threads an adaptive count (``settings.threads`` 0) gives the model: the
            ``max_threads`` argument, else torch's thread count when the engine was made.
        kv_bytes_per_token: bytes of keys + values per cached token (bytes).
    """

    def __init__(self, loaded: LoadedModel, settings: EngineSettings | None = None,
                 max_threads: int | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.backend = loaded.backend()  # torch, or llama.cpp for a GGUF artifact
        self.tokenizer = loaded.tokenizer
        self.settings = settings or EngineSettings()
        vocab = self.tokenizer.get_vocab()
        self.fim = _fim_ids(vocab)
        self.stop_ids = _stop_ids(self.tokenizer, vocab)
        special_ids = set(self.tokenizer.all_special_ids or []) | set(
            getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        self.healer = TokenHealer(self.tokenizer, special_ids, self.stop_ids, enabled=self.fim is None)
        self.kv_bytes_per_token = _kv_bytes_per_token(self.model.config, loaded.dtype)
        self.docs = DocStates(self.kv_bytes_per_token)
        self.suggestions = Suggestions()
        self.cores = FreeCores()
        self.max_threads = max_threads or torch.get_num_threads()
        self._decode_text = functools.partial(self.tokenizer.decode, skip_special_tokens=True)

    @property
    def uses_fim(self) -> bool:
        """True when prompts are fill-in-the-middle."""
        return self.fim is not None

    @property
    def cached_bytes(self) -> int:
        """Memory held by the kept KV caches (bytes: buffer sizes, else estimated from token counts)."""
        return self.docs.nbytes

    def forget(self, cache_key: str) -> None:
        """Drop what is kept for a document (e.g. when it is closed)."""
        self.docs.forget(cache_key)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def build_prompt(self, prefix: str, suffix: str, window_start: int | None = None,
                     context: Sequence[int] = ()) -> list[int]:
        """Token ids of the prompt: FIM ``<prefix>CP<suffix>S<middle>`` (``settings.fim_layout`` psm or
        psm-shift), ``<suffix>S<prefix>CP<middle>`` (spm), or just ``CP`` without FIM tokens.

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
        if s.fim_layout == "spm":
            return [fs, *s_ids, fp, *p_ids, fm]
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
        remember_answer: bool = True,
        background: bool = False,
    ) -> Completion:
        """Complete the code at the cursor between ``prefix`` and ``suffix``.

        Args:
            prefix: document text before the cursor.
            suffix: document text after the cursor.
            max_new_tokens: override of ``settings.max_new_tokens`` or, for a block body,
                ``settings.block_max_tokens`` (tokens).
            should_stop: polled before the prefill, between prefill chunks (of
                :data:`WARM_CHUNK` tokens doubling up to :data:`PREFILL_CHUNK`) and between decode steps; returning True cancels:
                the text so far comes back with ``cancelled=True`` and the keys/values computed
                so far are kept for the document's next request.
            cache_key: identifies the document (e.g. its URI) for KV-cache and typed-ahead reuse;
                ``None`` computes from scratch and remembers nothing.
            language: LSP language id (``"python"`` ...); picks the block opener and comment style.
            snippets: rendered snippets from other documents, best first; as many as fit
                ``settings.context_tokens`` go before the prefix.
            allow_block: False keeps to one line even where a block body could start.
            remember_answer: False (a speculative request) keeps the document's KV state but not this
                answer as the suggestion the user sees (typed-ahead keeps matching the shown one); the
                answer still goes to :attr:`suggestions`.
            background: a background request (the speculative next suggestion): the prefill runs
                in chunks of :data:`WARM_CHUNK`, so a user request waits at most one of them.

        Returns:
            A :class:`Completion`. Its text ends before the first newline unless the cursor starts
            a block body (a blank line after ``:`` in Python or ``{`` elsewhere) and
            ``settings.multiline`` is on; then it holds the body up to where the indentation
            returns to the opener's level. With ``settings.max_latency_ms``, decoding stops when the
            budget (counted from the call) is spent and only complete lines are kept (``cut``).
        """
        if should_stop is not None and should_stop():
            return Completion(text="", raw="", prompt_tokens=0, new_tokens=0, prefill_ms=0.0, decode_ms=0.0,
                              cancelled=True)
        t0 = time.perf_counter()
        opener = block_opener(prefix, suffix, language) if self.settings.multiline and allow_block else None
        ahead = self.docs.typed_ahead(cache_key, prefix, suffix) if cache_key is not None else None
        if ahead is not None:
            return Completion(text=ahead, raw=ahead, prompt_tokens=0, new_tokens=0, prefill_ms=0.0, decode_ms=0.0,
                              typed_ahead=True)
        s = self.settings
        limit = max_new_tokens or (s.block_max_tokens if opener is not None else s.max_new_tokens)
        key = self._suggestion_key(prefix, suffix, snippets, limit, opener is not None)
        kept = self.suggestions.get(key) if s.kv_cache_mb else None  # kvCacheMb 0: nothing is reused
        if kept is not None:
            if cache_key is not None and remember_answer:
                self.docs.note_answer(cache_key, prefix, suffix, kept)
            return Completion(text=kept, raw=kept, prompt_tokens=0, new_tokens=0, prefill_ms=0.0,
                              decode_ms=(time.perf_counter() - t0) * 1e3, remembered=True)
        threads = self._use_threads()
        prompt = self._prompt(prefix, suffix, cache_key, snippets)  # 1. prompt
        old = self.docs.get(cache_key) if cache_key is not None else None  # _prefill takes it out
        t1 = time.perf_counter()
        logits, cache, reuse, fed = self._prefill(prompt.ids, cache_key, should_stop,  # 2. reuse, 3. prefill
                                                  chunk=WARM_CHUNK if background else PREFILL_CHUNK)
        t2 = time.perf_counter()
        done = {"prompt_tokens": len(prompt.ids), "prefill_ms": (t2 - t1) * 1e3, "reused_tokens": reuse.reused,
                "moved_tokens": reuse.move_len, "block": opener is not None,
                "context_tokens": prompt.context_tokens, "threads": threads}
        if logits is None:  # cancelled during the prefill
            self._keep(cache_key, DocState(prompt.ids[:fed], cache, prompt.window_start, prefix, suffix, "",
                                           reuse.stale))
            return Completion(text="", raw="", new_tokens=0, decode_ms=0.0, cancelled=True, **done)
        deadline = t0 + s.max_latency_ms / 1000 if s.max_latency_ms else None
        gen = Generation(fed=list(prompt.ids), decode=self._decode_text, stop_ids=self.stop_ids,
                         healed=prompt.healed, line_prefix=prefix.rsplit("\n", 1)[-1], opener=opener,
                         limit=limit, should_stop=should_stop, deadline=deadline)
        if deadline is not None and t2 > deadline:
            gen.cut = True  # the prefill alone spent the budget; its keys/values are kept
        else:
            cache = self._decode(gen, logits, cache)  # 4. decode
        t3 = time.perf_counter()
        text = self._post_process(gen, prefix, suffix, language)  # 5. post-process
        if not (gen.cancelled or gen.cut) and s.kv_cache_mb:
            self.suggestions.put(key, text)
        shown = (prefix, suffix, "" if gen.cancelled else text)
        if not remember_answer and old is not None:
            shown = (old.prefix, old.suffix, old.text)
        self._keep(cache_key, DocState(gen.fed, cache, prompt.window_start, *shown, reuse.stale))
        return Completion(text=text, raw=gen.raw, new_tokens=len(gen.generated), decode_ms=(t3 - t2) * 1e3,
                          cancelled=gen.cancelled, cut=gen.cut, drafted=gen.drafted,
                          accepted_drafts=gen.accepted_drafts, **done)

    @torch.inference_mode()
    def warm(self, prefix: str, suffix: str = "", *, cache_key: str, should_stop: Callable[[], bool] | None = None,
             snippets: Sequence[str] = ()) -> int:
        """Background warm-up: compute the keys/values of the prompt a request at this cursor would
        have, without decoding, so that the request itself only prefills what changes.

        Runs in chunks of :data:`WARM_CHUNK` tokens and polls ``should_stop`` between them
        (a user request waiting pre-empts it within one chunk); what was computed is kept
        for the document either way, within ``settings.kv_cache_mb``. The document's last
        suggestion (for typed-ahead) is kept.

        Returns:
            Prompt tokens prefilled now (tokens; 0 when everything was cached or it was stopped at once).
        """
        if should_stop is not None and should_stop():
            return 0
        self._use_threads()
        prompt = self._prompt(prefix, suffix, cache_key, snippets)
        old = self.docs.get(cache_key)
        ids = prompt.ids[:-1]  # the last prompt token is always recomputed by the request
        if not ids:
            return 0
        reuse = self.docs.take_reusable(cache_key, ids + prompt.ids[-1:])
        cache = reuse.cache if reuse.cache is not None else self.backend.new_cache()
        pos = reuse.reused
        while pos < len(ids) and not (should_stop is not None and should_stop()):
            end = min(len(ids), pos + WARM_CHUNK)
            _, cache = self._forward(ids[pos:end], cache, keep=1)
            pos = end
        shown = (old.prefix, old.suffix, old.text) if old is not None else (prefix, suffix, "")
        self._keep(cache_key, DocState(ids[:pos], cache, prompt.window_start, *shown))
        return pos - reuse.reused

    def _suggestion_key(self, prefix: str, suffix: str, snippets: Sequence[str], limit: int, block: bool) -> bytes:
        """:meth:`Suggestions.key` over the text that can enter this request's prompt."""
        s = self.settings
        return Suggestions.key(prefix[-s.prefix_tokens * 6:], suffix[: s.suffix_tokens * 6] if self.fim else "",
                               snippets, limit, block, s.fim_layout)

    def _use_threads(self) -> int:
        """Set the backend's threads from ``settings.threads`` or, for 0, the cores free now but at most
        :attr:`max_threads` (what the caller set up: a benchmark at one thread stays at one); returns them."""
        threads = self.settings.threads or min(self.max_threads, self.cores.threads())
        self.backend.set_threads(threads)
        return threads

    def _prompt(self, prefix: str, suffix: str, cache_key: str | None, snippets: Sequence[str]) -> _Prompt:
        """Step 1: the prompt's token ids (document window, snippets, FIM layout), token-healed."""
        start = (self.docs.window_start(cache_key, prefix, self.settings.prefix_tokens, self.tokenizer)
                 if cache_key is not None else None)
        context = self.pack_context(snippets) if snippets and self.settings.context_tokens else []
        ids, healed = self.healer.heal(self.build_prompt(prefix, suffix, window_start=start, context=context))
        return _Prompt(ids, healed, start or 0, len(context))

    def _forward(self, ids: list[int], cache: Any, keep: int) -> tuple[torch.Tensor, Any]:
        """One forward pass of ``ids`` [tokens] after ``cache`` through the backend (see
        :meth:`pocketpilot.runtime.backends.Backend.forward`): logits ``[keep, vocab]`` and the cache."""
        return self.backend.forward(ids, cache, keep)

    @torch.inference_mode()
    def _prefill(
        self, ids: list[int], cache_key: str | None, should_stop: Callable[[], bool] | None = None,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor | None, Any, Reuse, int]:
        """Steps 2 and 3: reuse the document's cached keys/values, then run the rest of the prompt.

        New tokens go through in chunks of ``chunk`` tokens (default: :data:`WARM_CHUNK`, doubling
        up to :data:`PREFILL_CHUNK`); ``should_stop`` is polled between chunks. At least the last prompt token is always recomputed. The document's
        state is taken out of :attr:`docs`; :meth:`complete` puts the new one back. With
        ``settings.fim_layout`` psm-shift, a FIM suffix that only moved (the user typed in the
        prefix) keeps its cached keys/values, moved to the new positions
        (:meth:`pocketpilot.runtime.backends.Backend.splice`).

        Returns:
            ``(logits, cache, reuse, fed)``: ``logits`` [vocab] of the last prompt token (``None``
            if cancelled), the cache, the :class:`Reuse` found (``reused`` counts moved tokens
            too), and the count of prompt tokens whose keys/values are now in ``cache`` (tokens).
        """
        anchor = None
        if self.fim is not None and self.settings.fim_layout == "psm-shift" and self.backend.can_shift:
            anchor = _index(ids, self.fim[1])
        reuse = self.docs.take_reusable(cache_key, ids, anchor, max_stale=MAX_STALE)
        cache, pos = reuse.cache, reuse.reused
        if cache is None:
            cache = self.backend.new_cache()
        if reuse.move_len:
            cache = self.backend.splice(cache, reuse.reused, ids[reuse.reused:anchor], reuse.move_src, reuse.move_len)
            pos = anchor + reuse.move_len
            reuse = Reuse(cache, reuse.reused + reuse.move_len, reuse.move_src, reuse.move_len, reuse.stale)
        step = chunk or min(WARM_CHUNK, PREFILL_CHUNK)
        while True:
            end = min(len(ids), pos + step)
            rows, cache = self._forward(ids[pos:end], cache, keep=1)
            pos = end
            step = step if chunk else min(step * 2, PREFILL_CHUNK)
            if pos == len(ids):
                return rows[-1], cache, reuse, pos
            if should_stop is not None and should_stop():
                return None, cache, reuse, pos

    def _decode(self, gen: Generation, logits: torch.Tensor, cache: Any) -> Any:
        """Step 4: greedy decoding from the prompt's last ``logits`` [vocab] until ``gen`` ends.

        Each step runs the chosen token plus up to ``settings.draft_tokens`` prompt-lookup drafts
        (none while healed text is being written back) in one forward pass and keeps the drafts
        the model agrees with. Returns the cache, holding the keys/values of ``gen.fed``.
        """
        next_id, heal_left = self.healer.pick(logits, gen.healed)
        while gen.take(next_id):
            room = min(self.settings.draft_tokens, gen.room)
            drafts = [] if heal_left or room <= 0 else lookup_draft(gen.fed + [next_id], room)
            rows, cache = self._forward([next_id, *drafts], cache, keep=len(drafts) + 1)
            gen.fed.append(next_id)
            next_id, heal_left = self.healer.pick(rows[0], heal_left)
            gen.drafted += len(drafts)
            next_id, ended = gen.accept_drafts(drafts, rows, next_id, self.healer.pick)
            crop_to(cache, len(gen.fed))  # drop the keys/values of rejected drafts
            if ended:
                break
        return cache

    def _post_process(self, gen: Generation, prefix: str, suffix: str, language: str | None) -> str:
        """Step 5: the text to insert, from the decoded text (see :func:`finalize`); after a time
        budget cut, from its complete lines only."""
        tail = prefix[-4000:]
        raw = gen.complete_lines if gen.cut else gen.raw
        return finalize(raw, gen.line_prefix, suffix, still_open=open_brackets(tail, language),
                        opener_indent=gen.opener, uses_tabs=_uses_tabs(tail), truncated=gen.truncated)

    def _keep(self, cache_key: str | None, state: DocState) -> None:
        """Remember a document's state for its next request (nothing without a ``cache_key``)."""
        if cache_key is not None and state.cache is not None:
            self.docs.remember(cache_key, state, self.settings.kv_cache_mb * 1_000_000)


def _index(ids: list[int], token: int) -> int | None:
    """Index of the first ``token`` in ``ids``, or ``None``."""
    try:
        return ids.index(token)
    except ValueError:
        return None


def _fim_ids(vocab: dict[str, int]) -> tuple[int, int, int] | None:
    """``(prefix, suffix, middle)`` token ids of the first of :data:`FIM_STYLES` the vocabulary has."""
    for style in FIM_STYLES:
        if all(t in vocab for t in style):
            return tuple(vocab[t] for t in style)  # type: ignore[return-value]
    return None


def _stop_ids(tokenizer: Any, vocab: dict[str, int]) -> set[int]:
    """Token ids that end generation: special tokens, EOS and :data:`STOP_TOKENS`."""
    ids = set(tokenizer.all_special_ids or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for name in STOP_TOKENS:
        if name in vocab:
            ids.add(vocab[name])
    return ids


def _kv_bytes_per_token(cfg: Any, dtype: torch.dtype) -> int:
    """Bytes of keys + values one token takes in the KV cache, from a transformers model config (bytes)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    elem = torch.finfo(dtype).bits // 8
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * elem


def _uses_tabs(text: str) -> bool:
    """True when the last indented line of ``text`` is indented with a tab."""
    for line in reversed(text.split("\n")):
        ws = indentation(line)
        if ws and line.strip():
            return ws.startswith("\t")
    return False
