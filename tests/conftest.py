import os
import sys
from pathlib import Path

import pytest

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
