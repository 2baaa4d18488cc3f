"""Moving cached keys in llama.cpp's cache gives the cold logits on a one-layer model (needs llama-cpp-python).

On one layer, a token's keys and values depend only on the token and its position, so a chunk
moved to new positions must give exactly what computing it there gives (up to llama.cpp's f16
KV cache). Skips where llama-cpp-python is not installed (CI installs only the test extra).
"""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pocketpilot.compression.gguf_export import export_gguf
from pocketpilot.runtime.backends import TorchBackend

pytest.importorskip("llama_cpp")

from pocketpilot.runtime.llamacpp import LlamaContext, LlamaCppModel  # noqa: E402


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen2", vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    out = tmp_path_factory.mktemp("one-layer") / "m.gguf"
    export_gguf(model, out)
    return model, LlamaCppModel(out, cfg, LlamaContext(out, n_ctx=512, threads=1))


@pytest.mark.parametrize("grow", [3, -2, 0])
def test_moved_chunk_gives_the_cold_logits(one_layer, grow):
    model, llm = one_layer
    assert llm.can_shift
    g = torch.Generator().manual_seed(1)
    head, chunk, last = (torch.randint(0, 96, (n,), generator=g).tolist() for n in (20, 30, 1))
    old_mid = torch.randint(0, 96, (5,), generator=g).tolist()
    new_mid = old_mid[:max(0, 5 + grow)] + torch.randint(0, 96, (max(0, grow),), generator=g).tolist()
    new_mid[0] = (old_mid[0] + 1) % 96  # differs right after the kept head
    new = head + new_mid + chunk + last
    for backend in (llm, TorchBackend(model)):
        cold, _ = backend.forward(new, backend.new_cache(), keep=1)
        _, cache = backend.forward(head + old_mid + chunk + last, backend.new_cache(), keep=1)
        cache = backend.splice(cache, len(head), new_mid, len(head) + len(old_mid), len(chunk))
        assert cache.get_seq_length() == len(new) - 1
        moved, _ = backend.forward(last, cache, keep=1)
        assert torch.allclose(moved.float(), cold.float(), atol=2e-2), (backend.engine, (moved - cold).abs().max())
        assert not torch.allclose(moved.float(), backend.forward(last, backend.new_cache(), keep=1)[0].float(),
                                  atol=2e-2)  # the context matters: the check can fail
