"""Resumable evaluation: the --checkpoint JSONL keeps model outputs and a rerun reuses them."""

import json

import pytest

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.checkpoint import Checkpoint, CheckpointedEngine, model_fingerprint
from pocketpilot.runtime.engine import Completion


def test_records_survive_reopening_and_a_cut_short_line(tmp_path):
    path = tmp_path / "ck.jsonl"
    ck = Checkpoint(path)
    a = ck.scope("model-a", "complete", {"prefix_tokens": 512})
    a.put(["x = ", ""], {"text": "1"})
    a.put(["y = ", ""], {"text": "2"})
    # a crash in the middle of the third record leaves a line without its end
    with open(path, "a") as f:
        f.write('{"key": "abc", "val')
    again = Checkpoint(path)
    assert again.skipped == 1 and len(again) == 2
    a2 = again.scope("model-a", "complete", {"prefix_tokens": 512})
    assert a2.get(["x = ", ""]) == {"text": "1"} and again.hits == 1
    a2.put(["z = ", ""], {"text": "3"})  # written on a line of its own, after the broken one
    third = Checkpoint(path)
    assert third.skipped == 1 and len(third) == 3
    assert third.scope("model-a", "complete", {"prefix_tokens": 512}).get(["z = ", ""]) == {"text": "3"}


def test_outputs_are_not_shared_across_models_kinds_or_settings(tmp_path):
    ck = Checkpoint(tmp_path / "ck.jsonl")
    ck.scope("model-a", "complete", {"prefix_tokens": 512}).put(["x = ", ""], {"text": "1"})
    assert ck.scope("model-b", "complete", {"prefix_tokens": 512}).get(["x = ", ""]) is None
    assert ck.scope("model-a", "generate", {"prefix_tokens": 512}).get(["x = ", ""]) is None
    assert ck.scope("model-a", "complete", {"prefix_tokens": 256}).get(["x = ", ""]) is None
    assert ck.scope("model-a", "complete", {"prefix_tokens": 512}).get(["x = ", "suffix"]) is None
    assert ck.hits == 0


def test_bad_paths_are_one_line_errors(tmp_path):
    with pytest.raises(PocketPilotError, match="is a folder"):
        Checkpoint(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    ck = Checkpoint(blocker / "ck.jsonl")  # its parent is a file: cannot be created
    with pytest.raises(PocketPilotError, match="cannot write checkpoint .* run the same command again"):
        ck.scope("m", "complete").put(["a"], 1)
    assert len(ck) == 0


def test_fingerprint_follows_the_weights(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "config.json").write_text("{}")
    (art / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": {"sha256": "aa"}}}))
    fp = model_fingerprint(art)
    assert len(fp) == 64 and model_fingerprint(art) == fp
    (art / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": {"sha256": "bb"}}}))
    assert model_fingerprint(art) != fp
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "teacher.json").write_text(json.dumps({"spec": "smollm2-135m", "gguf_sha256": "cc"}))
    t1 = model_fingerprint(teacher)
    (teacher / "teacher.json").write_text(json.dumps({"spec": "smollm2-135m", "gguf_sha256": "dd"}))
    assert model_fingerprint(teacher) != t1
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(PocketPilotError, match="no \\*.safetensors"):
        model_fingerprint(plain)
    (plain / "model.safetensors").write_bytes(b"123")
    p1 = model_fingerprint(plain)
    (plain / "model.safetensors").write_bytes(b"12345")
    assert model_fingerprint(plain) != p1


class _CountingEngine:
    def __init__(self):
        self.calls = 0

    def complete(self, prefix, suffix="", *, allow_block=True, **kw):
        self.calls += 1
        return Completion(text=f"{prefix[-1]}{self.calls}", raw="r", prompt_tokens=3, new_tokens=2,
                          prefill_ms=10.0, decode_ms=5.0)


def test_checkpointed_engine_reuses_completions_with_their_latency(tmp_path):
    path = tmp_path / "ck.jsonl"
    inner = _CountingEngine()
    first = CheckpointedEngine(inner, Checkpoint(path).scope("m", "complete"))
    a = first.complete("ab", "", allow_block=False)
    first.complete("cd", "", allow_block=False)
    assert inner.calls == 2 and first.reused == 0
    second = CheckpointedEngine(inner, Checkpoint(path).scope("m", "complete"))
    again = second.complete("ab", "", allow_block=False)
    assert inner.calls == 2 and second.reused == 1
    assert (again.text, again.total_ms, again.new_tokens) == (a.text, 15.0, 2)
    second.complete("ab", "", allow_block=True)  # another request: computed, not reused
    assert inner.calls == 3


def test_a_stopped_eval_continues_from_its_checkpoint(tmp_path, tiny_home, monkeypatch, synthetic_data):
    """The first run is stopped after 2 of 4 tasks; the rerun computes only the other 2 and gives
    the same predictions as an uninterrupted run; HumanEval generations are reused too."""
    from pocketpilot.store import get_active
    from pocketpilot.evaluation import humaneval
    from pocketpilot.evaluation.runner import run_eval
    from pocketpilot.runtime.engine import CompletionEngine

    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    from pocketpilot.evaluation.tasks import make_tasks
    from tiny import CORPUS

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("".join(CORPUS) * 3)
    tasks = make_tasks(src, n=4, seed=0)
    ck = tmp_path / "ck.jsonl"
    calls = {"complete": 0, "generate": 0}
    real_complete, real_generate = CompletionEngine.complete, humaneval.generate

    def complete(self, *a, **kw):
        calls["complete"] += 1
        if calls["complete"] == 3 and stop_after_two:
            raise KeyboardInterrupt
        return real_complete(self, *a, **kw)

    def generate(*a, **kw):
        calls["generate"] += 1
        return real_generate(*a, **kw)

    monkeypatch.setattr(CompletionEngine, "complete", complete)
    monkeypatch.setattr(humaneval, "generate", generate)
    stop_after_two = True
    with pytest.raises(KeyboardInterrupt):
        run_eval([get_active()], ["lines"], tasks=tasks, checkpoint=ck, log=lambda m: None)
    assert len(Checkpoint(ck)) == 2
    stop_after_two = False
    calls["complete"] = 0
    res = run_eval([get_active()], ["lines", "humaneval"], tasks=tasks, checkpoint=ck, log=lambda m: None)
    lines = res["models"][get_active()]["lines"]
    assert calls["complete"] == 2 and lines["reused"] == 2 and lines["n"] == 4
    assert res["config"]["checkpoint"] == str(ck)
    plain = run_eval([get_active()], ["lines"], tasks=tasks, log=lambda m: None)["models"][get_active()]["lines"]
    assert [p["pred"] for p in lines["predictions"]] == [p["pred"] for p in plain["predictions"]]
    assert lines["es"] == plain["es"]
    assert calls["generate"] == 2  # two synthetic HumanEval problems
    again = run_eval([get_active()], ["humaneval"], checkpoint=ck, log=lambda m: None)
    assert calls["generate"] == 2
    first, second = (r["models"][get_active()]["humaneval"] for r in (res, again))
    assert second["pass@1"] == first["pass@1"] and second["gen_ms_total"] == 0.0
    assert [r["status"] for r in second["results"]] == [r["status"] for r in first["results"]]
    assert all(r["cached"] for r in second["results"])


def test_report_says_what_came_from_the_checkpoint():
    from pocketpilot.evaluation.report import markdown

    result = {"config": {"suites": ["lines"], "seed": 0, "checkpoint": "ck.jsonl"}, "wall_s": 3,
              "models": {"m": {"lines": {"n": 4, "es": 50.0, "em": 25.0, "latency_ms_p50": 10.0,
                                         "latency_ms_p95": 20.0, "reused": 3}}}}
    assert "- checkpoint: ck.jsonl (3 line completions" in markdown(result)
    result["config"]["checkpoint"] = None
    assert "checkpoint" not in markdown(result)


def test_cost_results_are_reused_for_the_same_model_and_tasks(tmp_path, tiny_home, monkeypatch):
    from pocketpilot.store import get_active
    from pocketpilot.evaluation import cost
    from pocketpilot.evaluation.runner import run_eval

    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    runs = []

    def fake_measure_cost(name, tasks, n_completions=20, **kw):
        runs.append(n_completions)
        return {"latency_ms_p50": 12.5, "weights_bytes": 100}

    monkeypatch.setattr(cost, "measure_cost", fake_measure_cost)
    tasks = [{"prefix": f"x{i} = ", "suffix": "", "gt": "1"} for i in range(3)]
    ck = tmp_path / "ck.jsonl"
    first = run_eval([get_active()], ["cost"], tasks=tasks, cost_completions=2, checkpoint=ck, log=lambda m: None)
    again = run_eval([get_active()], ["cost"], tasks=tasks, cost_completions=2, checkpoint=ck, log=lambda m: None)
    assert runs == [2]
    assert again["models"][get_active()]["cost"] == {**first["models"][get_active()]["cost"], "reused": 1}
    run_eval([get_active()], ["cost"], tasks=tasks, cost_completions=3, checkpoint=ck, log=lambda m: None)
    assert runs == [2, 3]  # other tasks timed: measured again


def test_outputs_stay_keyed_when_a_setting_that_changes_no_suggestion_is_added_or_moved():
    from dataclasses import asdict

    from pocketpilot.runtime.settings import EngineSettings

    key = EngineSettings().output_key()
    # the three settings added after the stored outputs were made are left out at their old behaviour
    before = {k: v for k, v in asdict(EngineSettings()).items() if k not in ("fim_layout", "max_latency_ms", "threads")}
    assert key == before
    assert EngineSettings(threads=1).output_key() == key  # threads never change a suggestion's text
    assert EngineSettings(fim_layout="spm").output_key()["fim_layout"] == "spm"
    assert EngineSettings(max_latency_ms=300).output_key()["max_latency_ms"] == 300
    assert EngineSettings(max_new_tokens=8).output_key() != key
