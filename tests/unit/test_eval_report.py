"""pocketpilot eval: suites, comparison ratios, Pareto front, Markdown + PNG report, llama.cpp adapter."""

import json
import sys
import types

import pytest

from pocketpilot.errors import MissingDependencyError, PocketPilotError
from pocketpilot.evaluation.report import markdown, pareto_front
from pocketpilot.evaluation.runner import parse_suites, ratios


def test_pareto_front_on_hand_made_points():
    # (latency ms, ES): b dominates d (faster and better); c is slower but best; a is fastest
    pts = [(100, 40), (200, 60), (800, 70), (300, 55), (200, 60)]
    assert pareto_front(pts[:4]) == [0, 1, 2]
    assert pareto_front([(1, 1)]) == [0]
    # exact duplicates do not dominate each other
    assert sorted(pareto_front(pts)) == [0, 1, 2, 4]


def test_parse_suites():
    assert parse_suites("cost,lines") == ["lines", "cost"]
    assert parse_suites("all") == ["lines", "codexglue", "humaneval", "recode", "summarize", "cost"]
    with pytest.raises(PocketPilotError, match="unknown suite bogus; choose from lines"):
        parse_suites("lines,bogus")


def test_ratios_to_the_first_model():
    models = {"t": {"lines": {"es": 60.0, "latency_ms_p50": 400.0}, "size_bytes": 400},
              "s": {"lines": {"es": 45.0, "latency_ms_p50": 100.0}, "size_bytes": 100},
              "x": {"size_bytes": None}}
    r = ratios(models)
    assert r["t"]["lines.es"] == 1.0
    assert r["s"]["lines.es"] == 0.75 and r["s"]["lines.latency_ms_p50"] == 0.25 and r["s"]["size_bytes"] == 0.25
    assert r["x"]["lines.es"] is None and r["x"]["size_bytes"] is None


def test_full_tiny_eval_writes_json_markdown_and_png(tmp_path, tiny_home, monkeypatch, capsys, synthetic_data):
    from pocketpilot.cli import main
    from pocketpilot.store import get_active

    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    teacher = json.loads((tiny_home / "artifacts" / get_active() / "manifest.json").read_text())["teacher"]["folder"]
    out, report = tmp_path / "r.json", tmp_path / "rep" / "r.md"
    rc = main(["eval", "--compare", teacher, get_active(), "--suite", "all", "--limit", "2", "--n", "4",
               "--codexglue-n", "2", "--recode-categories", "format,func_name", "--cost-completions", "2",
               "--json", str(out), "--report", str(report)])
    assert rc == 0
    res = json.loads(out.read_text())
    labels = list(res["models"])
    assert len(labels) == 2 and labels[1] == get_active()
    for label in labels:
        m = res["models"][label]
        assert m["lines"]["n"] == 2 and 0 <= m["lines"]["es"] <= 100
        assert m["codexglue"]["n"] == 2
        assert m["humaneval"]["n"] == 2 and m["humaneval"]["pass@1"] in (0.0, 50.0, 100.0)
        assert set(m["recode"]["categories"]) == {"format", "func_name"}
        assert m["recode"]["partial_nominal"] is not None  # format is measured against partial code
        assert m["cost"]["peak_rss_bytes"] > 0 and m["cost"]["latency_ms_p50"] > 0
    assert res["ratios"][labels[0]]["lines.es"] in (1.0, None)
    assert res["ratios"][labels[1]]["size_bytes"] < 0.5  # int8 vs the float32 teacher
    text = report.read_text()
    for heading in ("## Line completion on raw code", "## CodeXGLUE", "## HumanEval and ReCode", "## Cost",
                    f"## Ratios to {labels[0]}", "![pareto](r-pareto.png)", "![recode](r-recode.png)"):
        assert heading in text, heading
    png = (report.parent / "r-pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "## Line completion on raw code" in capsys.readouterr().out  # the report also goes to stdout
    # the report can be rewritten from the JSON without running anything
    again = tmp_path / "again.md"
    assert main(["eval", "--from-json", str(out), "--report", str(again)]) == 0
    assert again.read_text() == text.replace("r-pareto.png", "again-pareto.png").replace("r-recode.png", "again-recode.png")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["eval", "--from-json", str(bad)]) == 2
    assert "is not a file written by pocketpilot eval --json" in capsys.readouterr().err


def test_markdown_without_optional_suites():
    res = {"config": {"suites": ["lines"], "seed": 0, "limit": None, "tasks": "t"}, "wall_s": 1.0,
           "models": {"a": {"lines": {"es": 50.0, "em": 10.0, "latency_ms_p50": 100.0, "latency_ms_p95": 200.0,
                                      "decode_ms_per_token": 20.0}, "size_bytes": 2_000_000}}, "ratios": {}}
    md = markdown(res)
    assert "| a | 2.0 | 50.00 | 10.00 | 100 | 200 | 20.0 |" in md
    assert "## Cost" not in md and "## Ratios" not in md


class _FakeLlama:
    """Stands in for llama_cpp.Llama: bytes as token ids; FIM tokens single ids when ``fim``."""

    fim = True
    prompts: list = []

    def __init__(self, model_path, **kw):
        self.path = model_path

    def tokenize(self, data: bytes, add_bos=False, special=False):
        text = data.decode()
        if special and self.fim and text in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"):
            return [1000]
        return list(data)

    def detokenize(self, ids):
        return bytes(i for i in ids if i < 256)

    def create_completion(self, prompt, max_tokens, temperature, top_k, stop):
        type(self).prompts.append(prompt)
        return {"choices": [{"text": " a + b"}], "usage": {"prompt_tokens": 7, "completion_tokens": 4}}


@pytest.mark.parametrize("fim", [True, False])
def test_llama_cpp_engine_builds_our_prompt(monkeypatch, tmp_path, fim):
    from pocketpilot.evaluation.llamacpp import LlamaCppEngine
    from pocketpilot.evaluation.line_completion import evaluate_lines

    monkeypatch.setattr(_FakeLlama, "fim", fim)
    monkeypatch.setattr(_FakeLlama, "prompts", [])
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=_FakeLlama))
    eng = LlamaCppEngine(tmp_path / "m.gguf", prefix_tokens=10, suffix_tokens=4)
    res = evaluate_lines(eng, [{"id": 1, "prefix": "0123456789def add(a, b): return", "suffix": "\nxyzw-more", "gt": " a + b"}])
    assert res["es"] == 100.0 and res["em"] == 100.0
    prompt = _FakeLlama.prompts[0]
    if fim:
        assert prompt == "<|fim_prefix|>b): return<|fim_suffix|>\nxyz<|fim_middle|>"  # last 10 / first 4 tokens
    else:
        assert prompt == "b): return"


def test_llama_cpp_missing_is_a_clear_error(monkeypatch, tmp_path):
    from pocketpilot.evaluation.llamacpp import LlamaCppEngine

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'pocketpilot\[llamacpp\]'"):
        LlamaCppEngine(tmp_path / "m.gguf")


def test_teacher_gguf_needs_a_gguf_teacher(tmp_path, pp_home):
    from pocketpilot.teachers import teacher_gguf
    from pocketpilot.errors import FetchError

    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert teacher_gguf(str(g)) == g.resolve()
    with pytest.raises(FetchError, match="has no GGUF file"):
        teacher_gguf("hf:org/model")


def test_markdown_humaneval_without_recode_has_no_empty_columns():
    res = {"config": {"suites": ["humaneval"], "seed": 0, "limit": None}, "wall_s": 1.0, "ratios": {},
           "models": {"a": {"humaneval": {"n": 164, "pass@1": 12.2}}}}
    md = markdown(res)
    assert "| model | HumanEval |\n|---|---:|\n| a | 12.2 |" in md
