"""Server logic that needs precise timing, tested in-process with a controllable engine."""

import pytest
from lsprotocol import types
from pygls.workspace import Workspace

from pocketpilot.errors import PositionError
from pocketpilot.lsp_server.server import PocketPilotServer
from pocketpilot.lsp_server.settings import ServerSettings
from pocketpilot.runtime.engine import Completion

URI = "file:///w/a.py"


class ScriptedEngine:
    """Answers " a + b"; optionally edits the document while 'inferring', as a fast typist would."""

    def __init__(self, workspace, edit: bool):
        self.workspace, self.edit, self.calls = workspace, edit, []

    def complete(self, prefix, suffix, cache_key=None):
        self.calls.append((prefix, suffix))
        if self.edit:
            self.workspace.get_text_document(URI).version += 1
        return Completion(text=" a + b", raw=" a + b\n", prompt_tokens=5, new_tokens=4, prefill_ms=1, decode_ms=1)


@pytest.fixture
def ls():
    server = PocketPilotServer()
    server.protocol._workspace = Workspace(None)
    server.workspace.put_text_document(types.TextDocumentItem(uri=URI, language_id="python", version=1,
                                                              text="def add(a, b):\n    return\n"))
    return server


async def test_answer_when_document_unchanged(ls):
    ls.engine = ScriptedEngine(ls.workspace, edit=False)
    assert await ls.complete_at(URI, types.Position(line=1, character=10)) == ("    return", " a + b")
    assert ls.engine.calls == [("def add(a, b):\n    return", "\n")]


async def test_document_changed_during_inference_answers_empty(ls):
    ls.engine = ScriptedEngine(ls.workspace, edit=True)
    assert await ls.complete_at(URI, types.Position(line=1, character=10)) is None


async def test_positions_outside_the_document(ls):
    ls.engine = ScriptedEngine(ls.workspace, edit=False)
    with pytest.raises(PositionError):
        await ls.complete_at(URI, types.Position(line=5, character=0))
    with pytest.raises(PositionError):
        await ls.complete_at(URI, types.Position(line=1, character=11))
    assert ls.engine.calls == []


def test_settings_parse_bad_values_fall_back():
    s, problems = ServerSettings.parse({"maxNewTokens": 8, "prefixTokens": -1, "bogus": 1, "artifact": "x"})
    assert s.max_new_tokens == 8 and s.prefix_tokens == ServerSettings().prefix_tokens and s.artifact == "x"
    assert len(problems) == 2
    assert ServerSettings.parse("nope")[0] == ServerSettings()
