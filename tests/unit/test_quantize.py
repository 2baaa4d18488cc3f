import errno
import json

import pytest
import torch
from torch import nn

from pocketpilot.compression import compress
from pocketpilot.store import list_artifacts, verify_artifact
from pocketpilot.runtime.loader import load_artifact
from pocketpilot.errors import ArtifactError, PocketPilotError, UnknownMethodError, UnknownTeacherError
from pocketpilot.runtime import CompletionEngine, load_model_folder
from pocketpilot.runtime.qlinear import Int8Linear, dequantize_per_channel, quantize_per_channel


def test_per_channel_quantization_error_is_bounded():
    torch.manual_seed(0)
    w = torch.randn(32, 48) * torch.linspace(0.01, 10, 32)[:, None]  # very different row ranges
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (32,)
    err = (dequantize_per_channel(q, s, torch.float32) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()  # at most half a step, per row


@pytest.mark.parametrize("rows", [1, 4, 64])  # int8 kernel (decode) and dequantized matmul (prefill)
def test_int8_linear_matches_float_linear(rows):
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=True)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(rows, 64)
    ref = lin(x)
    got = q(x.to(torch.bfloat16)).float()
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=0.08, rtol=0.05), (got - ref).abs().max()


def _reload_agreement(folder, loaded, tiny_teacher) -> float:
    """Share of next-token argmaxes ``loaded`` shares with the teacher; a second load gives identical logits."""
    teacher = load_model_folder(tiny_teacher)
    ids = torch.tensor([teacher.tokenizer.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        a = loaded.model(ids).logits.float()
        again = load_artifact(str(folder)).model(ids).logits.float()
        t = teacher.model(ids).logits
    assert torch.equal(a, again)
    return float((a.argmax(-1) == t.argmax(-1)).float().mean())


def test_int8_artifact_roundtrip_size_and_outputs(pp_home, tiny_teacher):
    res = compress(str(tiny_teacher), "int8", eval_tasks=0)
    m = res.manifest
    assert not res.reused and m.method == "int8"
    assert m.artifact_bytes <= 0.30 * m.teacher.fp32_bytes
    from safetensors import safe_open
    with safe_open(str(res.folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k.endswith("weight_int8")}
    assert dtypes == {"I8"}
    # loads without the teacher: outputs equal the in-memory quantized model, close to the teacher
    loaded = load_artifact(res.artifact_id)
    assert _reload_agreement(res.folder, loaded, tiny_teacher) > 0.9
    assert CompletionEngine(loaded).complete("def add(a, b):\n    return", "\n").text == " a + b"


@pytest.mark.parametrize("method, dtype", [("bf16", torch.bfloat16), ("none", torch.float32)])
def test_float_methods(pp_home, tiny_teacher, method, dtype):
    res = compress(str(tiny_teacher), method, eval_tasks=0, activate=False)
    loaded = load_artifact(str(res.folder))
    assert next(loaded.model.parameters()).dtype == dtype
    assert CompletionEngine(loaded).complete("def add(a, b):\n    return", "\n").text == " a + b"


def test_cache_reuse_force_and_list(pp_home, tiny_teacher):
    first = compress(str(tiny_teacher), "int8", eval_tasks=0)
    again = compress(str(tiny_teacher), "int8", eval_tasks=0)
    assert again.reused and again.manifest.created_at == first.manifest.created_at
    forced = compress(str(tiny_teacher), "int8", eval_tasks=0, force=True)
    assert not forced.reused
    rows = list_artifacts()
    assert [r["id"] for r in rows] == [first.artifact_id] and rows[0]["active"]
    assert rows[0]["artifact_bytes"] == first.manifest.artifact_bytes
    assert not list((pp_home / "tmp").iterdir())  # no leftovers from the rebuild


def test_unknown_teacher_and_method_write_nothing(pp_home, tiny_teacher):
    with pytest.raises(UnknownTeacherError, match="packaged alias"):
        compress("no-such-model", "int8")
    with pytest.raises(UnknownMethodError, match="supported: int8, int4, int8-fhead, bf16, gguf-q8_0, gguf-q4_k_m, none, bnb-int8, bnb-nf4"):
        compress(str(tiny_teacher), "int3")
    with pytest.raises(UnknownTeacherError, match="not found"):
        compress("./missing/model.gguf")
    assert not pp_home.exists()


def test_corrupt_and_partial_artifacts_are_detected_with_the_fix(pp_home, tiny_teacher):
    res = compress(str(tiny_teacher), "int8", eval_tasks=0)
    weights = res.folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"corrupt: model.safetensors fails its sha256 check; rebuild it with: "
                                            r"pocketpilot compress --teacher .* --method int8 --force"):
        load_artifact()
    # compress notices and rebuilds without --force
    assert not compress(str(tiny_teacher), "int8", eval_tasks=0).reused
    verify_artifact(res.folder)
    (res.folder / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifact()
    assert not list_artifacts()[0]["ok"]


def test_out_of_disk_leaves_nothing_half_written(pp_home, tiny_teacher, monkeypatch):
    import dataclasses

    from pocketpilot.compression import methods

    def full_disk(model, out, calibration=None):
        (out / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(methods.METHODS, "int8", dataclasses.replace(methods.METHODS["int8"], apply=full_disk))
    with pytest.raises(PocketPilotError, match="out of disk space"):
        compress(str(tiny_teacher), "int8", eval_tasks=0)
    assert not (pp_home / "artifacts").exists() or not list((pp_home / "artifacts").iterdir())
    assert not list((pp_home / "tmp").iterdir())
    assert not (pp_home / "active.json").exists()


def test_manifest_records_teacher_recipe_versions_and_hashes(pp_home, tiny_teacher):
    res = compress(str(tiny_teacher), "int8", eval_tasks=3)
    m = json.loads((res.folder / "manifest.json").read_text())
    assert m["teacher"]["kind"] == "folder" and m["teacher"]["sha256"]["model.safetensors"]
    assert set(m["versions"]) >= {"torch", "transformers", "pocketpilot"}
    assert m["files"]["model.safetensors"]["bytes"] == (res.folder / "model.safetensors").stat().st_size
    assert m["metrics"]["artifact"]["n"] == 3 and "es_delta" in m["metrics"]


def test_misaligned_int8_weights_are_safe_and_loaded_weights_are_aligned(pp_home, tiny_teacher):
    # torch._weight_int8pack_mm crashes on misaligned weights for 2..16 input rows
    from pocketpilot.runtime.qlinear import align_int8_buffers, is_aligned

    torch.manual_seed(0)
    lin = nn.Linear(576, 576, bias=False)
    q = Int8Linear.from_linear(lin)
    buf = torch.empty(576 * 576 + 8, dtype=torch.int8)
    buf[8:] = q.weight_int8.flatten()
    q.weight_int8 = buf[8:].view(576, 576)
    assert not is_aligned(q.weight_int8)
    x = torch.randn(15, 576)
    assert torch.allclose(q(x), lin(x), atol=0.1, rtol=0.05)  # no crash: dequantizing path
    assert align_int8_buffers(q) == 1 and is_aligned(q.weight_int8)
    res = compress(str(tiny_teacher), "int8", eval_tasks=0)
    loaded = load_artifact(res.artifact_id)
    assert all(is_aligned(m.weight_int8) for m in loaded.model.modules() if hasattr(m, "weight_int8"))


def test_bnb_methods_are_registered_and_a_missing_package_names_the_pip_command(pp_home, tiny_teacher, monkeypatch):
    import importlib.util

    from pocketpilot.compression.methods import METHODS
    from pocketpilot.errors import MissingDependencyError

    assert {"bnb-int8", "bnb-nf4"} <= set(METHODS)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install bitsandbytes"):
        compress(str(tiny_teacher), "bnb-nf4", eval_tasks=0)
    assert not (pp_home / "artifacts").exists() or not list((pp_home / "artifacts").iterdir())


def _bnb_usable_on(device: str) -> bool:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    return device == "cpu" or torch.cuda.is_available()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("method, layer", [("bnb-int8", "Linear8bitLt"), ("bnb-nf4", "Linear4bit")])
def test_bnb_artifact_roundtrip(pp_home, tiny_teacher, method, layer, device):
    if not _bnb_usable_on(device):
        pytest.skip(f"bitsandbytes{' with CUDA' if device == 'cuda' else ''} not available")
    if device == "cpu" and torch.cuda.is_available():
        pytest.skip("CUDA present: bitsandbytes quantizes on the GPU")
    res = compress(str(tiny_teacher), method, eval_tasks=0, activate=False)
    m = res.manifest
    assert m.method == method and m.recipe["quantized_modules"].get(layer, 0) >= 7
    assert m.artifact_bytes < 0.6 * m.teacher.fp32_bytes
    assert not (res.folder / ".float").exists()
    loaded = load_artifact(str(res.folder))
    assert any(type(mod).__name__ == layer for mod in loaded.model.modules())
    teacher = load_model_folder(tiny_teacher)
    ids = torch.tensor([teacher.tokenizer.encode("for item in items:\n    total = total + item\n")])
    with torch.no_grad():
        a = loaded.model(ids.to(loaded.model.device)).logits.float().cpu()
        t = teacher.model(ids).logits
    assert a.shape == t.shape and torch.isfinite(a).all()
    # the tiny model (hidden size 64) is far more fragile than real ones, so only a loose agreement
    assert (a.argmax(-1) == t.argmax(-1)).float().mean() > 0.5


def test_int4_artifact_roundtrip_packs_4_bits_and_matches_its_in_memory_model(pp_home, tiny_teacher):
    from safetensors import safe_open

    from pocketpilot.runtime.int4 import Int4Linear, dequantize_groupwise, pack_nibbles, quantize_groupwise, unpack_nibbles

    torch.manual_seed(0)
    w = torch.randn(32, 128)
    codes, sz = quantize_groupwise(w, 64)
    assert codes.max() <= 15 and torch.equal(unpack_nibbles(pack_nibbles(codes)), codes)
    assert (dequantize_groupwise(codes, sz) - w).abs().max() <= sz[..., 0].float().max() * 0.51 + 1e-2  # half a step
    res = compress(str(tiny_teacher), "int4", eval_tasks=0, activate=False)
    assert res.manifest.method == "int4" and res.manifest.artifact_bytes < 0.25 * res.manifest.teacher.fp32_bytes
    with safe_open(str(res.folder / "model.safetensors"), "pt") as f:
        nibbles = [k for k in f.keys() if k.endswith("weight_nibbles")]
        assert len(nibbles) == 7 * 2 and f.get_slice(nibbles[0]).get_dtype() == "U8"  # every decoder linear
    loaded = load_artifact(str(res.folder))
    # loaded fused: one int4 matmul for q/k/v and one for gate/up, beside o and down, in each of 2 layers
    assert sum(isinstance(m, Int4Linear) for m in loaded.model.modules()) == 8
    assert _reload_agreement(res.folder, loaded, tiny_teacher) > 0.8


def _on_grid(n: int, k: int, group: int) -> torch.Tensor:
    """A ``[n, k]`` weight exactly on a 4-bit grid of ``group`` columns (as a Q4_1 GGUF's blocks are)."""
    codes = torch.randint(0, 16, (n, k))
    codes[:, ::group] = 0
    codes[:, 1::group] = 15  # every group spans the whole code range
    scale = torch.rand(n, k // group, 1) * 0.02 + 0.005
    low = torch.randn(n, k // group, 1) * 0.05
    return (codes.reshape(n, k // group, group) * scale + low).reshape(n, k)


def test_int4_group_size_is_chosen_by_measured_output_error():
    from pocketpilot.compression.methods._int4 import choose_group_size
    from pocketpilot.runtime.int4 import dequantize_groupwise, fake_quant, quantize_groupwise

    torch.manual_seed(0)
    # a weight already on groups of 32 is kept exactly at 32, and 64 is far worse
    w32 = _on_grid(32, 256, 32)
    x = torch.randn(64, 256)
    err = {g: float(((x @ fake_quant(w32, g).T - x @ w32.T) ** 2).mean()) for g in (32, 64)}
    assert err[32] < 0.01 * err[64]
    # least-squares refits never raise a group's weight error over the min/max grid
    w = torch.randn(64, 256)
    e0 = float((dequantize_groupwise(*quantize_groupwise(w, 64, refine=0)) - w).pow(2).sum())
    e3 = float((dequantize_groupwise(*quantize_groupwise(w, 64, refine=3)) - w).pow(2).sum())
    assert e3 < e0

    class Tiny(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([torch.nn.Module()])
            self.model.layers[0].proj = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.model.layers[0].proj.weight.data = weight
            self.lm_head = torch.nn.Linear(weight.shape[0], 8, bias=False)

        def get_output_embeddings(self):
            return self.lm_head

    inputs = {"model.layers.0.proj": x}
    g, errors = choose_group_size(Tiny(w32), inputs)
    assert g == 32 and set(errors) == {32, 64, 128} and errors[32] < errors[64] < errors[128]
    # a weight on a grid of 128 columns is as exact at 128 as at 32: the fewer bytes win
    g, errors = choose_group_size(Tiny(_on_grid(32, 256, 128)), inputs)
    assert g == 128, errors
    # without calibration inputs: the method's declared default
    assert choose_group_size(Tiny(w32), {}) == (32, {})
