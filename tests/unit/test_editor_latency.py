"""Editor latency in the engine: FIM layouts that survive typing, moved suffix keys, warm-up,
the suggestion cache, the time budget and the thread count."""

import pytest
import torch

from pocketpilot.runtime import CompletionEngine, load_model_folder
from pocketpilot.runtime import engine as engine_module
from pocketpilot.runtime import threads as threads_module
from pocketpilot.runtime.decoding import Generation
from pocketpilot.runtime.settings import EngineSettings
from pocketpilot.runtime.threads import FreeCores
from tests.tiny import make_tiny_teacher

BODY = "def add(a, b):\n    return a + b\n\ndef greet(name):\n    print(\"hello \" + name)\n\n"
SUFFIX = "\nfor item in items:\n    total = total + item\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


@pytest.fixture(scope="session")
def one_layer_fim(tmp_path_factory):
    """A one-layer FIM teacher: its cached keys/values depend only on token and position."""
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-fim-1"), fim=True, layers=1, steps=150)


def _engine(folder, **settings):
    return CompletionEngine(load_model_folder(folder), EngineSettings(**settings))


def test_spm_typing_only_appends_and_gives_the_cold_completion(tiny_fim_teacher):
    warm = _engine(tiny_fim_teacher, fim_layout="spm", draft_tokens=0)
    cold = _engine(tiny_fim_teacher, fim_layout="spm", draft_tokens=0)
    fp, fs, fm = warm.fim
    ids = warm.build_prompt(BODY, SUFFIX)
    assert ids[0] == fs and ids[-1] == fm and ids.index(fp) > ids.index(fs)
    typed = BODY
    prefilled = []
    for ch in "def add(a":
        typed += ch
        got = warm.complete(typed, SUFFIX, cache_key="doc")
        if got.typed_ahead or got.remembered:
            continue
        prefilled.append(got.prefilled_tokens)
        assert got.text == cold.complete(typed, SUFFIX).text, typed
    assert prefilled and max(prefilled[1:] or [0]) <= 4  # a keystroke re-runs the new token(s) and <fim_middle>


def test_moved_suffix_keys_give_the_cold_logits_on_a_one_layer_model(one_layer_fim):
    eng = _engine(one_layer_fim, fim_layout="psm-shift", draft_tokens=0)
    assert eng.backend.can_shift
    eng.complete(BODY + "def ad", SUFFIX, cache_key="doc", allow_block=False)
    for typed in ("def add", "def add(a, b", "def a"):  # grow, grow more, shrink
        prompt = eng.build_prompt(BODY + typed, SUFFIX, window_start=0)
        logits, cache, reuse, fed = eng._prefill(prompt, "doc")
        fresh, _, none, _ = eng._prefill(prompt, None)
        assert reuse.move_len >= 10 and none.reused == 0 and fed == len(prompt)
        assert len(prompt) - reuse.reused <= 6  # the new prefix tokens and <fim_middle> ran, not the suffix
        assert torch.allclose(logits, fresh, atol=1e-4), (logits - fresh).abs().max()
        eng.docs.remember("doc", engine_module.DocState(prompt, cache, 0, "", "", ""), 10**9)


def test_moved_suffix_in_the_engine_reports_what_it_reused(tiny_fim_teacher):
    shift = _engine(tiny_fim_teacher, fim_layout="psm-shift")
    plain = _engine(tiny_fim_teacher, fim_layout="psm")
    for eng in (shift, plain):
        eng.complete(BODY + "def ad", SUFFIX, cache_key="doc")
    a = shift.complete(BODY + "def add", SUFFIX, cache_key="doc")
    b = plain.complete(BODY + "def add", SUFFIX, cache_key="doc")
    assert a.moved_tokens >= 10 and b.moved_tokens == 0
    assert a.prefilled_tokens < 5 < b.prefilled_tokens  # psm recomputes the whole suffix


def test_warm_up_is_pre_empted_within_one_chunk_and_makes_the_request_warm(tiny_fim_teacher, monkeypatch):
    eng = _engine(tiny_fim_teacher)
    monkeypatch.setattr(engine_module, "WARM_CHUNK", 4)
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 3  # polled on entry and before each chunk: a request came during the second

    done = eng.warm(BODY, SUFFIX, cache_key="doc", should_stop=stop_after_two)
    assert done == 8  # two chunks of 4, then it yielded
    assert eng.warm(BODY, SUFFIX, cache_key="doc") > 0  # resumes where it stopped
    assert eng.warm(BODY, SUFFIX, cache_key="doc") == 0  # nothing left
    got = eng.complete(BODY, SUFFIX, cache_key="doc")
    assert got.prefilled_tokens == 1 and got.text == _engine(tiny_fim_teacher).complete(BODY, SUFFIX).text


def test_speculative_answer_is_served_on_accept_and_not_after_another_edit(tiny_teacher):
    eng = _engine(tiny_teacher)
    shown = eng.complete("def add(a, b):\n    return", "\n", cache_key="doc")
    assert shown.text.strip()
    accepted = "def add(a, b):\n    return" + shown.text
    spec = eng.complete(accepted + "\n", "\n", cache_key="doc", remember_answer=False)
    assert not spec.remembered
    part = eng.complete("def add(a, b):\n    return" + shown.text[:2], "\n", cache_key="doc")
    assert part.typed_ahead and part.text == shown.text[2:]  # the shown suggestion still types ahead
    hit = eng.complete(accepted + "\n", "\n", cache_key="doc")
    assert hit.remembered and hit.text == spec.text and hit.new_tokens == 0
    other = eng.complete(accepted + "\n#", "\n", cache_key="doc")
    assert not other.remembered and not other.typed_ahead


def test_time_budget_keeps_only_complete_lines(tiny_teacher, monkeypatch):
    prefix = "class Point:\n    def __init__(self, x, y):\n"
    full = _engine(tiny_teacher, draft_tokens=0).complete(prefix, "", language="python")
    assert full.block and "\n" in full.text
    roomy = _engine(tiny_teacher, max_latency_ms=60_000, draft_tokens=0).complete(prefix, "", language="python")
    assert not roomy.cut and roomy.text == full.text  # a budget that is not spent cuts nothing
    take = Generation.take

    def budget_spent_after_a_line(self, tok):  # the clock passes the deadline once a line is written
        if "\n" in self.raw:
            self.deadline = 0.0
        return take(self, tok)

    monkeypatch.setattr(Generation, "take", budget_spent_after_a_line)
    cut = _engine(tiny_teacher, max_latency_ms=60_000, draft_tokens=0).complete(prefix, "", language="python")
    assert cut.cut and cut.text == full.text.split("\n")[0]

    def spent_at_once(self, tok):
        self.deadline = 0.0
        return take(self, tok)

    monkeypatch.setattr(Generation, "take", spent_at_once)
    one_line = _engine(tiny_teacher, max_latency_ms=60_000).complete("def add(a, b):\n    return", "\n")
    assert one_line.cut and one_line.text == ""  # an unfinished single line is not shown


def test_thread_setting_is_honoured_and_auto_uses_the_free_cores(tiny_teacher, monkeypatch):
    before = torch.get_num_threads()
    try:
        eng = _engine(tiny_teacher, threads=1)
        assert eng.complete("def add(a, b):\n    return", "\n").threads == 1 and torch.get_num_threads() == 1
        auto = CompletionEngine(load_model_folder(tiny_teacher), EngineSettings(), max_threads=2)
        monkeypatch.setattr(auto.cores, "threads", lambda: 2)
        assert auto.complete("def greet(name):\n    print", "\n").threads == 2 and torch.get_num_threads() == 2
        capped = CompletionEngine(load_model_folder(tiny_teacher), EngineSettings(), max_threads=1)
        monkeypatch.setattr(capped.cores, "threads", lambda: 2)  # free cores never raise it past the caller's
        assert capped.complete("import os\npath = os", "\n").threads == 1
    finally:
        torch.set_num_threads(before)


def test_free_cores_subtracts_other_programs_load(monkeypatch):
    meter = FreeCores(cores=[0, 1])
    samples = iter([(10.0, 100.0, 5.0), (11.0, 101.9, 5.9)])  # 1.9 CPU-s busy in 1 s, 0.9 of it ours
    monkeypatch.setattr(meter, "_sample", lambda: next(samples))
    meter._mark = (9.0, 99.0, 5.0)
    assert meter.threads() == 1  # others kept one core busy: one left
    assert meter.threads() == 1 and abs(meter.others - 1.0) < 1e-9
    quiet = FreeCores(cores=[0, 1])
    quiet._mark = (0.0, 0.0, 0.0)
    monkeypatch.setattr(quiet, "_sample", lambda: (1.0, 0.3, 0.3))  # only this process ran
    assert quiet.threads() == 2
    soon = FreeCores(cores=[0, 1])
    soon._mark = (10.0, 0.0, 0.0)
    monkeypatch.setattr(soon, "_sample", lambda: (10.0 + threads_module.MIN_WINDOW_S / 2, 5.0, 0.0))
    assert soon.threads() == 2  # a window shorter than MIN_WINDOW_S keeps the last answer
