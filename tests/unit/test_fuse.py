"""Fused projections and folded input scales give the unfused model's logits."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pocketpilot.compression.methods._int4 import int4_linears
from pocketpilot.compression.methods._int8 import collect_linear_inputs, quantize_int8_modules
from pocketpilot.runtime.fuse import FusedLinear, FusedSlice, fuse_projections, shared_input_groups
from pocketpilot.runtime.int4 import Int4Linear
from pocketpilot.runtime.qlinear import Int8Linear

CONFIG = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)


def _calibrated(kind: str):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    calib = [torch.randint(0, 512, (1, 64)) for _ in range(2)]
    inputs = collect_linear_inputs(model, calib)
    if kind == "int4":
        int4_linears(model, inputs, group_size=32)
    quantize_int8_modules(model, inputs=inputs)
    return model


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fused_model_gives_the_same_logits_and_fewer_matmuls(kind, monkeypatch, pp_home):
    from pocketpilot.runtime import kernels

    monkeypatch.setenv(kernels.FORCE_ENV, "float32")  # int8 prefill in float32: folding is exact there
    model = _calibrated(kind)
    groups = shared_input_groups(model)
    assert len(groups) == 4  # q/k/v and gate/up in each of 2 layers
    for paths in groups:  # calibration chose one input scale per group
        scales = [model.get_submodule(p).input_scale for p in paths]
        assert all(s is not None and torch.equal(s, scales[0]) for s in scales)
    fused = fuse_projections(copy.deepcopy(model))  # counts only
    assert fused["fused"] == 4 and fused["folded"] >= 4
    ref_model, fast = model, copy.deepcopy(model)
    fuse_projections(fast)
    cls = Int4Linear if kind == "int4" else Int8Linear
    assert sum(isinstance(m, cls) for m in fast.model.layers.modules()) == 2 * 4  # fused qkv, o, fused gate/up, down
    assert sum(isinstance(m, FusedSlice) for m in fast.modules()) == 10
    ids = torch.randint(0, 512, (1, 40))
    with torch.inference_mode():
        a, b = ref_model(input_ids=ids).logits, fast(input_ids=ids).logits  # 40 rows: the prefill path
        a1, b1 = ref_model(input_ids=ids[:, :3]).logits, fast(input_ids=ids[:, :3]).logits  # decode-sized
    exact = 1e-4 if kind == "int8" else 2e-2  # int4 and decode rows run the kernels on bf16 activations
    assert torch.allclose(a, b, atol=exact) and torch.allclose(a1, b1, atol=2e-2)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.97


def test_groups_with_different_scales_stay_unfused():
    model = _calibrated("int8")
    attn = model.model.layers[0].self_attn
    attn.k_proj.input_scale = attn.k_proj.input_scale * 2  # an artifact calibrated per projection
    counts = fuse_projections(model)
    assert counts["fused"] == 3 and isinstance(model.model.layers[0].self_attn.k_proj, Int8Linear)
    assert isinstance(model.model.layers[1].self_attn.k_proj, FusedSlice)
    assert not any(isinstance(m, FusedLinear) and m._x is not None for m in model.modules())
