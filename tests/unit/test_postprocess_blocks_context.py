"""Block mode, bracket balancing, indentation and neighbouring-document snippets (no model)."""

import pytest

from pocketpilot.runtime.context import Snippet, best_snippets, comment_prefix, identifiers, jaccard
from pocketpilot.runtime.postprocess import (
    block_end,
    block_opener,
    cut_unmatched_closers,
    finalize,
    match_indentation,
    open_brackets,
    trim_repeated_lines,
)


@pytest.mark.parametrize("prefix, suffix, language, expected", [
    ("def f(x):\n", "", "python", ""),
    ("class A:\n    def f(self):\n        ", "\n", "python", "    "),
    ("if (x) {\n", "\n}\n", "javascript", ""),
    ("    while (x) {\n\n", "", None, "    "),      # blank lines between opener and cursor
    ("if (x) {\n", "", "python", None),            # `{` does not open a Python block
    ("def f(x):\n    return", "", "python", None),  # cursor not on a blank line
    ("def f(x):\n", "pass\n", "python", None),      # text after the cursor on its line
    ("x = 1\n", "", "python", None),
])
def test_block_opener(prefix, suffix, language, expected):
    assert block_opener(prefix, suffix, language) == expected


def test_block_end_stops_where_indentation_returns_to_the_opener():
    raw = "    a = 1\n\n    if a:\n        b()\nprint(a)\n"
    assert raw[: block_end(raw, "", "")] == "    a = 1\n\n    if a:\n        b()\n"
    assert block_end("    a = 1\n    b = 2", "", "") is None  # still inside the body
    assert block_end("    a = 1\n  ", "", "") is None  # the next line's indentation is not known yet
    assert block_end("a = 1\n    b", "    ", "") is None  # the cursor line already holds the indent
    assert block_end("x = 1\n    y", "", "") == 5  # the first line is not indented: that line alone
    assert block_end("\t\tpass\n\tdone", "", "\t") == len("\t\tpass\n")


def test_finalize_block_cuts_at_dedent_repeats_and_unfinished_lines():
    raw = "    total = 0\n    for x in xs:\n        total += x\nprint(total)\n"
    assert finalize(raw, "", "\n", opener_indent="") == "    total = 0\n    for x in xs:\n        total += x"
    # stops where it starts repeating the line after the cursor
    assert finalize("    a = 1\n    return a\n", "", "\n    return a\n", opener_indent="") == "    a = 1"
    # the token limit cut the last line: drop it
    assert finalize("    a = 1\n    b = comp", "", "", opener_indent="", truncated=True) == "    a = 1"
    # tabs in a tab-indented document
    assert finalize("\ta = 1\n    b = 2\n", "", "", opener_indent="", uses_tabs=True) == "\ta = 1\n\tb = 2"


def test_brace_blocks_get_their_closer_unless_the_suffix_has_it():
    raw = "    return x;\n}\n"
    still_open = open_brackets("int f(int x) {\n", "c")
    assert finalize(raw, "", "", still_open=still_open, opener_indent="") == "    return x;\n}"
    assert finalize(raw, "", "\n}\n", still_open=still_open, opener_indent="") == "    return x;"


def test_open_brackets_skip_strings_and_comments():
    assert open_brackets("f(a, [1, 2", "python") == ["(", "["]
    assert open_brackets("s = '(' + \"[\"  # (\nx = {", "python") == ["{"]
    assert open_brackets("a = b) + (c", "python") == ["("]  # a stray closer is ignored
    assert open_brackets("x = f( // )\n", "javascript") == ["("]


@pytest.mark.parametrize("completion, still_open, expected", [
    ("1, 2])", ["["], "1, 2]"),        # `)` closes nothing that is open
    ("x))", ["(", "("], "x))"),
    ("g(x))) + 1", ["("], "g(x))"),
    ("')' + y", [], "')' + y"),        # brackets inside strings do not count
    ("a }", ["("], "a"),               # mismatched closer
])
def test_cut_unmatched_closers(completion, still_open, expected):
    assert cut_unmatched_closers(completion, still_open) == expected


def test_finalize_balances_against_the_open_brackets_and_the_suffix():
    assert finalize("3, 4])\n", "xs = [1, 2, ", "\n", still_open=["["]) == "3, 4]"
    assert finalize("3, 4])\n", "xs = f([1, 2, ", ")\n", still_open=["(", "["]) == "3, 4]"


def test_trim_repeated_lines_and_match_indentation():
    assert trim_repeated_lines("a\nb\nc", "\n  c\n") == "a\nb"
    assert trim_repeated_lines("a\nb", "\n\n") == "a\nb"
    assert match_indentation("x\n\ty\n\t\tz", uses_tabs=False) == "x\n    y\n        z"
    assert match_indentation("x\n      y", uses_tabs=True) == "x\n\t  y"


def test_jaccard_snippets_pick_the_most_similar_window():
    assert identifiers("self.total = total + item_1") == {"self", "total", "item_1"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 0.0
    unrelated = "\n".join(f"colour_{i} = paint(brush)" for i in range(40))
    related = "\n".join(["import os"] * 25 + ["def load_config(path):", "    with open(path) as fh:",
                                               "        return parse_config(fh.read())"] + ["pass"] * 10)
    query = "config = load_config(path)\nvalues = parse_config(text)"
    got = best_snippets(query, [("paint.py", unrelated), ("config.py", related)], window_lines=10, stride=5)
    assert [s.path for s in got] == ["config.py"] and "def load_config(path):" in got[0].text
    assert best_snippets("", [("config.py", related)]) == []
    rendered = Snippet("config.py", 0, "a = 1\n\nb = 2", 0.5).render("python")
    assert rendered == "# Compare this snippet from config.py:\n# a = 1\n#\n# b = 2\n"
    assert comment_prefix("typescript") == "//" and comment_prefix("lua") == "--"
