"""The llama.cpp engine behind the completion engine's interface, with a stand-in for llama.cpp's context.

The stand-in runs the tiny torch model with the same calls llama.cpp answers (decode at
positions, remove positions, logits of the last rows), so the engine's KV bookkeeping over a
single llama.cpp sequence is checked against the torch engine's completions.
"""

import sys

import numpy as np
import pytest
import torch

from pocketpilot.errors import MissingDependencyError
from pocketpilot.runtime import CompletionEngine, load_model_folder
from pocketpilot.runtime.kvcache import cache_keyword, crop_to, new_cache, returned_cache
from pocketpilot.runtime.llamacpp import GGUF_FILE, LlamaCppModel, LlamaSeq
from pocketpilot.runtime.loader import LoadedModel

PROMPTS = [("def add(a, b):\n    return", "\n"), ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n", ""),
           ("import os\nimport sys\n\ndef main():\n    ", "\n"), ("def add(a, b):\n    retu", "\n")]


class TorchContext:
    """Stands in for :class:`pocketpilot.runtime.llamacpp.LlamaContext`: one sequence, positions checked."""

    def __init__(self, model, n_ctx=4096):
        self.model, self.n_ctx = model, n_ctx
        self.n_vocab = model.config.vocab_size
        self.cache = new_cache()
        self.decoded = 0  # tokens run, to check what reuse saves

    def remove_from(self, pos):
        crop_to(self.cache, pos)

    def set_threads(self, threads):
        self.threads = threads

    @torch.inference_mode()
    def decode(self, ids, start, keep):
        assert start == self.cache.get_seq_length(), "positions must continue the sequence"
        out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=max(keep, 1),
                         **{cache_keyword(self.model): self.cache})
        self.cache = returned_cache(out)
        self.decoded += len(ids)
        return out.logits[0, -keep:].float().numpy().copy() if keep else None


@pytest.fixture
def engines(tiny_teacher):
    torch_loaded = load_model_folder(tiny_teacher)
    ctx = TorchContext(torch_loaded.model)
    llm = LlamaCppModel(tiny_teacher / GGUF_FILE, torch_loaded.model.config, ctx)
    llama_loaded = LoadedModel(model=llm, tokenizer=torch_loaded.tokenizer, dtype=torch.float16, folder=tiny_teacher,
                               engine="llama.cpp")
    return CompletionEngine(torch_loaded), CompletionEngine(llama_loaded), ctx


def test_llama_cpp_engine_gives_the_torch_engines_completions(engines):
    ref, llama, _ = engines
    assert llama.backend.engine == "llama.cpp" and ref.backend.engine == "torch"
    for prefix, suffix in PROMPTS:
        a, b = ref.complete(prefix, suffix), llama.complete(prefix, suffix)
        assert (b.text, b.new_tokens) == (a.text, a.new_tokens), prefix
        assert b.drafted == a.drafted and b.accepted_drafts == a.accepted_drafts


def test_typing_in_one_document_reuses_the_sequence_and_switching_documents_resyncs(engines):
    ref, llama, ctx = engines
    base = "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return"
    first = llama.complete(base, "\n", cache_key="a")
    before = ctx.decoded
    second = llama.complete(base + " x", "\n", cache_key="a")
    assert second.reused_tokens > 0 and ctx.decoded - before < second.prompt_tokens  # only the new tail ran
    other = llama.complete("import os\n", "", cache_key="b")  # the context now holds document b
    again = llama.complete(base + " x", "\n", cache_key="a")  # back to a: cut back and re-run, same answer
    for got, (p, s) in ((first, (base, "\n")), (other, ("import os\n", "")), (again, (base + " x", "\n"))):
        assert got.text == ref.complete(p, s).text


def test_seq_handle_crops_like_a_transformers_cache():
    seq = LlamaSeq([1, 2, 3, 4])
    seq.crop(-2)
    assert seq.tokens == [1, 2] and seq.get_seq_length() == 2
    with pytest.raises(ValueError):
        seq.crop(1)


def test_overlong_prompt_is_a_clear_error(engines):
    from pocketpilot.errors import ArtifactError

    _, llama, ctx = engines
    ctx.n_ctx = 8
    with pytest.raises(ArtifactError, match="exceeds llama.cpp's context"):
        llama.backend.forward(list(range(5, 15)), llama.backend.new_cache(), 1)


def test_a_gguf_folder_without_llama_cpp_names_the_pip_command(tiny_teacher, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "art"
    shutil.copytree(tiny_teacher, folder)
    (folder / GGUF_FILE).write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'pocketpilot\[llamacpp\]'"):
        load_model_folder(folder)


def test_logits_rows_are_float32_and_keep_many(engines):
    _, llama, _ = engines
    ids = llama.tokenizer.encode("def add(a, b):\n", add_special_tokens=False)
    rows, cache = llama.backend.forward(ids, llama.backend.new_cache(), 3)
    assert rows.shape[0] == 3 and rows.dtype == torch.float32 and cache.tokens == ids
    assert np.isfinite(rows.numpy()).all()
