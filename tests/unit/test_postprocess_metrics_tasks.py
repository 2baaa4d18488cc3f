import pytest

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.metrics import edit_similarity, exact_match
from pocketpilot.evaluation.tasks import make_tasks, read_tasks, write_tasks
from pocketpilot.runtime.postprocess import bracket_depth, finalize, trim_suffix_overlap


@pytest.mark.parametrize("completion, line_prefix, suffix, expected", [
    ("x)", "print(", ")\nnext", "x"),            # repeats the closing bracket after the cursor
    ("f(a)", "print(", ")\n", "f(a)"),           # its own brackets balance: keep
    ("a, b): pass", "def f(", "): pass\n", "a, b"),
    ("foo", "x = ", "\n", "foo"),                 # nothing after the cursor
    ("value", "x = ", " # comment\n", "value"),   # no overlap
])
def test_trim_suffix_overlap(completion, line_prefix, suffix, expected):
    assert trim_suffix_overlap(completion, line_prefix, suffix) == expected


def test_finalize_single_line_and_suffix_repeat():
    assert finalize(" a + b\n    more", "    return", "\n") == " a + b"
    assert finalize("   \n", "x", "") == ""
    assert finalize("name)", "print(", "name)\n") == ""  # only repeats the suffix
    assert bracket_depth("f(a[1], {") == 2


def test_edit_similarity_and_exact_match_by_hand():
    # Indel distance: "abcd" -> "abed" needs 1 deletion + 1 insertion; ratio = 100 * (1 - 2/8) = 75
    assert edit_similarity("abcd", "abed") == pytest.approx(75.0)
    assert edit_similarity(" return x ", "return x") == 100.0
    assert edit_similarity("", "abc") == 0.0
    assert exact_match("a  +  b", "a + b")
    assert not exact_match("a+b", "a + b")


def test_make_tasks_is_deterministic_and_cuts_inside_real_lines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    body = "\n".join(f"    value_{i} = compute(alpha, beta, {i})" for i in range(60))
    (src / "a.py").write_text("def f():\n" + body + "\n")
    t1 = make_tasks(src, n=20, seed=3, min_prefix_chars=0)
    t2 = make_tasks(src, n=20, seed=3, min_prefix_chars=0)
    assert t1 == t2 and len(t1) == 20
    assert make_tasks(src, n=20, seed=4, min_prefix_chars=0) != t1
    text = (src / "a.py").read_text()
    for t in t1:
        assert t["prefix"] + t["gt"] + "\n" + t["suffix"] == text.rstrip("\n") + ("\n" if t["suffix"] == "" else "") or \
            text.startswith(t["prefix"] + t["gt"] + "\n" + t["suffix"])
        line = (t["prefix"].rsplit("\n", 1)[-1]) + t["gt"]
        assert line in text.split("\n")
        assert t["gt"].strip() and t["prefix"].rsplit("\n", 1)[-1].strip()  # cursor inside the code
    out = tmp_path / "t.jsonl"
    write_tasks(t1, out)
    assert read_tasks(out) == t1


def test_task_errors(tmp_path):
    with pytest.raises(PocketPilotError, match="not found"):
        make_tasks(tmp_path / "missing")
    with pytest.raises(PocketPilotError, match="no .py files"):
        make_tasks(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix": "x"}\n')
    with pytest.raises(PocketPilotError, match="bad.jsonl:1"):
        read_tasks(bad)
