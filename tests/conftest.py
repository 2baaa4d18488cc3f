import os
import sys
import tempfile
from pathlib import Path

import pytest

# every test writes caches (artifacts, measured kernel choices) under a throw-away home unless it sets its own
os.environ.setdefault("POCKETPILOT_HOME", tempfile.mkdtemp(prefix="pocketpilot-test-home-"))

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny_teacher  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A tiny trained prefix-only teacher folder (no FIM tokens)."""
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture(scope="session")
def tiny_fim_teacher(tmp_path_factory) -> Path:
    """A tiny trained teacher whose tokenizer has Qwen-style FIM tokens."""
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-fim-teacher"), fim=True)


@pytest.fixture
def pp_home(tmp_path, monkeypatch) -> Path:
    """An empty POCKETPILOT_HOME for one test."""
    home = tmp_path / "pphome"
    monkeypatch.setenv("POCKETPILOT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory, tiny_teacher) -> Path:
    """A POCKETPILOT_HOME holding an active int8 artifact of the tiny teacher."""
    from pocketpilot.compression import compress

    home = tmp_path_factory.mktemp("tiny-home")
    old = os.environ.get("POCKETPILOT_HOME")
    os.environ["POCKETPILOT_HOME"] = str(home)
    try:
        compress(str(tiny_teacher), "int8", eval_tasks=0)
    finally:
        if old is None:
            os.environ.pop("POCKETPILOT_HOME", None)
        else:
            os.environ["POCKETPILOT_HOME"] = old
    return home


@pytest.fixture
def shared_data() -> Path:
    """The shared evaluation data (../shared/data or $POCKETPILOT_DATA); skips where this checkout has none."""
    from pocketpilot.errors import PocketPilotError
    from pocketpilot.evaluation.data import data_dir

    try:
        return data_dir()
    except PocketPilotError:
        pytest.skip("shared evaluation data not present (../shared/data or POCKETPILOT_DATA)")


@pytest.fixture
def synthetic_data(tmp_path, monkeypatch) -> Path:
    """A hand-written miniature of the data layout (2 HumanEval-style problems, ReCode sets, py150 rows), as POCKETPILOT_DATA."""
    import json

    root = tmp_path / "data"
    probs = [
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add",
         "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n"},
        {"task_id": "HumanEval/1", "prompt": "def neg(x):\n    \"\"\"Return -x.\"\"\"\n", "entry_point": "neg",
         "canonical_solution": "    return -x\n", "test": "def check(f):\n    assert f(2) == -2\n"},
    ]
    renamed = [dict(p, prompt=p["prompt"].replace(p["entry_point"], p["entry_point"] + "_v2"),
                    entry_point=p["entry_point"] + "_v2") for p in probs]
    tabbed = [dict(p, prompt=p["prompt"].replace("    ", "\t")) for p in probs]
    files = {"recode/HumanEval.jsonl": probs, "recode/humaneval_partial.jsonl": probs,
             "recode/perturbed/func_name__humaneval_FuncRenameCamelCase_s0.jsonl": renamed,
             "recode/perturbed/format__humaneval_tab_indent_s0.jsonl": tabbed,
             "codexglue_line/py150_dev.jsonl": [
                 {"input": "<s> def add ( a , b ) : <EOL> return", "gt": "a + b"},
                 {"input": "<s> import os <EOL> path = os . path . join ( root ,", "gt": "name )"}]}
    for rel, rows in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "codexglue_line" / "py150_literals.json").write_text(json.dumps({"str": [], "num": [], "char": []}))
    monkeypatch.setenv("POCKETPILOT_DATA", str(root))
    return root
