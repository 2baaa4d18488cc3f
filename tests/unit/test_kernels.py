"""Prefill paths chosen by measurement: every path computes the same product, the fastest wins, and
the choice is remembered per machine key."""

import json

import pytest
import torch
from torch import nn

from pocketpilot.runtime import kernels
from pocketpilot.runtime.int4 import Int4Linear
from pocketpilot.runtime.qlinear import PREFILL_PATHS, Int8Linear


@pytest.fixture(autouse=True)
def _fresh(pp_home, monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    kernels.forget_choices()
    yield
    kernels.forget_choices()


def _int8(out=64, inp=96):
    torch.manual_seed(0)
    mod = Int8Linear.from_linear(nn.Linear(inp, out, bias=True), input_scale=torch.rand(inp) + 0.5)
    mod.weight_int8 = mod.weight_int8.clone()  # aligned, as the loader leaves it
    return mod


def test_int8_prefill_paths_agree_with_the_dequantized_float_product():
    mod = _int8()
    x = torch.randn(40, 96)
    ref = (x / mod.input_scale) @ (mod.weight_int8.float() * mod.weight_scale[:, None]).T
    assert set(mod.prefill_paths()) == set(PREFILL_PATHS)
    for path in PREFILL_PATHS:
        y = mod._matmul(path, x / mod.input_scale).float()
        assert torch.allclose(y, ref, rtol=2e-2, atol=2e-2), path
    assert torch.allclose(mod._matmul("float32", x / mod.input_scale), ref, atol=1e-4)  # float32 is exact


def test_the_fastest_path_by_the_timer_is_chosen_and_remembered(pp_home):
    fake = {"int8-kernel": 5.0, "float32": 1.0, "bfloat16": 9.0}
    calls = []

    def timer(fn):
        name = next(n for n, f in cands.items() if f is fn)
        calls.append(name)
        return fake[name]

    cands = {n: (lambda: None) for n in fake}
    assert kernels.choose("int8", (64, 96), cands, timer=timer) == "float32"
    assert sorted(calls) == sorted(fake)
    saved = json.loads((pp_home / kernels.CHOICES_FILE).read_text())
    assert list(saved.values()) == ["float32"] and kernels.machine_key() in next(iter(saved))
    kernels.forget_choices()  # a new process: read from the file, nothing timed
    calls.clear()
    fake["float32"] = 99.0
    assert kernels.choose("int8", (64, 96), cands, timer=timer) == "float32" and calls == []
    # another shape is measured on its own
    assert kernels.choose("int8", (32, 96), cands, timer=timer) == "int8-kernel"


def test_forced_path_and_a_corrupt_choices_file(pp_home, monkeypatch):
    pp_home.mkdir(parents=True, exist_ok=True)
    (pp_home / kernels.CHOICES_FILE).write_text("{not json")
    cands = {"a": lambda: None, "b": lambda: None}
    assert kernels.choose("f", (1, 2), cands, timer=lambda fn: 1.0 if fn is cands["b"] else 2.0) == "b"
    monkeypatch.setenv(kernels.FORCE_ENV, "a")
    assert kernels.choose("f", (1, 2), cands) == "a"


def test_int8_module_forward_uses_the_measured_path(monkeypatch):
    mod = _int8()
    monkeypatch.setattr(kernels, "time_ms", lambda fn, repeats=0: 0.0)
    seen = []
    orig = Int8Linear._matmul

    def spy(self, path, x):
        seen.append((path, x.shape[0]))
        return orig(self, path, x)

    monkeypatch.setattr(Int8Linear, "_matmul", spy)
    monkeypatch.setattr(kernels, "choose", lambda family, shape, cands, **kw: "float32")
    mod(torch.randn(1, 3, 96))
    mod(torch.randn(1, 50, 96))
    assert seen == [("int8-kernel", 3), ("float32", 50)]


def test_int4_paths_give_the_same_product():
    torch.manual_seed(0)
    mod = Int4Linear.from_linear(nn.Linear(128, 64), group_size=32)
    xb = torch.randn(40, 128).bfloat16()
    mod.prepare()
    whole, pieces = mod._kernel(xb, 40), mod._kernel(xb, 16)
    assert torch.allclose(whole.float(), pieces.float(), atol=1e-2)
    assert mod.prefill_path() in ("int4-kernel", "int4-kernel-16")
