import shutil

from pocketpilot.compression import compress
from pocketpilot.runtime.loader import load_artifact
from pocketpilot.runtime import CompletionEngine, EngineSettings, load_model_folder
from tiny import FIM_TOKENS


def test_fim_prompt_layout_and_completion(tiny_fim_teacher):
    engine = CompletionEngine(load_model_folder(tiny_fim_teacher))
    assert engine.uses_fim
    tok = engine.tokenizer
    fp, fs, fm = (tok.convert_tokens_to_ids(t) for t in FIM_TOKENS)
    ids = engine.build_prompt("def add(a, b):\n", "\nnext")
    assert ids[0] == fp and ids[-1] == fm and ids.count(fs) == 1
    assert tok.decode(ids[1 : ids.index(fs)]) == "def add(a, b):\n"
    assert tok.decode(ids[ids.index(fs) + 1 : -1]) == "\nnext"
    assert engine.complete("def add(a, b):\n", "\n").text == "    return a + b"


def test_prefix_only_prompt_and_windows(tiny_teacher):
    loaded = load_model_folder(tiny_teacher)
    engine = CompletionEngine(loaded)
    assert not engine.uses_fim
    assert loaded.tokenizer.decode(engine.build_prompt("x = 1\n", "ignored suffix")) == "x = 1\n"
    small = CompletionEngine(loaded, EngineSettings(prefix_tokens=4))
    ids = small.build_prompt("def add(a, b):\n    return", "")
    assert len(ids) == 4 and loaded.tokenizer.decode(ids).endswith("return")


def test_single_line_stop_limits_and_cancellation(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    c = engine.complete("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y", "")
    assert c.text == " = y" and "\n" in c.raw and c.new_tokens >= 2 and c.prefill_ms > 0 and not c.block
    one = engine.complete("def add(a, b):\n    return", "\n", max_new_tokens=1)
    assert one.new_tokens == 1
    calls = []
    stopped = engine.complete("def add(a, b):\n    return", "\n", should_stop=lambda: calls.append(1) or len(calls) > 2)
    assert stopped.cancelled and stopped.new_tokens == 2 and len(calls) == 3
    at_once = engine.complete("def add(a, b):\n    return", "\n", should_stop=lambda: True)
    assert at_once.cancelled and at_once.new_tokens == 0 and at_once.prompt_tokens == 0


def test_block_mode_completes_the_body_and_only_after_an_opener(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    block = engine.complete("class Point:\n", "", language="python")
    assert block.block and block.text == "    def __init__(self, x, y):\n        self.x = x\n        self.y = y"
    inner = engine.complete("class Point:\n    def __init__(self, x, y):\n", "\nprint(p)\n", language="python")
    assert inner.block and inner.text == "        self.x = x\n        self.y = y"
    # mid-line, or a `{` opener in Python, or block mode off: one line only
    assert not engine.complete("def add(a, b):\n    return", "\n", language="python").block
    assert not engine.complete("class Point {\n", "", language="python").block
    single = CompletionEngine(engine.loaded, EngineSettings(multiline=False))
    assert single.complete("class Point:\n", "", language="python").text == "    def __init__(self, x, y):"
    assert engine.complete("class Point:\n", "", language="python", allow_block=False).text == "    def __init__(self, x, y):"
    capped = engine.complete("class Point:\n", "", language="python", max_new_tokens=12)
    assert capped.new_tokens == 12 and capped.text == "    def __init__(self, x, y):"  # unfinished last line dropped


def test_token_healing_completes_inside_a_word(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    ids = engine.build_prompt("def add(a, b):\n    ret", "")
    healed, removed = engine.healer.heal(ids)
    k = len(ids) - len(healed)
    assert 1 <= k <= 3 and healed == ids[:-k] and removed == engine.tokenizer.decode(ids[-k:]) and removed.endswith("ret")
    assert engine.complete("def add(a, b):\n    ret", "\n").text == "urn a + b"
    assert engine.complete("def add(a, b):\n", "").text == "    return a + b"


def test_snippets_from_other_documents_go_before_the_prefix(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher), EngineSettings(context_tokens=40))
    short, long = "# a.py\n# x = 1\n", "# b.py\n" + "# total = total + item\n" * 20
    ctx = engine.pack_context([short, long])
    assert engine.tokenizer.decode(ctx) == short  # the second does not fit the budget
    c = engine.complete("def add(a, b):\n    return", "\n", snippets=[short, long])
    assert c.context_tokens == len(ctx) and c.prompt_tokens == len(ctx) + len(engine.build_prompt("def add(a, b):\n    return", "")) - 1
    assert engine.build_prompt("x", "", context=ctx)[: len(ctx)] == ctx
    off = CompletionEngine(engine.loaded, EngineSettings(context_tokens=0))
    assert off.complete("def add(a, b):\n    return", "\n", snippets=[short]).context_tokens == 0


def test_cancelled_prefill_keeps_its_keys_and_values_for_the_next_request(tiny_teacher, monkeypatch):
    from pocketpilot.runtime import engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 8)
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y"
    calls = []
    stopped = engine.complete(text, "", cache_key="d", should_stop=lambda: calls.append(1) or len(calls) > 1)
    assert stopped.cancelled and stopped.new_tokens == 0 and 0 < len(engine.docs["d"].ids) < stopped.prompt_tokens
    fed = len(engine.docs["d"].ids)
    again = engine.complete(text, "", cache_key="d")
    assert again.reused_tokens == fed and again.text == " = y"


def test_artifact_loads_without_the_teacher(pp_home, tiny_teacher, tmp_path):
    teacher = shutil.copytree(tiny_teacher, tmp_path / "teacher-copy")
    res = compress(str(teacher), "int8", eval_tasks=0)
    shutil.rmtree(teacher)
    engine = CompletionEngine(load_artifact(res.artifact_id))
    assert engine.complete("def add(a, b):\n    return", "\n").text == " a + b"


def test_kv_prefix_reuse_gives_the_same_logits_as_a_full_prefill(tiny_teacher, monkeypatch):
    import torch

    from pocketpilot.runtime import engine as engine_module

    engine = CompletionEngine(load_model_folder(tiny_teacher))
    first = engine.complete("class Point:\n    def __init__(self, x, y):\n        self.x", "", cache_key="doc")
    assert first.reused_tokens == 0 and first.text == " = x"
    prompt = engine.build_prompt("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y", "",
                                 window_start=0)
    reused_logits, _, reuse, fed = engine._prefill(prompt, "doc")
    fresh_logits, _, fresh, _ = engine._prefill(prompt, None)
    assert fresh.reused == 0 and reuse.reused > len(prompt) // 2 and fed == len(prompt)
    assert torch.allclose(reused_logits, fresh_logits, atol=1e-4), (reused_logits - fresh_logits).abs().max()
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 5)  # chunked prefill: same logits
    chunked_logits, _, _, _ = engine._prefill(prompt, None)
    assert torch.allclose(chunked_logits, fresh_logits, atol=1e-4), (chunked_logits - fresh_logits).abs().max()


def test_completions_with_a_cache_key_reuse_and_match_fresh_ones(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    fresh = CompletionEngine(engine.loaded)
    text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y"
    results = []
    for cut in range(len(text) - 6, len(text) + 1):  # typing the last characters one by one
        c = engine.complete(text[:cut], "", cache_key="doc")
        assert c.text == fresh.complete(text[:cut], "").text or c.typed_ahead
        results.append(c)
    assert any(r.reused_tokens > 0 for r in results if not r.typed_ahead)


def test_typed_ahead_answers_from_the_previous_suggestion(tiny_teacher):
    engine = CompletionEngine(load_model_folder(tiny_teacher))
    assert engine.complete("def add(a, b):\n    return", "\n", cache_key="d").text == " a + b"
    ahead = engine.complete("def add(a, b):\n    return a", "\n", cache_key="d")
    assert ahead.typed_ahead and ahead.text == " + b" and ahead.new_tokens == 0
    assert engine.complete("def add(a, b):\n    return a +", "\n", cache_key="d").text == " b"
    diverged = engine.complete("def add(a, b):\n    return x", "\n", cache_key="d")
    assert not diverged.typed_ahead


def test_prefix_window_start_is_stable_and_lru_is_bounded(tiny_teacher):
    loaded = load_model_folder(tiny_teacher)
    engine = CompletionEngine(loaded, EngineSettings(prefix_tokens=24))
    text = "def add(a, b):\n    return a + b\n" * 6 + "for item in items:\n    total = total +"
    engine.complete(text[:-3], "", cache_key="a")
    start = engine.docs["a"].window_start
    assert 0 < start and text[start - 1] == "\n"
    second = engine.complete(text + " 1", "", cache_key="a")  # not what was suggested: no typed-ahead
    assert engine.docs["a"].window_start == start and second.reused_tokens > 10 and not second.typed_ahead
    small = CompletionEngine(loaded, EngineSettings(kv_cache_mb=0))
    small.complete("def add(a, b):\n    return", "\n", cache_key="x")
    assert small.cached_bytes == 0
    one_doc = engine.kv_bytes_per_token * 40 / 1e6
    lru = CompletionEngine(loaded, EngineSettings(kv_cache_mb=1))
    lru.settings = EngineSettings(kv_cache_mb=max(1, int(one_doc)))
    for key in ("a", "b", "c"):
        lru.complete(f"# {key}\n" + text, "", cache_key=key)  # distinct texts: no suggestion-cache hit
    assert list(lru.docs)[-1] == "c" and lru.cached_bytes <= lru.settings.kv_cache_mb * 1_000_000


def test_random_typing_with_cancellations_matches_fresh_completions(tiny_teacher, monkeypatch):
    """Reuse must never change an answer: type, delete and cancel at random, compare with no reuse."""
    import random

    from pocketpilot.runtime import engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 4)
    loaded = load_model_folder(tiny_teacher)
    engine, fresh = CompletionEngine(loaded), CompletionEngine(loaded)
    rng = random.Random(1)
    text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
    answered = 0
    for _ in range(150):
        cut = rng.randint(len(text) - 30, len(text) - 1)
        polls = rng.choice([0, 1, 2, 3, 1000, 1000, 1000])
        calls = []
        c = engine.complete(text[:cut], text[cut:], cache_key="doc",
                            should_stop=lambda: calls.append(1) or len(calls) > polls)
        if c.cancelled:
            continue
        answered += 1
        expected = fresh.complete(text[:cut], text[cut:]).text
        assert c.text == expected or (c.typed_ahead and expected.startswith(c.text[:1])), (text[:cut], c, expected)
    assert answered > 50


def test_prompt_lookup_drafts_save_steps_without_changing_the_output(tiny_teacher):
    from pocketpilot.runtime.decoding import lookup_draft

    assert lookup_draft([5, 6, 7, 8, 9, 5, 6, 7], 3) == [8, 9, 5]  # after the earlier 5 6 7
    assert lookup_draft([1, 2, 3, 4], 3) == []
    assert lookup_draft([1, 2, 9, 1, 2], 2) == [9, 1]  # falls back to a 2-gram
    loaded = load_model_folder(tiny_teacher)
    spec, plain = CompletionEngine(loaded), CompletionEngine(loaded, EngineSettings(draft_tokens=0))
    text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n" * 2
    for cut in (len(text) - 30, len(text) - 12, len(text) - 4):
        a, b = spec.complete(text[:cut], "\n"), plain.complete(text[:cut], "\n")
        assert a.text == b.text and b.drafted == 0
    again = text[: len(text) // 2] + "\nclass Point:\n    def __init__(self, x, y):\n"
    block_a = spec.complete(again, "", language="python")
    block_b = plain.complete(again, "", language="python")
    assert block_a.text == block_b.text and block_a.text.count("\n") == 1 and block_a.accepted_drafts > 3
    assert block_a.new_tokens == block_b.new_tokens
