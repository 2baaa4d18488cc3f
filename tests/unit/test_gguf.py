"""GGUF export and the llama.cpp methods, without llama.cpp: what the gguf package reads back."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pocketpilot.compression.gguf_export import _permute_rope, export_gguf
from pocketpilot.compression.methods import METHODS
from pocketpilot.compression.methods._gguf import file_type, not_from_torch
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.store import weight_files


def _tiny(arch):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_writes_every_weight_under_its_gguf_name(arch, tmp_path):
    from gguf import GGUFReader

    model = _tiny(arch)
    out = tmp_path / "m.gguf"
    export_gguf(model, out)
    r = GGUFReader(str(out))
    names = {t.name: t for t in r.tensors}
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == arch
    assert "token_embd.weight" in names and "output.weight" not in names  # tied head: stored once
    assert {"blk.1.attn_q.weight", "blk.1.ffn_down.weight", "blk.0.attn_norm.weight", "output_norm.weight"} <= set(names)
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")
    q = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    stored = np.asarray(names["blk.0.attn_q.weight"].data).reshape(q.shape)
    # Llama's q rows are reordered for llama.cpp's RoPE pairs; Qwen2's are not
    assert np.array_equal(stored, _permute_rope(q, 4) if arch == "llama" else q)
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 64 and weight_files(tmp_path) == [out]


def test_rope_permutation_pairs_the_two_halves_of_each_head():
    w = np.arange(8)[:, None].astype(np.float32)  # one head, head_dim 8: rows 0..7
    assert _permute_rope(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_tokenizer_fields_are_copied_from_a_gguf(tmp_path):
    from gguf import GGUFReader

    src = tmp_path / "src.gguf"
    export_gguf(_tiny("llama"), src)
    out = tmp_path / "student.gguf"
    export_gguf(_tiny("llama"), out, tokenizer_gguf=src)
    a, b = GGUFReader(str(src)).fields, GGUFReader(str(out)).fields
    assert [bytes(a["tokenizer.ggml.tokens"].parts[i]) for i in a["tokenizer.ggml.tokens"].data] == \
        [bytes(b["tokenizer.ggml.tokens"].parts[i]) for i in b["tokenizer.ggml.tokens"].data]


def test_unsupported_architecture_and_gguf_method_facts():
    cfg = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=32)
    with pytest.raises(ArtifactError, match="cannot export model type 'gpt2'"):
        export_gguf(AutoModelForCausalLM.from_config(cfg), None)
    gguf_methods = [m for m in METHODS.values() if m.engine == "llama.cpp"]
    assert {m.gguf_type for m in gguf_methods} == {"Q8_0", "Q4_K_M"}
    assert file_type("Q8_0") == 7 and file_type("Q4_K_M") == 15  # llama.h's LLAMA_FTYPE_MOSTLY_*
    assert all(("llama_cpp", "llama-cpp-python") in m.requires for m in gguf_methods)
    with pytest.raises(PocketPilotError, match="written from the teacher's GGUF"):
        not_from_torch(None, None, None)
