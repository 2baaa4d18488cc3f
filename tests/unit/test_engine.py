import shutil

from pocketpilot.compression import compress
from pocketpilot.compression.api import load_artifact
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
    assert c.text == " = y" and "\n" in c.raw and c.new_tokens >= 2 and c.prefill_ms > 0
    multi = CompletionEngine(engine.loaded, EngineSettings(multiline=True, max_new_tokens=30))
    assert multi.complete("def add(a, b):", "").text == "\n    return a + b"
    one = engine.complete("def add(a, b):\n    return", "\n", max_new_tokens=1)
    assert one.new_tokens == 1
    calls = []
    stopped = engine.complete("def add(a, b):\n    return", "\n", should_stop=lambda: calls.append(1) or True)
    assert stopped.cancelled and stopped.new_tokens == 1 and len(calls) == 1


def test_artifact_loads_without_the_teacher(pp_home, tiny_teacher, tmp_path):
    teacher = shutil.copytree(tiny_teacher, tmp_path / "teacher-copy")
    res = compress(str(teacher), "int8", eval_tasks=0)
    shutil.rmtree(teacher)
    engine = CompletionEngine(load_artifact(res.artifact_id))
    assert engine.complete("def add(a, b):\n    return", "\n").text == " a + b"
