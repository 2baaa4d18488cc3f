"""The llama.cpp anchor: the teacher's own GGUF run through llama-cpp-python on the same prompts.

Users of llama.vim, Tabby or Continue run exactly this today, so PocketPilot's latency and ES
can be stated as ratios to it. llama-cpp-python compiles llama.cpp at install time (about 15
minutes on 2 cores): it is the optional extra ``bench`` and never runs in CI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pocketpilot.runtime.engine import FIM_STYLES
from pocketpilot.runtime.llamacpp import default_threads, import_llama_cpp


@dataclass
class BaselineCompletion:
    """One llama.cpp completion (the fields :mod:`pocketpilot.evaluation.line_completion` reads).

    Attributes:
        text: the completion (first line only; the request stops at a newline).
        total_ms: wall time of the request (ms).
        prompt_tokens, new_tokens: token counts.
        prefill_ms, decode_ms: llama.cpp's prompt-eval and eval times when it reports them, else 0 (ms).
    """

    text: str
    total_ms: float
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


class LlamaCppEngine:
    """A completion engine over llama-cpp-python with PocketPilot's prompt rules.

    The prompt is built as :class:`pocketpilot.runtime.CompletionEngine` builds it: the last
    ``prefix_tokens`` tokens of the prefix, and FIM (``<|fim_prefix|>`` ... ``<|fim_middle|>``
    with ``suffix_tokens`` of suffix) when the model's vocabulary has FIM tokens. Greedy
    (temperature 0), stopped at the end of the line.

    Args:
        gguf: path to the GGUF file.
        prefix_tokens, suffix_tokens: context budgets (tokens).
        max_new_tokens: decode limit (tokens).
        threads: CPU threads (default: the usable cores).

    Raises:
        MissingDependencyError: llama-cpp-python is not installed (the message gives the pip command).
    """

    def __init__(self, gguf: Path, prefix_tokens: int = 512, suffix_tokens: int = 128, max_new_tokens: int = 48,
                 threads: int | None = None):
        llama_cpp = import_llama_cpp()  # lazy: the optional `llamacpp` extra
        threads = threads or default_threads()
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=prefix_tokens + suffix_tokens + max_new_tokens + 16,
                                   n_threads=threads, verbose=False, logits_all=False)
        self.prefix_tokens, self.suffix_tokens, self.max_new_tokens = prefix_tokens, suffix_tokens, max_new_tokens
        self.fim = self._fim_tokens()

    def _fim_tokens(self) -> tuple[str, str, str] | None:
        for style in FIM_STYLES:
            ids = [self.llm.tokenize(t.encode(), add_bos=False, special=True) for t in style]
            if all(len(i) == 1 for i in ids):
                return style
        return None

    def _tail(self, text: str, budget: int) -> str:
        ids = self.llm.tokenize(text.encode(), add_bos=False)
        return self.llm.detokenize(ids[-budget:]).decode("utf-8", "ignore") if len(ids) > budget else text

    def _head(self, text: str, budget: int) -> str:
        ids = self.llm.tokenize(text.encode(), add_bos=False)
        return self.llm.detokenize(ids[:budget]).decode("utf-8", "ignore") if len(ids) > budget else text

    def prompt(self, prefix: str, suffix: str) -> str:
        """The prompt string for a cursor between ``prefix`` and ``suffix``."""
        prefix = self._tail(prefix, self.prefix_tokens)
        if self.fim:
            fp, fs, fm = self.fim
            return f"{fp}{prefix}{fs}{self._head(suffix, self.suffix_tokens)}{fm}"
        return prefix

    def complete(self, prefix: str, suffix: str = "", **_ignored) -> BaselineCompletion:
        """Greedy one-line completion; keyword arguments of the PocketPilot engine are accepted and ignored."""
        t0 = time.perf_counter()
        out = self.llm.create_completion(self.prompt(prefix, suffix), max_tokens=self.max_new_tokens,
                                         temperature=0.0, top_k=1, stop=["\n"])
        total = (time.perf_counter() - t0) * 1e3
        usage = out.get("usage") or {}
        timings = out.get("timings") or {}
        return BaselineCompletion(
            text=out["choices"][0]["text"], total_ms=total, prompt_tokens=int(usage.get("prompt_tokens", 0)),
            new_tokens=int(usage.get("completion_tokens", 0)),
            prefill_ms=float(timings.get("prompt_ms", 0.0)), decode_ms=float(timings.get("predicted_ms", 0.0)))
