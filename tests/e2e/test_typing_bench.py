"""`pocketpilot bench typing` against the real server on the tiny model (figures, not timings)."""

import sys

import pytest

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.typing_replay import keystrokes, pick_stretches, run_typing_bench

pytestmark = pytest.mark.e2e
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
from tiny import CORPUS  # noqa: E402


def test_keystrokes_bring_the_indent_with_a_newline():
    assert keystrokes("ab\n    c\n") == ["a", "b", "\n    ", "c", "\n"]


def test_stretches_are_deterministic_and_need_code(tmp_path):
    (tmp_path / "a.py").write_text("".join(CORPUS) * 6)
    (tmp_path / "b.py").write_text("x = 1\n" * 40)
    one = pick_stretches(tmp_path, files=2, lines=2, seed=3)
    assert one == pick_stretches(tmp_path, files=2, lines=2, seed=3) and len(one) == 2
    for st in one:
        assert st.typed.count("\n") == 2 and st.path.read_text() == st.before + st.typed + st.after
    (tmp_path / "empty").mkdir()
    with pytest.raises(PocketPilotError, match="consecutive code lines"):
        pick_stretches(tmp_path / "empty")


def test_replay_with_and_without_reuse(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    (tmp_path / "a.py").write_text("".join(CORPUS) * 6)
    res = run_typing_bench(tmp_path, files=1, lines=1, seed=0, cps=200, debounce_ms=1, open_pause_s=0.5,
                           background_load=1)
    on, off, loaded = res["on"], res["off"], res["loaded"]
    assert on["requests"] == off["requests"] == loaded["requests"] > 5
    assert set(res["loaded_over_quiet"]) == {"p50", "p95"}
    assert on["prefilled_tokens_p50"] < off["prefilled_tokens_p50"]  # reuse: fewer tokens per keystroke
    assert on["first_latency_ms_p50"] is not None
    assert on["cache_hit_rate"] > 0.5 and on["reused_tokens_mean"] > 10
    assert off["cache_hit_rate"] == 0 and off["reused_tokens_mean"] == 0 and off["typed_ahead_hits"] == 0
    assert on["suggestions"] > 0 and 0 <= on["accepted"] <= on["suggestions"]
    assert res["p50_ratio_off_over_on"] is not None
