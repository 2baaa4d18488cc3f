"""Completion engine: prompt building (FIM or prefix), greedy decoding with a KV cache, stops."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from pocketpilot.runtime.loader import LoadedModel
from pocketpilot.runtime.postprocess import finalize
from pocketpilot.runtime.settings import EngineSettings

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
    """

    text: str
    raw: str
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    decode_ms: float
    cancelled: bool = False

    @property
    def total_ms(self) -> float:
        """Prefill plus decode time (ms)."""
        return self.prefill_ms + self.decode_ms


class CompletionEngine:
    """Greedy code completion from a :class:`LoadedModel`.

    Uses a fill-in-the-middle prompt (prefix + suffix) when the tokenizer has FIM tokens,
    else the prefix alone. Not thread-safe: call from one worker thread.
    """

    def __init__(self, loaded: LoadedModel, settings: EngineSettings | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.settings = settings or EngineSettings()
        vocab = self.tokenizer.get_vocab()
        self.fim: tuple[int, int, int] | None = None
        for style in FIM_STYLES:
            if all(t in vocab for t in style):
                self.fim = tuple(vocab[t] for t in style)  # type: ignore[assignment]
                break
        self.stop_ids = self._stop_ids(vocab)

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

    def build_prompt(self, prefix: str, suffix: str) -> list[int]:
        """Token ids of the prompt: FIM ``<prefix>P<suffix>S<middle>`` or just ``P``.

        The prefix keeps its last ``prefix_tokens`` tokens and the suffix its first
        ``suffix_tokens`` tokens (text is cut to about 6 characters a token first).
        """
        s = self.settings
        p_ids = self._encode(prefix[-s.prefix_tokens * 6 :])[-s.prefix_tokens :]
        if self.fim is None:
            return p_ids or [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id or 0]
        s_ids = self._encode(suffix[: s.suffix_tokens * 6])[: s.suffix_tokens] if s.suffix_tokens else []
        fp, fs, fm = self.fim
        return [fp, *p_ids, fs, *s_ids, fm]

    @torch.inference_mode()
    def complete(
        self,
        prefix: str,
        suffix: str = "",
        *,
        max_new_tokens: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Completion:
        """Complete the code at the cursor between ``prefix`` and ``suffix``.

        Args:
            prefix: document text before the cursor.
            suffix: document text after the cursor.
            max_new_tokens: override of ``settings.max_new_tokens`` (tokens).
            should_stop: polled between decode steps; returning True cancels (the partial text
                is returned with ``cancelled=True``).

        Returns:
            A :class:`Completion`; in single-line mode its text ends before the first newline.
        """
        limit = max_new_tokens or self.settings.max_new_tokens
        ids = self.build_prompt(prefix, suffix)
        t0 = time.perf_counter()
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        next_id = int(out.logits[0, -1].argmax())
        t1 = time.perf_counter()
        generated: list[int] = []
        raw = ""
        cancelled = False
        while True:
            if next_id in self.stop_ids:
                break
            generated.append(next_id)
            raw = self.tokenizer.decode(generated, skip_special_tokens=True)
            if not self.settings.multiline and "\n" in raw:
                break
            if len(generated) >= limit:
                break
            if should_stop is not None and should_stop():
                cancelled = True
                break
            out = self.model(
                input_ids=torch.tensor([[next_id]]), past_key_values=cache, use_cache=True, logits_to_keep=1
            )
            cache = out.past_key_values
            next_id = int(out.logits[0, -1].argmax())
        t2 = time.perf_counter()
        line_prefix = prefix.rsplit("\n", 1)[-1]
        text = finalize(raw, line_prefix, suffix, multiline=self.settings.multiline)
        return Completion(
            text=text,
            raw=raw,
            prompt_tokens=len(ids),
            new_tokens=len(generated),
            prefill_ms=(t1 - t0) * 1e3,
            decode_ms=(t2 - t1) * 1e3,
            cancelled=cancelled,
        )

