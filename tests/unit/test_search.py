"""Avatar-style search: Z3 space, Pareto sorting, pruning, predictors, pick, and a tiny end-to-end search."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pocketpilot.compression import search as S
from pocketpilot.compression.recipe import TeacherShape
from pocketpilot.errors import PocketPilotError

TINY = TeacherShape("tiny", "llama", 4, 64, 128, 4, 2, 16, 400, True, 0.0)
QUANTS = ("none", "bf16", "int8", "int8-fhead")


def cfg(layers=4, pick="even", ffn=128, quant="int8", steps=0, t=2.0, a=0.5):
    return S.StudentConfig(layers, pick, ffn, quant, steps, t, a)


# --------------------------------------------------------------------------- Z3 space


def test_space_rejects_invalid_configurations_and_says_why():
    space = S.SearchSpace(TINY, QUANTS, steps=(0, 30), max_bytes=200_000)
    assert space.is_valid(cfg(layers=2, ffn=64))
    bad = {
        "depth": cfg(layers=1), "too deep": cfg(layers=5), "width not offered": cfg(ffn=100),
        "pointless distillation": cfg(steps=30), "T without distillation": cfg(layers=2, t=4.0),
        "influence at full depth": cfg(pick="influence"), "unknown method": cfg(quant="fp8"),
        "steps not offered": cfg(layers=2, steps=120),
    }
    for name, c in bad.items():
        assert not space.is_valid(c), name
    assert any("distillation only for a student smaller" in w for w in space.why_invalid(cfg(steps=30)))
    big = cfg(layers=4, quant="none")  # 4 * 4 * params > 200 kB
    assert S.config_bytes(TINY, big) > 200_000
    assert space.why_invalid(big) == ["size on disk <= 0 MB"]


def _brute_force(max_bytes):
    out = set()
    for layers, pick, ffn, q, steps, t, a in itertools.product(range(2, 5), S.PICKS, S.ffn_widths(128), QUANTS, (0, 30),
                                                             S.TEMPERATURES, S.ALPHAS):
        c = S.StudentConfig(layers, pick, ffn, q, steps, float(t), a)
        if layers == 4 and pick != "even":
            continue
        if steps == 0 and (t != 2 or a != 0.5):
            continue
        if steps and layers == 4 and ffn == 128:
            continue
        if S.config_bytes(TINY, c) > max_bytes:
            continue
        out.add(c)
    return out


def test_space_enumerates_exactly_the_valid_configurations_under_a_budget():
    space = S.SearchSpace(TINY, QUANTS, steps=(0, 30), max_bytes=150_000)
    got = space.enumerate()
    assert len(got) == len(set(got))
    assert set(got) == _brute_force(150_000)
    assert all(S.config_bytes(TINY, c) <= 150_000 for c in got)
    assert len(S.SearchSpace(TINY, QUANTS, steps=(0, 30)).enumerate()) > len(got)


def test_space_empty_and_bad_shapes_give_clear_errors():
    with pytest.raises(PocketPilotError, match="raise --max-mb"):
        S.SearchSpace(TINY, QUANTS, max_bytes=1000).enumerate()
    bad_heads = TeacherShape("odd", "llama", 4, 66, 128, 4, 2, 16, 400, True, 0.0)  # 66 != 4 x 16
    with pytest.raises(PocketPilotError, match="no student configuration"):
        S.SearchSpace(bad_heads, QUANTS).enumerate()
    with pytest.raises(PocketPilotError, match="unknown method"):
        S.SearchSpace(TINY, ("int3",))
    text = S.SearchSpace(TINY, QUANTS, max_bytes=150_000, max_params=10**6).explain()
    assert "parameters <= 1,000,000" in text and "size on disk" in text and "hidden == heads*head_dim" in text


def test_config_key_roundtrip():
    for c in (cfg(), cfg(layers=2, pick="influence", ffn=64, quant="int8-fhead", steps=30, t=4.0, a=0.9)):
        assert S.StudentConfig.from_key(c.key()) == c
    with pytest.raises(PocketPilotError):
        S.StudentConfig.from_key("nonsense")


def test_ffn_widths_are_multiples_of_32():
    assert S.ffn_widths(1536) == (1536, 1152, 768, 384)
    assert S.ffn_widths(8960) == (8960, 6720, 4480, 2240)
    assert S.ffn_widths(64) == (64, 32)


# --------------------------------------------------------------------------- Pareto, predictors, pick


def test_non_dominated_on_hand_made_points():
    # (latency min, size min, ES max)
    pts = [(10, 5, 50), (20, 5, 60), (20, 6, 60), (5, 9, 40), (30, 9, 55), (10, 5, 50)]
    # (20,6,60) dominated by (20,5,60); (30,9,55) by (20,5,60); the duplicate (10,5,50) is kept twice
    assert S.non_dominated(pts, (False, False, True)) == [0, 1, 3, 5]
    assert S.non_dominated([(1, 1), (2, 2)], (False, True)) == [0, 1]
    assert S.non_dominated([(1, 2), (2, 1)], (False, True)) == [0]


def test_latency_model_arithmetic():
    probe = {"layers": {"tiny@64/int8": {"decode_ms": 2.0, "prefill_ms": 10.0}, "tiny@64/none": {"decode_ms": 3.0, "prefill_ms": 12.0}},
             "weight_gbps": {"int8": 1.0, "none": 2.0}, "base_decode_ms": 1.0}
    model = S.LatencyModel("tiny", probe)
    p = model.predict(TINY, cfg(layers=3, ffn=64, quant="int8"))
    head = 400 * 64 * 1.0 / 1e9 * 1e3
    assert p["decode_ms_per_token"] == round(1.0 + 3 * 2.0 + head, 2)
    assert p["prefill_ms"] == round(3 * 10.0 * 4 + head, 1)
    assert p["line_ms"] == round(3 * 10.0 * 4 + head + 12 * (1.0 + 3 * 2.0 + head), 1)
    fhead = model.predict(TINY, cfg(layers=3, ffn=64, quant="int8-fhead"))  # int8 layers, float32 head
    assert fhead["decode_ms_per_token"] == round(1.0 + 3 * 2.0 + 400 * 64 * 4.0 / 2e9 * 1e3, 2)
    assert model.predict(TINY, cfg(layers=3, ffn=128))["line_ms"] is None  # width not probed


def test_es_predictor_learns_a_linear_trend_and_reports_loo_error():
    points = [(cfg(layers=n, ffn=w, quant=q), 10 * n + w / 16) for n in (2, 3, 4) for w in (64, 128) for q in ("int8", "bf16")]
    pred = S.ESPredictor(TINY).fit(points)
    (es, std), = pred.predict([cfg(layers=3, ffn=96)])
    assert abs(es - (30 + 6)) < 2.0 and std >= 0
    assert pred.loo_mae(points) < 2.0
    assert S.ESPredictor(TINY).fit(points[:2]).predict([cfg()]) is None


def _state(rows):
    return {"teacher": "tiny", "evaluated": [
        {"key": k, "artifact_id": f"a-{k}", "config": {}, "measured": {"line_ms": ms, "bytes": b, "es": es}}
        for k, ms, b, es in rows]}


def test_pick_for_budget_rules():
    st = _state([("big", 900, 500e6, 64), ("mid", 280, 120e6, 55), ("small", 150, 60e6, 40), ("junk", 20, 10e6, 5)])
    p = S.pick_for_budget(st, 300)
    assert p.key == "mid" and p.meets_budget
    assert S.pick_for_budget(st, 300, max_bytes=100e6).key == "small"
    assert S.pick_for_budget(st, 1000).key == "big"
    # only junk is within 50 ms: it keeps under half the best ES, so the fastest good point wins, budget not met
    p = S.pick_for_budget(st, 50)
    assert p.key == "big" and not p.meets_budget
    with pytest.raises(PocketPilotError, match="smallest is 10 MB"):
        S.pick_for_budget(st, 300, max_bytes=1e6)
    with pytest.raises(PocketPilotError, match="positive"):
        S.pick_for_budget(st, 0)


# --------------------------------------------------------------------------- pruning


@pytest.fixture(scope="module")
def tiny_model(tiny_deep_teacher_folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_deep_teacher_folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny_deep_teacher_folder(tmp_path_factory):
    from tiny import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("search-teacher"), layers=4)


def _calibration():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 300, (1, 48), generator=g) for _ in range(3)]


def test_prune_ffn_keeps_shapes_and_removes_the_computed_parameters(tiny_model, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    from pocketpilot.compression.prune import ffn_channel_importance, prune_ffn

    model = copy.deepcopy(tiny_model)
    before = sum(p.numel() for p in model.parameters())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    out = prune_ffn(model, 64, ffn_channel_importance(model, _calibration()))
    after = sum(p.numel() for p in model.parameters())
    assert before - after == out["params_removed"] == 4 * 3 * 64 * (128 - 64)
    assert after == S.config_params(S.shape_of(tiny_model.config, "tiny"), cfg(ffn=64))
    assert model.config.intermediate_size == 64
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == tiny_model(input_ids=ids).logits.shape
    model.save_pretrained(tmp_path)  # a standard config: it reloads as is
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.model.layers[0].mlp.up_proj.weight.shape == (64, 64)
    with pytest.raises(PocketPilotError, match="multiple of 32"):
        prune_ffn(model, 40, ffn_channel_importance(model, _calibration()))


def test_ffn_importance_ranks_a_dead_channel_last_and_pruning_drops_it(tiny_model):
    import copy

    from pocketpilot.compression.prune import ffn_channel_importance, prune_ffn

    model = copy.deepcopy(tiny_model)
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.down_proj.weight[:, 7] = 0  # channel 7 contributes nothing
        keep_col = mlp.down_proj.weight[:, 8].clone()
    scores = ffn_channel_importance(model, _calibration())
    assert scores[0][7] == 0 and int(scores[0].argmin()) == 7
    prune_ffn(model, 96, scores)
    cols = model.model.layers[0].mlp.down_proj.weight
    assert not any(torch.equal(cols[:, j], torch.zeros(64)) for j in range(96))
    assert any(torch.equal(cols[:, j], keep_col) for j in range(96))


def test_block_influence_finds_an_identity_layer(tiny_model):
    import copy

    from pocketpilot.compression.prune import block_influence, pick_layers

    model = copy.deepcopy(tiny_model)
    layer = model.model.layers[2]
    with torch.no_grad():  # the layer adds nothing to the residual stream
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    bi = block_influence(model, _calibration())
    assert len(bi) == 4 and abs(bi[2]) < 1e-5 and min(bi[1], bi[3]) > 1e-4
    assert pick_layers(4, 3, "influence", bi) == [0, 1, 3]
    assert pick_layers(4, 3, "even") == [0, 2, 3]
    with pytest.raises(PocketPilotError):
        pick_layers(4, 3, "influence")


def test_make_student_with_chosen_layers(tiny_model):
    from pocketpilot.compression.distill import make_student

    student = make_student(tiny_model, 2, [1, 3])
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, tiny_model.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, tiny_model.model.layers[3].mlp.up_proj.weight)
    with pytest.raises(PocketPilotError, match="distinct"):
        make_student(tiny_model, 2, [1, 1])


def test_int8_float_head_roundtrip(tiny_model, tiny_deep_teacher_folder, tmp_path):
    import copy

    from pocketpilot.compression.build import copy_tokenizer_files
    from pocketpilot.compression.methods import get_method
    from pocketpilot.runtime.loader import load_model_folder
    from pocketpilot.runtime.qlinear import Int8Linear

    get_method("int8-fhead").apply(copy.deepcopy(tiny_model), tmp_path, _calibration())
    copy_tokenizer_files(tiny_deep_teacher_folder, tmp_path)
    side = json.loads((tmp_path / "quantization.json").read_text())
    assert "embedding" not in side["modules"].values() and side["tied_float_head"] == "lm_head.weight"
    loaded = load_model_folder(tmp_path).model
    emb, head = loaded.get_input_embeddings(), loaded.get_output_embeddings()
    assert isinstance(emb, torch.nn.Embedding) and emb.weight.dtype == torch.float32
    assert head.weight.data_ptr() == emb.weight.data_ptr()
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(loaded.model.layers[0].mlp.fused_gate_up.inner, Int8Linear)  # gate/up fused at load
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref, got = tiny_model(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=0.15 * float(ref.abs().max()))
    assert torch.equal(ref.argmax(-1), got.argmax(-1))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_search(tiny_deep_teacher_folder, tmp_path_factory):
    """A real search of the 4-layer tiny teacher: 5 points, 2 tasks each, one 30-step distillation."""
    import os

    import tiny

    home = tmp_path_factory.mktemp("search-home")
    corpus = tmp_path_factory.mktemp("search-corpus")
    for i, text in enumerate(tiny.CORPUS * 4):
        (corpus / f"f{i}.py").write_text(text * 20)
    old = os.environ.get("POCKETPILOT_HOME")
    os.environ["POCKETPILOT_HOME"] = str(home)
    try:
        state = S.run_search(str(tiny_deep_teacher_folder), evaluate=5, tasks=2, max_steps=30,
                             quants=("none", "int8", "int8-fhead"),
                             distill_settings={"corpus": str(corpus), "block_tokens": 32, "batch_size": 2,
                                               "val_fraction": 0.5})
        yield home, state
    finally:
        if old is None:
            os.environ.pop("POCKETPILOT_HOME", None)
        else:
            os.environ["POCKETPILOT_HOME"] = old


def test_tiny_search_end_to_end(tiny_search, tiny_deep_teacher_folder, monkeypatch, tmp_path):
    home, state = tiny_search
    monkeypatch.setenv("POCKETPILOT_HOME", str(home))
    assert len(state["evaluated"]) == 5
    keys = [r["key"] for r in state["evaluated"]]
    assert keys[0] == "l4e-f128-none" and state["evaluated"][0]["artifact_id"] is None  # the teacher itself
    assert any(r["config"]["steps"] == 30 for r in state["evaluated"])  # a short distillation
    for r in state["evaluated"]:
        m = r["measured"]
        assert m["bytes"] > 0 and m["line_ms"] > 0 and 0 <= m["es"] <= 100 and r["predicted"]["line_ms"] > 0
    built = [r for r in state["evaluated"] if r["artifact_id"]]
    from pocketpilot.store import artifacts_dir, read_manifest

    for r in built:
        manifest = read_manifest(artifacts_dir() / r["artifact_id"])
        if r["config"]["layers"] < 4 or r["config"]["ffn"] < 128:
            assert manifest.recipe["student"]["search_key"] == r["key"]
    assert state["front"] and set(state["front"]) <= set(keys)
    assert state["predictor"]["points"] == 5 and state["predictor"]["loo_mae_es"] is not None
    assert state["predictor"]["out_of_sample_n"] >= 1
    assert state["space"]["size"] > 100 and state["latency_model_error"]["line_ms_mape_pct"] is not None
    saved = json.loads(S.search_path(state["teacher_slug"]).read_text())
    assert saved["evaluated"] == state["evaluated"]
    assert S.load_search(str(tiny_deep_teacher_folder))["teacher_slug"] == state["teacher_slug"]
    png = S.plot(state, tmp_path / "front.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| * |" in S.table(state)


def test_tiny_search_resumes_without_rebuilding(tiny_search, tiny_deep_teacher_folder, monkeypatch):
    home, state = tiny_search
    monkeypatch.setenv("POCKETPILOT_HOME", str(home))
    again = S.run_search(str(tiny_deep_teacher_folder), evaluate=5, tasks=2, max_steps=30,
                         quants=("none", "int8", "int8-fhead"))
    assert [r["measured"] for r in again["evaluated"]] == [r["measured"] for r in state["evaluated"]]
    assert "latency_probe" not in again["seconds"] or again["seconds"]["latency_probe"] == state["seconds"]["latency_probe"]


def test_search_cli_explain_pick_and_compress(tiny_search, tiny_deep_teacher_folder, monkeypatch, capsys):
    from pocketpilot.cli import main
    from pocketpilot.store import get_active

    home, state = tiny_search
    monkeypatch.setenv("POCKETPILOT_HOME", str(home))
    assert main(["search", "--teacher", str(tiny_deep_teacher_folder), "--explain", "--max-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert "size on disk <= 1 MB" in out and "valid configurations:" in out
    args = ["search", "--teacher", str(tiny_deep_teacher_folder), "--evaluate", "0", "--tasks", "2",
            "--methods", "none,int8,int8-fhead", "--max-steps", "30", "--budget-ms", "10000", "--compress", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    pick = res["pick"]
    assert pick["meets_budget"] and pick["measured"]["es"] == max(r["measured"]["es"] for r in state["evaluated"])
    expected = pick["artifact_id"] or f"{state['teacher_slug']}-none"
    assert get_active() == res["compressed"] == expected
    assert main(["search", "--teacher", str(tiny_deep_teacher_folder), "--max-mb", "-1"]) == 2
    assert "--max-mb must be positive" in capsys.readouterr().err


def test_compress_for_this_machine_uses_the_stored_front(tiny_search, tiny_deep_teacher_folder, monkeypatch):
    from pocketpilot.compression import recipe
    from pocketpilot.store import get_active, read_manifest, resolve_artifact

    home, state = tiny_search
    monkeypatch.setenv("POCKETPILOT_HOME", str(home))
    shape = S.shape_of(__import__("transformers").AutoConfig.from_pretrained(tiny_deep_teacher_folder),
                       str(tiny_deep_teacher_folder))
    result, decision = recipe.compress_for_this_machine(10_000, eval_tasks=1, teachers=(shape,))
    assert decision.method.startswith("search:") and decision.meets_budget
    manifest = read_manifest(resolve_artifact(result.artifact_id))
    assert manifest.machine_decision["source"] == "search front"
    assert get_active() == result.artifact_id
    # another machine's search is not used
    st = json.loads(S.search_path(state["teacher_slug"]).read_text())
    st["machine"]["cpu"] = "another CPU"
    S.search_path(state["teacher_slug"]).write_text(json.dumps(st))
    try:
        profile = recipe.probe_hardware()
        assert recipe.front_pick(profile, 10_000, (shape,)) is None
    finally:
        S.search_path(state["teacher_slug"]).write_text(json.dumps(state))
