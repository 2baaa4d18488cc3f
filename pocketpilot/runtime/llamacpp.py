"""llama.cpp as a second engine: a GGUF artifact served through llama-cpp-python behind :class:`Backend`.

An artifact of a ``gguf-*`` method holds ``model.gguf`` beside the teacher's ``config.json`` and
tokenizer files; the completion engine keeps tokenizing with the Hugging Face tokenizer (its ids
are the GGUF vocabulary's: the teacher folder was converted from that very GGUF) and only the
forward pass runs in llama.cpp. The KV cache lives in llama.cpp's context, in one sequence:
:class:`LlamaSeq` is the engine's handle on it and records which tokens it stands for; when a
handle whose tokens the context no longer holds is used (another document was completed
meanwhile), the context is cut back to the longest common prefix and the rest is run again.

llama-cpp-python is the optional extra ``llamacpp`` (it compiles llama.cpp at install time:
about 15 minutes on 2 cores); without it, loading such an artifact raises
:class:`MissingDependencyError` with the pip command.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketpilot.errors import ArtifactError, MissingDependencyError

log = logging.getLogger(__name__)

#: the weights file of a llama.cpp artifact
GGUF_FILE = "model.gguf"
#: what to install for the llama.cpp engine
PIP_HINT = "pip install 'pocketpilot[llamacpp]' (llama-cpp-python; compiles llama.cpp, about 15 minutes on 2 cores)"
#: tokens of context llama.cpp allocates keys/values for (the engine's prompts are at most ~800)
N_CTX = 4096
#: most tokens per llama_decode call
N_BATCH = 512


_backend_ready = False


def _backend_init(lib: Any) -> None:
    """``llama_backend_init`` once per process."""
    global _backend_ready
    if not _backend_ready:
        lib.llama_backend_init()
        _backend_ready = True


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module.

    Raises:
        MissingDependencyError: llama-cpp-python is not installed (the message gives the pip command).
    """
    try:
        return importlib.import_module("llama_cpp")  # lazy: the optional `llamacpp` extra
    except ImportError:
        raise MissingDependencyError(f"the llama.cpp engine needs llama-cpp-python: {PIP_HINT}") from None


def default_threads() -> int:
    """CPU threads for llama.cpp: as many as torch uses in this process, so both engines compare alike."""
    return torch.get_num_threads()


class LlamaContext:
    """The few llama.cpp calls the engine needs, on one model and one context (sequence 0).

    Args:
        gguf: the GGUF file.
        n_ctx: context size (tokens).
        threads: CPU threads.

    Raises:
        MissingDependencyError: llama-cpp-python is missing.
        ArtifactError: llama.cpp cannot load the file.
    """

    def __init__(self, gguf: Path, n_ctx: int = N_CTX, threads: int | None = None) -> None:
        self.lib = lib = import_llama_cpp()
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback reads this level
        _backend_init(lib)
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if not self.model:
            raise ArtifactError(f"llama.cpp cannot load {gguf}: not a GGUF file it reads; rebuild the artifact "
                                f"with `pocketpilot compress --force`")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, N_BATCH, N_BATCH
        params.n_threads = params.n_threads_batch = threads or default_threads()
        params.n_seq_max, params.kv_unified = 2, True  # sequence 1 holds a chunk while it moves (see shift_chunk)
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            lib.llama_model_free(self.model)
            self.model = None
            raise ArtifactError(f"llama.cpp cannot make a context of {n_ctx} tokens for {gguf} (out of memory?)")
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model)))
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self._mem = lib.llama_get_memory(self.ctx)
        self._batch = lib.llama_batch_init(N_BATCH, 0, 1)

    def __del__(self):
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)

    def remove_from(self, pos: int) -> None:
        """Drop the keys/values of positions ``pos`` and later."""
        self.lib.llama_memory_seq_rm(self._mem, 0, pos, -1)

    @property
    def can_shift(self) -> bool:
        """True when the context can move cached keys to other positions (``llama_memory_can_shift``)."""
        can = getattr(self.lib, "llama_memory_can_shift", None)
        return bool(can is not None and hasattr(self.lib, "llama_memory_seq_add") and can(self._mem))

    def move_chunk(self, keep: int, src: int, length: int, middle: list[int]) -> None:
        """Keep positions ``< keep``, decode ``middle`` at ``keep``..., then put the cached chunk that
        was at ``src .. src + length - 1`` right after it.

        llama.cpp requires a sequence's new tokens to continue its highest position, so the chunk
        waits in sequence 1 while ``middle`` is decoded (``llama_memory_seq_cp`` shares cells of a
        unified cache, nothing is copied), is shifted there by the delta (``llama_memory_seq_add``:
        keys are re-rotated at the next decode) and comes back to sequence 0.

        Raises:
            RuntimeError: llama_decode failed.
        """
        lib, mem = self.lib, self._mem
        lib.llama_memory_seq_rm(mem, 1, -1, -1)
        lib.llama_memory_seq_cp(mem, 0, 1, src, src + length)
        lib.llama_memory_seq_rm(mem, 0, keep, -1)
        try:
            for i in range(0, len(middle), N_BATCH):
                self.decode(middle[i:i + N_BATCH], keep + i, 0)
        finally:
            delta = keep + len(middle) - src
            if delta:
                lib.llama_memory_seq_add(mem, 1, src, src + length, delta)
            lib.llama_memory_seq_cp(mem, 1, 0, src + delta, src + delta + length)
            lib.llama_memory_seq_rm(mem, 1, -1, -1)

    def set_threads(self, threads: int) -> None:
        """Threads for decode and prompt batches from the next call on (``llama_set_n_threads``)."""
        self.lib.llama_set_n_threads(self.ctx, threads, threads)

    def decode(self, ids: list[int], start: int, keep: int) -> np.ndarray | None:
        """Run ``ids`` at positions ``start``... (at most :data:`N_BATCH`); logits ``[keep, vocab]`` or ``None`` if ``keep`` is 0.

        Raises:
            RuntimeError: llama_decode failed (e.g. the context is full).
        """
        b = self._batch
        n = len(ids)
        for i, tok in enumerate(ids):
            b.token[i] = tok
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i >= n - keep
        b.n_tokens = n
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {n} tokens at position {start}")
        if not keep:
            return None
        rows = [np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                for i in range(n - keep, n)]
        return np.stack(rows)  # copies out of llama.cpp's buffer


@dataclass
class LlamaSeq:
    """The engine's handle on llama.cpp's KV cache: the tokens whose keys/values it stands for."""

    tokens: list[int] = field(default_factory=list)

    def get_seq_length(self) -> int:
        """Tokens held (tokens)."""
        return len(self.tokens)

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (a negative count, as transformers' caches take)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove:
            del self.tokens[len(self.tokens) + tokens_to_remove:]


class LlamaCppModel:
    """:class:`pocketpilot.runtime.backends.Backend` over a GGUF file run by llama.cpp.

    Attributes:
        config: the artifact's ``transformers`` config (layer count and head sizes, for the KV budget).
        gguf: the GGUF file.
        context: the :class:`LlamaContext`.
        held: tokens whose keys/values the llama.cpp context holds now (tokens).
    """

    engine = "llama.cpp"

    def __init__(self, gguf: Path, config: Any, context: LlamaContext) -> None:
        self.gguf, self.config, self.context = gguf, config, context
        self.held: list[int] = []
        self._threads: int | None = None

    def new_cache(self) -> LlamaSeq:
        """An empty :class:`LlamaSeq`."""
        return LlamaSeq()

    def forward(self, ids: list[int], cache: LlamaSeq, keep: int) -> tuple[torch.Tensor, LlamaSeq]:
        """See :meth:`pocketpilot.runtime.backends.Backend.forward`.

        The context is first brought to ``cache.tokens``: cut back to the longest common prefix
        with what it holds, and the rest run again (nothing to run while one document is typed in).

        Raises:
            ArtifactError: the prompt does not fit the context (:data:`N_CTX` tokens).
        """
        target = cache.tokens
        common = 0
        for a, b in zip(self.held, target):
            if a != b:
                break
            common += 1
        if common < len(self.held):
            self.context.remove_from(common)
            del self.held[common:]
        if len(target) + len(ids) > self.context.n_ctx:
            raise ArtifactError(f"prompt of {len(target) + len(ids)} tokens exceeds llama.cpp's context of "
                                f"{self.context.n_ctx}")
        self._run(target[common:], keep=0)
        logits = self._run(list(ids), keep=keep)
        cache.tokens = list(self.held)
        return (torch.from_numpy(logits) if logits is not None else torch.empty(0)), cache

    def set_threads(self, threads: int) -> None:
        """See :meth:`pocketpilot.runtime.backends.Backend.set_threads`."""
        if threads != self._threads:
            self.context.set_threads(threads)
            self._threads = threads

    @property
    def can_shift(self) -> bool:
        """See :meth:`pocketpilot.runtime.backends.Backend.can_shift` (asked of the context)."""
        return bool(getattr(self.context, "can_shift", False))

    def splice(self, cache: LlamaSeq, keep: int, middle: list[int], src: int, length: int) -> LlamaSeq:
        """See :meth:`pocketpilot.runtime.backends.Backend.splice`, done in llama.cpp's cache
        (:meth:`LlamaContext.move_chunk`).

        Raises:
            NotImplementedError: :attr:`can_shift` is False.
        """
        if not self.can_shift:
            raise NotImplementedError("this llama.cpp context cannot shift cached keys")
        self.forward([], cache, keep=0)  # bring the context to cache.tokens
        chunk = self.held[src:src + length]
        del self.held[keep:]
        self.context.move_chunk(keep, src, length, middle)
        self.held.extend(middle)
        self.held.extend(chunk)
        cache.tokens = list(self.held)
        return cache

    def _run(self, ids: list[int], keep: int) -> np.ndarray | None:
        """Append ``ids`` to the context in batches of :data:`N_BATCH`; logits of the last ``keep``."""
        out = None
        for i in range(0, len(ids), N_BATCH):
            chunk = ids[i:i + N_BATCH]
            last = i + N_BATCH >= len(ids)
            out = self.context.decode(chunk, len(self.held), min(keep, len(chunk)) if last else 0)
            self.held.extend(chunk)
        return out


def load_gguf_folder(folder: Path, tokenizer: Any, config: Any, threads: int | None = None) -> LlamaCppModel:
    """A :class:`LlamaCppModel` for a llama.cpp artifact folder (``model.gguf``, ``config.json``, tokenizer).

    Raises:
        MissingDependencyError: llama-cpp-python is missing.
        ArtifactError: llama.cpp cannot load the file, or its vocabulary is smaller than the tokenizer's.
    """
    context = LlamaContext(folder / GGUF_FILE, threads=threads or default_threads())
    if context.n_vocab < len(tokenizer):
        raise ArtifactError(f"{folder / GGUF_FILE} has {context.n_vocab} tokens, its tokenizer {len(tokenizer)}")
    return LlamaCppModel(folder / GGUF_FILE, config, context)


def gguf_file_type(path: Path) -> int | None:
    """``general.file_type`` of a GGUF file (a ``LLAMA_FTYPE_*`` number), read with the ``gguf`` package."""
    from gguf import GGUFReader  # lazy: only builds read it

    field_ = GGUFReader(str(path)).fields.get("general.file_type")
    return int(field_.parts[field_.data[0]][0]) if field_ is not None else None


def quantize_gguf(src: Path, dst: Path, ftype: int, threads: int | None = None) -> None:
    """Write ``src`` re-quantized to llama.cpp file type ``ftype`` (e.g. 7 = Q8_0) at ``dst``, with
    llama.cpp's own quantizer (``llama_model_quantize``; tensors already quantized are dequantized first).

    Raises:
        MissingDependencyError: llama-cpp-python is missing.
        ArtifactError: llama.cpp's quantizer failed.
    """
    lib = import_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or default_threads()
    params.allow_requantize = True
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ArtifactError(f"llama.cpp could not quantize {src.name} to file type {ftype} (code {rc})")

