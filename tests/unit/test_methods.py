"""Every registered quantization method: its declared facts match what it really writes and runs."""

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from pocketpilot.compression.methods import METHODS, QuantMethod, get_method
from pocketpilot.errors import UnknownMethodError

#: big enough that per-row scales cost what they cost in real models (about 1% at 256 inputs)
CONFIG = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def _model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()


def _stored_bytes(folder) -> dict[str, int]:
    """Bytes stored for the decoder layers' linears ("body") and for the embedding / LM head ("head")."""
    out = {"body": 0, "head": 0}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                t = st.get_tensor(key)
                if key.startswith("model.layers.") and "norm" not in key:
                    out["body"] += t.numel() * t.element_size()
                elif "embed_tokens" in key or "lm_head" in key:
                    out["head"] += t.numel() * t.element_size()
    return out


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.engine == "torch"])  # GGUF: tests/slow
def test_declared_bytes_per_weight_match_the_artifact_written(name, tmp_path):
    method = METHODS[name]
    if not method.available():
        pytest.skip(f"{name} needs {', '.join(method.missing())}")
    if method.requires and torch.cuda.is_available():
        pytest.skip("CUDA present: bitsandbytes quantizes on the GPU")
    model = _model()
    body = sum(m.weight.numel() for n, m in model.named_modules() if n.startswith("model.layers.")
               and isinstance(m, torch.nn.Linear))
    head = model.get_input_embeddings().weight.numel()  # tied: stored once
    method.apply(model, tmp_path, None)
    stored = _stored_bytes(tmp_path)
    assert stored["body"] / body == pytest.approx(method.body_bytes_per_weight, rel=0.03), stored
    assert stored["head"] / head == pytest.approx(method.head_bytes_per_weight, rel=0.03), stored
    assert method.weight_bytes(body, head) == pytest.approx(stored["body"] + stored["head"], rel=0.03)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.chooser and m.engine == "torch"])
def test_every_chooser_method_can_be_probed_in_memory(name):  # llama.cpp methods: test_gguf.py
    method = METHODS[name]
    if not method.available():
        pytest.skip(f"{name} needs {', '.join(method.missing())}")
    lin = torch.nn.Linear(256, 64, bias=False)
    probe = method.probe_linear(lin)
    if probe is None:  # a backend that cannot run here (bitsandbytes without its CPU kernels)
        pytest.skip(f"{name} cannot run on this machine")
    layer, x = probe
    with torch.inference_mode():
        assert layer(x).shape == (1, 64)
        model = method.in_memory(_model())
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, CONFIG["vocab_size"])


def test_kernels_name_registered_methods_and_lookups_fail_clearly():
    for m in METHODS.values():
        assert m.body_kernel in METHODS and m.head_kernel in METHODS, m.name
        assert isinstance(m, QuantMethod) and m.description
    assert list(METHODS)[0] == "int8"  # the default is listed first
    with pytest.raises(UnknownMethodError, match="unknown method 'int3'; supported: int8, "):
        get_method("int3")
    with pytest.raises(ValueError, match="compute_dtype"):
        QuantMethod("x", "x", 1.0, 1.0, "float16", 0, apply=None, in_memory=None, probe_linear=None)


def test_a_new_method_is_one_module(tmp_path, monkeypatch):
    # adding a method is adding one file to compression/methods/: the registry finds it, and the
    # chooser's predictions and the size model read its facts from the object alone
    from pocketpilot.compression import methods
    from pocketpilot.compression.hardware import SpeedProbe
    from pocketpilot.compression.recipe import predict
    from pocketpilot.compression.shapes import TEACHERS

    (tmp_path / "half.py").write_text(
        "from pocketpilot.compression.methods import QuantMethod\n"
        "from pocketpilot.compression.methods.bf16 import METHOD as BF16\n"
        "METHOD = QuantMethod(name='half', description='test method', body_bytes_per_weight=0.5,\n"
        "                     head_bytes_per_weight=1.0, compute_dtype='bfloat16', quality_tier=1, apply=BF16.apply,\n"
        "                     in_memory=BF16.in_memory, probe_linear=BF16.probe_linear, head_kernel='int8')\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    found = methods._discover()
    assert "half" in found and set(METHODS) < set(found)
    half, t = found["half"], TEACHERS[1]
    speed = SpeedProbe("cpu", {}, {"int8": 10.0}, {f"{t.alias}/half": {"decode_ms": 0.1, "prefill_ms": 1.0}}, 0.5)
    p = predict(t, half, speed)
    assert p["weights_bytes"] == int(t.body_params * 0.5 + t.head_params * 1.0)
    head_ms = t.vocab * t.hidden * 1.0 / 10e9 * 1e3  # the int8 head kernel's bandwidth, the method's head bytes
    assert p["decode_ms_per_token"] == pytest.approx(0.5 + t.layers * 0.1 + head_ms, rel=1e-3)
