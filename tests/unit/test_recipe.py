"""Hardware probe and recipe chooser: synthetic machines, the real probe, and --for-this-machine end to end."""

import json

import pytest

from pocketpilot.compression.hardware import HardwareProfile, SpeedProbe, probe_hardware, probe_speed
from pocketpilot.compression.methods import METHODS
from pocketpilot.compression.recipe import CHOOSER_METHODS, choose_recipe, predict
from pocketpilot.compression.shapes import TEACHERS, TeacherShape
from pocketpilot.errors import PocketPilotError

GB = 1_000_000_000


def machine(ram_gb: float, cpus: int = 4, cuda_gb: float | None = None, bnb: bool = True) -> HardwareProfile:
    cuda = [{"name": "Synthetic GPU", "memory_bytes": int(cuda_gb * GB)}] if cuda_gb else []
    return HardwareProfile(cpus=cpus, cpu_model="synthetic", isa={"avx2": True}, torch_cpu_capability="AVX2",
                           ram_total_bytes=int(ram_gb * GB), ram_available_bytes=int(ram_gb * GB),
                           disk_free_bytes=100 * GB, cuda=cuda, mps=False, bitsandbytes=bnb)


def speeds(gflops: float, gbps: dict[str, float], overhead_ms: float = 0.2) -> SpeedProbe:
    """A probe whose layer times follow a roofline: prefill = FLOPs / gflops, decode = bytes / GB/s + overhead."""
    layers = {}
    for t in TEACHERS:
        for m in CHOOSER_METHODS:
            if m.name in gbps:
                layers[f"{t.alias}/{m.name}"] = {
                    "decode_ms": t.layer_params * m.body_bytes_per_weight / (gbps[m.name] * GB) * 1e3 + overhead_ms,
                    "prefill_ms": 2 * t.layer_params * 128 / (gflops * GB) * 1e3}
    return SpeedProbe("cpu", {"float32": gflops, "bfloat16": gflops}, gbps, layers, base_decode_ms=1.0)


SMALL_CPU = speeds(60, {"int8": 8, "bf16": 8, "none": 8, "bnb-nf4": 1, "bnb-int8": 1})
BIG_CPU = speeds(6000, {"int8": 120, "bf16": 100, "none": 100, "bnb-nf4": 20, "bnb-int8": 20})


def test_big_cpu_takes_the_best_teacher_in_int8():
    d = choose_recipe(machine(64, cpus=32), BIG_CPU, budget_ms=1500)
    assert (d.teacher, d.method, d.device, d.meets_budget) == ("qwen2.5-coder-1.5b", "int8", "cpu", True)
    chosen = [r for r in d.candidates if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["line_ms"] <= 1500
    # int8 is preferred to bf16 and float32 because it is faster at the same quality tier
    qwen = {r["method"]: r["line_ms"] for r in d.candidates if r["teacher"] == "qwen2.5-coder-1.5b"}
    assert qwen["int8"] < qwen["bf16"] < qwen["none"]


def test_small_cpu_falls_back_to_the_small_teacher_and_says_the_budget_is_missed():
    d = choose_recipe(machine(8, cpus=2), SMALL_CPU, budget_ms=300)
    assert (d.teacher, d.method) == ("smollm2-135m", "int8")
    assert not d.meets_budget and "no recipe is predicted within 300 ms" in d.reason
    qwen = [r for r in d.candidates if r["teacher"] == "qwen2.5-coder-1.5b" and "not installed" not in r["rejected"]]
    assert qwen and all("compressing needs" in r["rejected"] for r in qwen)  # 1.8B params in fp32 do not fit in 8 GB


def test_small_cpu_with_a_generous_budget_still_prefers_quality():
    d = choose_recipe(machine(32, cpus=2), SMALL_CPU, budget_ms=1e6, warmup_budget_ms=1e6)
    assert d.teacher == "qwen2.5-coder-1.5b" and d.meets_budget


def test_the_warm_latency_is_budgeted_not_a_cold_completion():
    """A 2-core machine whose cold 512-token completion misses the budget gets the 1.5B teacher
    when a model run while typing meets it and the background warm-up fits its own budget."""
    mid = speeds(400, {"int8": 20, "bf16": 20, "none": 20, "bnb-nf4": 1, "bnb-int8": 1})
    qwen = predict(TEACHERS[0], METHODS["int8"], mid)
    assert qwen["warm_ms"] < qwen["line_ms"] and qwen["warmup_ms"] == qwen["prefill_ms"]
    budget = (qwen["warm_ms"] + qwen["line_ms"]) / 2  # the warm run fits, the cold completion does not
    d = choose_recipe(machine(32, cpus=2), mid, budget_ms=budget, warmup_budget_ms=qwen["warmup_ms"] + 1)
    assert (d.teacher, d.method, d.meets_budget) == ("qwen2.5-coder-1.5b", "int8", True)
    assert f"predicted {qwen['warm_ms']:.0f} ms per suggestion while typing" in d.reason
    assert f"{qwen['warmup_ms'] / 1000:.1f} s to warm a file up" in d.reason
    slow_warmup = choose_recipe(machine(32, cpus=2), mid, budget_ms=budget, warmup_budget_ms=qwen["warmup_ms"] - 1)
    assert slow_warmup.teacher == "smollm2-135m"  # the warm-up budget counts on its own


def test_cuda_gpu_runs_bf16_on_the_gpu_or_nf4_when_it_does_not_fit():
    d = choose_recipe(machine(32, cuda_gb=16), BIG_CPU, budget_ms=1e6)
    assert (d.teacher, d.method, d.device) == ("qwen2.5-coder-1.5b", "bf16", "cuda")
    d = choose_recipe(machine(32, cuda_gb=2.6), BIG_CPU, budget_ms=1e6)
    assert (d.teacher, d.method, d.device) == ("qwen2.5-coder-1.5b", "bnb-nf4", "cuda")


def test_low_memory_is_a_clear_error():
    with pytest.raises(PocketPilotError, match=r"no recipe fits in 0\.5 GB .*close other programs"):
        choose_recipe(machine(0.5), SMALL_CPU)


def test_missing_bitsandbytes_rejects_its_methods_with_the_pip_command():
    d = choose_recipe(machine(8, bnb=False), SMALL_CPU)
    bnb = [r for r in d.candidates if r["method"].startswith("bnb-")]
    assert bnb and all("pip install bitsandbytes" in r["rejected"] for r in bnb)


def test_llama_cpp_engine_is_chosen_when_measured_faster_and_said_so(monkeypatch):
    fast = speeds(60, {"int8": 8, "bf16": 8, "none": 8, "gguf-q8_0": 24, "gguf-q4_k_m": 30})
    monkeypatch.setattr(HardwareProfile, "has_package", lambda self, module: True)
    d = choose_recipe(machine(32, cpus=2, bnb=False), fast, budget_ms=1e6, warmup_budget_ms=1e6)
    # the best teacher; of the no-loss methods (tier 0) the fastest, which here runs in llama.cpp
    assert (d.teacher, d.method) == ("qwen2.5-coder-1.5b", "gguf-q8_0") and "(llama.cpp engine)" in d.reason
    row = next(r for r in d.candidates if r["method"] == "gguf-q8_0" and r["chosen"])
    assert row["engine"] == "llama.cpp"
    monkeypatch.setattr(HardwareProfile, "has_package", lambda self, module: module != "llama_cpp")
    d = choose_recipe(machine(32, cpus=2, bnb=False), fast, budget_ms=1e6, warmup_budget_ms=1e6)
    assert d.method == "int8" and all("pip install llama-cpp-python" in r["rejected"]
                                      for r in d.candidates if r["engine"] == "llama.cpp")


def test_bad_budget():
    with pytest.raises(PocketPilotError, match="budget must be positive"):
        choose_recipe(machine(8), SMALL_CPU, budget_ms=0)


def test_prediction_follows_the_measured_speeds():
    t = TEACHERS[1]
    by = METHODS
    p = predict(t, by["int8"], SMALL_CPU)
    layer = SMALL_CPU.layers[f"{t.alias}/int8"]
    head = t.vocab * t.hidden * by["int8"].head_bytes_per_weight / (8 * GB) * 1e3
    assert p["decode_ms_per_token"] == pytest.approx(1.0 + t.layers * layer["decode_ms"] + head, rel=1e-3)
    assert p["line_ms"] == pytest.approx(p["prefill_ms"] + 12 * p["decode_ms_per_token"], rel=1e-3)
    assert t.params == 134_515_008  # SmolLM2-135M, from its config
    assert predict(TEACHERS[0], by["none"], SMALL_CPU)["weights_bytes"] > 7 * GB
    assert predict(t, by["int8"], SpeedProbe("cpu", {}, {}, {}, 0.0))["line_ms"] is None  # not timed here


def test_real_probe_on_this_machine():
    prof = probe_hardware()
    assert prof.cpus >= 1 and prof.ram_available_bytes > 0 and prof.disk_free_bytes > 0
    assert set(prof.isa) >= {"avx2", "avx512f", "avx512_vnni", "amx_tile"}
    tiny = TeacherShape("tiny", "llama", 4, 64, 128, 4, 2, 16, 256, True, 10.0)
    speed = probe_speed((tiny,), methods=("none", "int8"))
    assert set(speed.layers) == {"tiny/none", "tiny/int8"} and speed.gflops["float32"] > 0
    assert all(v["prefill_ms"] >= 0 and v["decode_ms"] >= 0 for v in speed.layers.values())
    assert speed.weight_gbps["int8"] > 0


def test_compress_for_this_machine_records_the_decision_and_activates(pp_home, tiny_teacher):
    from pocketpilot.store import get_active, verify_artifact
    from pocketpilot.compression.recipe import compress_for_this_machine

    shape = TeacherShape(str(tiny_teacher), "llama", 2, 64, 128, 4, 2, 16, 400, True, 10.0)
    res, decision = compress_for_this_machine(1e6, eval_tasks=2, teachers=(shape,))
    assert decision.teacher == str(tiny_teacher) and decision.meets_budget
    assert get_active() == res.artifact_id
    manifest = json.loads((res.folder / "manifest.json").read_text())
    md = manifest["machine_decision"]
    assert md["method"] == decision.method == manifest["recipe"]["method"]
    assert md["measured_line_ms_p50"] > 0 and md["measured_meets_budget"] is True
    assert md["profile"]["cpus"] >= 1 and md["speed_probe"]["layers"]
    verify_artifact(res.folder)  # the manifest rewrite keeps the artifact valid
