"""Server logic that needs precise timing, tested in-process with a controllable engine."""

import asyncio
import logging
import threading
import time

import pytest
from lsprotocol import types
from pygls.workspace import Workspace

from pocketpilot.errors import PositionError
from pocketpilot.lsp_server.server import PocketPilotServer, on_initialize
from pocketpilot.lsp_server.settings import ServerSettings
from pocketpilot.runtime.engine import Completion

URI = "file:///w/a.py"


class ScriptedEngine:
    """Answers " a + b"; optionally edits the document while 'inferring', as a fast typist would."""

    def __init__(self, workspace, edit: bool):
        self.workspace, self.edit, self.calls = workspace, edit, []

    def complete(self, prefix, suffix, cache_key=None, **kwargs):
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


def test_settings_parse_bad_values_fall_back(caplog):
    with caplog.at_level(logging.WARNING, logger="pocketpilot.lsp_server.settings"):
        s, problems = ServerSettings.parse({"maxNewTokens": 8, "prefixTokens": -1, "bogus": 1, "artifact": "x"})
    assert s.max_new_tokens == 8 and s.prefix_tokens == ServerSettings().prefix_tokens and s.artifact == "x"
    assert problems == ["setting 'prefixTokens' must be an integer >= 1, got -1; using 512"]
    assert "unknown settings ignored: 'bogus'" in caplog.text  # unknown keys are logged, not shown
    assert ServerSettings.parse("nope")[0] == ServerSettings()


def test_settings_parse_is_strict_and_keeps_the_good_values():
    """No coercion: strings, floats and booleans are not integers; bounds come from the schema."""
    s, problems = ServerSettings.parse({"draftTokens": 16, "kvCacheMb": "5", "suffixTokens": 1.0, "maxNewTokens": True,
                                        "artifact": 3, "contextTokens": 0, "debounceMs": 5})
    assert (s.context_tokens, s.debounce_ms) == (0, 5)
    assert (s.draft_tokens, s.kv_cache_mb, s.suffix_tokens, s.max_new_tokens, s.artifact) == (8, 256, 128, 48, None)
    assert len(problems) == 5
    assert "setting 'draftTokens' must be an integer >= 0 and <= 15, got 16; using 8" in problems
    assert ServerSettings.parse({"artifact": ""})[0].artifact is None  # empty = the active artifact
    with pytest.raises(ValueError, match="draft_tokens must be an integer >= 0 and <= 15, got 16"):
        ServerSettings(draft_tokens=16)


def test_bad_settings_give_one_warning_naming_each_setting_and_its_default(ls, monkeypatch):
    shown = []
    monkeypatch.setattr(ls, "window_show_message", shown.append)
    on_initialize(ls, types.InitializeParams(capabilities=types.ClientCapabilities(),
                                             initialization_options={"maxNewTokens": 0, "multiline": "yes", "x": 1}))
    assert ls.settings == ServerSettings()
    assert len(shown) == 1 and shown[0].type == types.MessageType.Warning
    assert "'maxNewTokens' must be an integer >= 1, got 0; using 48" in shown[0].message
    assert "'multiline' must be true or false, got 'yes'; using True" in shown[0].message
    on_initialize(ls, types.InitializeParams(capabilities=types.ClientCapabilities(),
                                             initialization_options={"maxNewTokens": 16, "y": 2}))
    assert ls.settings.max_new_tokens == 16 and len(shown) == 1  # good values and unknown keys: no message


class SlowEngine:
    """Decodes "one token" every 10 ms for up to 5 s, polling ``should_stop`` like the real engine."""

    def __init__(self):
        self.started = threading.Event()
        self.stopped_after: list[float] = []
        self.kwargs: list[dict] = []

    def complete(self, prefix, suffix, cache_key=None, should_stop=None, **kwargs):
        self.kwargs.append(kwargs)
        if should_stop():
            return Completion(text="", raw="", prompt_tokens=0, new_tokens=0, prefill_ms=0, decode_ms=0, cancelled=True)
        self.started.set()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 5:
            if should_stop():
                self.stopped_after.append(time.perf_counter() - t0)
                return Completion(text="", raw="", prompt_tokens=5, new_tokens=1, prefill_ms=1, decode_ms=1,
                                  cancelled=True)
            time.sleep(0.01)
            if prefix.endswith("fast"):
                break
        return Completion(text=" done", raw=" done", prompt_tokens=5, new_tokens=3, prefill_ms=1, decode_ms=1)


def _edit(ls, text):
    doc = ls.workspace.get_text_document(URI)
    ls.workspace.put_text_document(types.TextDocumentItem(uri=URI, language_id="python", version=doc.version + 1,
                                                          text=text))


async def test_a_newer_request_for_the_document_preempts_the_running_one(ls):
    ls.engine = SlowEngine()
    first = asyncio.create_task(ls.complete_at(URI, types.Position(line=1, character=10)))
    await asyncio.get_running_loop().run_in_executor(None, ls.engine.started.wait, 5)
    _edit(ls, "def add(a, b):\n    return fast\n")
    second = await ls.complete_at(URI, types.Position(line=1, character=15))
    assert await first is None
    assert second == ("    return fast", " done")
    assert ls.engine.stopped_after and ls.engine.stopped_after[0] < 1.0


async def test_cancel_request_stops_generation_and_frees_the_worker(ls):
    ls.engine = SlowEngine()
    task = asyncio.create_task(ls.complete_at(URI, types.Position(line=1, character=10)))
    await asyncio.get_running_loop().run_in_executor(None, ls.engine.started.wait, 5)
    t0 = time.perf_counter()
    task.cancel()  # what pygls does on $/cancelRequest
    with pytest.raises(asyncio.CancelledError):
        await task
    _edit(ls, "def add(a, b):\n    return fast\n")
    assert await ls.complete_at(URI, types.Position(line=1, character=15)) == ("    return fast", " done")
    assert time.perf_counter() - t0 < 1.5 and ls.engine.stopped_after[0] < 1.0


async def test_server_side_debounce_drops_superseded_requests(ls):
    ls.engine = ScriptedEngine(ls.workspace, edit=False)
    ls.settings = ServerSettings(debounce_ms=100)
    first = asyncio.create_task(ls.complete_at(URI, types.Position(line=1, character=10)))
    await asyncio.sleep(0.02)
    second = await ls.complete_at(URI, types.Position(line=1, character=10))
    assert await first is None and second == ("    return", " a + b")
    assert len(ls.engine.calls) == 1  # the superseded request never reached the model


async def test_snippets_come_from_other_open_documents_and_stay_stable(ls):
    ls.engine = SlowEngine()
    other = "file:///w/config.py"
    ls.workspace.put_text_document(types.TextDocumentItem(uri=other, language_id="python", version=1,
                                                          text="def load_config(path):\n    return parse(path)\n"))
    _edit(ls, "cfg = load_config(path)\nfast\n")
    assert await ls.complete_at(URI, types.Position(line=1, character=4)) == ("fast", " done")
    snippets = ls.engine.kwargs[-1]["snippets"]
    assert snippets == ["# Compare this snippet from config.py:\n# def load_config(path):\n#     return parse(path)\n"]
    assert ls.engine.kwargs[-1]["language"] == "python"
    assert ls.neighbour_snippets(URI, 3, "python") is snippets  # same choice while the cursor stays near
    ls.settings = ServerSettings(context_tokens=0)
    assert ls.neighbour_snippets(URI, 1, "python") == []


def test_new_settings_parse_and_reach_the_engine():
    s, problems = ServerSettings.parse({"multiline": False, "kvCacheMb": 0, "debounceMs": 30, "contextTokens": "x",
                                        "blockMaxTokens": 0})
    assert not s.multiline and s.kv_cache_mb == 0 and s.debounce_ms == 30
    assert s.context_tokens == ServerSettings().context_tokens and s.block_max_tokens == ServerSettings().block_max_tokens
    assert len(problems) == 2
    e = s.engine_settings()
    assert type(e).__name__ == "EngineSettings" and e == type(e)(multiline=False, kv_cache_mb=0)
    assert not e.multiline and e.kv_cache_mb == 0
    assert ServerSettings.parse({"multiline": 1})[1] == ["setting 'multiline' must be true or false, got 1; using True"]


async def test_compress_command_without_teacher_or_method_chooses_for_this_machine(ls, monkeypatch):
    """The first run / the editor's "Compress Model for This Machine" sends no teacher or method."""
    import pocketpilot.compression.api as compression
    import pocketpilot.compression.recipe as recipe
    from pocketpilot.lsp_server import server as srv

    calls = []

    class Result:
        artifact_id = "chosen-int8"

        def summary(self):
            return {"artifact_id": self.artifact_id}

    def fake_for_machine(budget_ms, **kw):
        calls.append(("machine", budget_ms))
        return Result(), None

    def fake_compress(teacher, method, **kw):
        calls.append(("explicit", teacher, method))
        return Result()

    async def no_load():
        calls.append(("load", ls.settings.artifact))

    monkeypatch.setattr(recipe, "compress_for_this_machine", fake_for_machine)
    monkeypatch.setattr(compression, "compress", fake_compress)
    monkeypatch.setattr(ls, "load_model", no_load)
    monkeypatch.setattr(PocketPilotServer, "client_capabilities", None, raising=False)
    assert (await srv.compress_command(ls, {"budgetMs": 150}))["artifact_id"] == "chosen-int8"
    assert (await srv.compress_command(ls, {"teacher": "smollm2-135m"}))["ok"]
    assert calls == [("machine", 150.0), ("load", "chosen-int8"), ("explicit", "smollm2-135m", "int8"),
                     ("load", "chosen-int8")]


def test_changed_offset_finds_the_typing_cursor_in_a_whole_document_change():
    from pocketpilot.lsp_server.server import changed_offset

    old = "def add(a, b):\n    return a\n\nprint(add(1, 2))\n"
    assert changed_offset(old, old.replace("return a", "return a +")) == old.index("return a") + len("return a +")
    assert changed_offset(old, old.replace("return a", "return ")) == old.index("return ") + len("return ")  # deleted
    assert changed_offset("aaaa", "aaaaa") == 5  # repeated text: the end of the common prefix wins
    assert changed_offset(old, old) == len(old)
