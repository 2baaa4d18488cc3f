"""HumanEval pass@1 and ReCode robustness: checking, pass@k, generation stops, aggregation.

The sandbox the programs run in is tested in tests/unit/test_sandbox.py.
"""

from __future__ import annotations

import pytest

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation import humaneval as he

# ---------------------------------------------------------------- problems and checking


def test_canonical_solutions_pass_and_empty_bodies_fail(shared_data):
    problems = he.load_problems(limit=5)
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(5)]
    for p in problems:
        assert he.check(p, he.as_completion(p["prompt"], p["canonical_solution"])).status == "passed", p["task_id"]
        assert he.check(p, p["canonical_solution"]).status != "passed"  # completions continue the stripped prompt
        res = he.check(p, he.as_completion(p["prompt"], "    pass\n"))
        assert not res.passed and res.status in ("failed", "error"), (p["task_id"], res)


def test_missing_data_folder_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(PocketPilotError) as info:
        he.load_problems()
    msg = str(info.value)
    assert "POCKETPILOT_DATA" in msg and "nowhere" in msg and "\n" not in msg


def test_pass_at_k_hand_computed():
    assert he.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert he.pass_at_k(1, 1, 1) == 1.0 and he.pass_at_k(1, 0, 1) == 0.0
    assert he.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert he.pass_at_k(4, 1, 3) == pytest.approx(0.75)  # 1 - C(3,3)/C(4,3)
    assert he.pass_at_k(20, 5, 10) == pytest.approx(1 - 3003 / 184756)  # 1 - C(15,10)/C(20,10)
    assert he.pass_at_k(10, 8, 3) == 1.0  # fewer than k wrong samples
    with pytest.raises(ValueError):
        he.pass_at_k(3, 4, 1)


# ---------------------------------------------------------------- generation


def test_truncate_completion():
    assert he.truncate_completion("    return 1\n\ndef g():\n    pass\n") == "    return 1\n"
    assert he.truncate_completion("    x = 1\nprint(x)\n") == "    x = 1"
    assert he.truncate_completion("    x = 1\n# done\n") == "    x = 1"
    assert he.truncate_completion("    x = 1\nfoo = 2\n") == "    x = 1"  # any unindented line
    assert he.truncate_completion("\tif x:\n\n\t\treturn x\n") == "\tif x:\n\n\t\treturn x\n"
    assert he.truncate_completion("def g():\n", at_line_start=True) == ""
    assert he.truncate_completion(" a + b\n", at_line_start=False) == " a + b\n"


@pytest.fixture(scope="module", params=["float", "int8"])
def tiny_loaded(request):
    from pocketpilot.runtime.loader import load_model_folder

    if request.param == "float":
        return load_model_folder(request.getfixturevalue("tiny_teacher"))
    from pocketpilot.runtime.loader import load_artifact

    mp = pytest.MonkeyPatch()
    mp.setenv("POCKETPILOT_HOME", str(request.getfixturevalue("tiny_home")))
    try:
        loaded = load_artifact(None)
    finally:
        mp.undo()
    assert loaded.quantization is not None
    return loaded


def test_generate_stops(tiny_loaded, monkeypatch):
    # EOS: the tiny teacher writes "\n    return a + b\n" then <|endoftext|> (7 tokens)
    text, stats = he.generate(tiny_loaded, "def add(a, b):", max_new_tokens=40)
    assert text == "\n    return a + b\n" and stats["new_tokens"] == 7 and stats["ms"] > 0
    # an indented `def` is part of the body; the whole class is written, up to EOS
    text, _ = he.generate(tiny_loaded, "class Point:", max_new_tokens=40)
    assert "    def __init__(self, x, y):" in text and text.endswith("self.y = y\n")
    # an unindented line ends the body: "\npath = ..." (15 tokens unstopped) stops at once
    text, stats = he.generate(tiny_loaded, "import os", max_new_tokens=40)
    assert text == "" and stats["new_tokens"] <= 3
    # stop_strings: with " + " as a stop sequence decoding ends inside the line
    monkeypatch.setattr(he, "STOP_SEQUENCES", he.STOP_SEQUENCES + [" + "])
    text, stats = he.generate(tiny_loaded, "def add(a, b):", max_new_tokens=40)
    assert text == "\n    return a" and stats["new_tokens"] < 7


# ---------------------------------------------------------------- ReCode aggregation


def test_evaluate_recode_figures_and_cache(monkeypatch, shared_data):
    recode = he.data_dir() / "recode"
    sets = he.recode_sets()
    rows = he.load_problems(limit=2) + he.load_problems(recode / "humaneval_partial.jsonl", limit=2)
    for cat in ("func_name", "natgen"):
        for path in sets[cat].values():
            rows += he.load_problems(path, limit=2)
    answer = {r["prompt"]: r["canonical_solution"] for r in rows}
    partial0 = rows[2]["prompt"]
    calls, runs = [], []

    def fake_generate(loaded, prompt, max_new_tokens=300):
        calls.append(prompt)
        # right iff the function keeps its HumanEval name, except on the partial nominal of task 0
        keeps = "def has_close_elements(" in prompt or "def separate_paren_groups(" in prompt
        ok = keeps and prompt != partial0
        body = answer[prompt] if ok else "    return None\n"
        return he.as_completion(prompt, body), {"new_tokens": 3, "ms": 1.0}

    real_run = he.run_program

    def counting_run(program, **kw):
        runs.append(program)
        return real_run(program, **kw)

    monkeypatch.setattr(he, "generate", fake_generate)
    monkeypatch.setattr(he, "run_program", counting_run)
    out = he.evaluate_recode(None, categories=["func_name", "natgen"], limit=2)

    assert out["n"] == 2 and out["nominal"] == 100.0 and out["partial_nominal"] == 50.0
    # func_name renames: both tasks renamed in 4 transforms, task 1 kept by SwapChar, both by SynonymSub
    fn = out["categories"]["func_name"]
    assert fn["sets"] == {"FuncRenameButterFinger": 0.0, "FuncRenameCamelCase": 0.0, "FuncRenameChangeChar": 0.0,
                          "FuncRenameInflectionalVariation": 0.0, "FuncRenameSwapChar": 50.0,
                          "FuncRenameSynonymSub": 100.0}
    figures = ("nominal", "mean", "worst", "drop_mean", "drop_worst")
    assert tuple(fn[k] for k in figures) == (100.0, 25.0, 0.0, 75.0, 100.0)
    # natgen keeps names; ReCode's DeadCodeInserter prompt for task 0 has its dead code at module level
    # (`return` outside a function), so that one fails whatever the completion. Drops vs the partial nominal.
    ng = out["categories"]["natgen"]
    assert ng["sets"]["DeadCodeInserter"] == 50.0 and len(ng["sets"]) == 7
    assert all(v == 100.0 for k, v in ng["sets"].items() if k != "DeadCodeInserter")
    assert tuple(ng[k] for k in figures) == (50.0, 92.86, 50.0, -42.86, 0.0)  # mean = (6 * 100 + 50) / 7
    assert out["perturbed"]["func_name/FuncRenameSwapChar"] == 50.0
    assert out["details"]["func_name/FuncRenameSynonymSub"]["results"][0]["cached"] is True
    # cache: one generation per distinct prompt (27 of the 30 rows), one sandbox run per distinct program
    distinct = {r["prompt"] for r in rows}
    assert len(distinct) < len(rows)
    assert len(calls) == len(set(calls)) == len(distinct) == out["generations"]
    assert len(runs) == len(set(runs)) <= len(distinct)  # two wrong programs may coincide


def test_unknown_category_lists_available(shared_data):
    with pytest.raises(PocketPilotError) as info:
        he.evaluate_recode(None, categories=["natgen", "typos"])
    msg = str(info.value)
    assert "typos" in msg and all(c in msg for c in ("format", "func_name", "natgen", "nlaugmenter"))
    with pytest.raises(PocketPilotError, match="available"):
        he.evaluate_recode(None, categories=["natgen"], transforms=["NoSuchTransform"])


def test_prompt_boundary_decides_whether_trailing_whitespace_is_stripped():
    import re

    class Merging:  # like SmolLM2: a newline and the next line's indentation are one token
        def encode(self, text, add_special_tokens=False):
            return re.findall(r"\n +|.", text, re.S)

    class CharLevel:
        def encode(self, text, add_special_tokens=False):
            return list(text)

    prompt = 'def f(x):\n    """doc"""\n'
    assert not he._natural_boundary(Merging(), prompt)
    assert he._natural_boundary(CharLevel(), prompt)
