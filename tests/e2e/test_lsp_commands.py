"""Server with no model yet: it says what to run, keeps answering, and compresses on command."""

import asyncio
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from test_lsp import INLINE_CAPS, SOURCE, URI, _open

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tmp_path / "empty-home"))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "pocketpilot", "serve"]))
async def client(lsp_client: LanguageClient):
    statuses: list = []
    lsp_client.feature("pocketpilot/status")(lambda params: statuses.append(params))
    lsp_client.statuses = statuses
    await lsp_client.initialize_session(types.InitializeParams(capabilities=INLINE_CAPS))
    yield lsp_client
    await lsp_client.shutdown_session()


async def _wait_state(client, state, timeout=60.0):
    for _ in range(int(timeout / 0.05)):
        if client.statuses and client.statuses[-1].state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {state!r} status: {client.statuses}")


async def _inline(client):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=1, character=10),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


async def test_no_model_then_compress_command_with_progress(client: LanguageClient, tiny_teacher):
    await _wait_state(client, "no-model")
    assert any("pocketpilot compress" in m.message for m in client.messages), client.messages
    _open(client, SOURCE)
    assert len((await _inline(client)).items) == 0  # keeps answering, empty

    result = await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="pocketpilot.compress", arguments=[{"teacher": str(tiny_teacher), "evalTasks": 0}]))
    assert result["ok"] and result["method"] == "int8" and result["artifact_bytes"] > 0
    reports = [r for rs in client.progress_reports.values() for r in rs]
    kinds = [r.kind for r in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
    assert any("applying int8" in (r.message or "") for r in reports if r.kind == "report")
    await _wait_state(client, "ready")
    assert (await _inline(client)).items[0].insert_text == " a + b"


async def test_compress_command_with_a_bad_teacher_reports_and_survives(client: LanguageClient):
    await _wait_state(client, "no-model")
    result = await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="pocketpilot.compress", arguments=[{"teacher": "nonsense-model"}]))
    assert result["ok"] is False and "unknown teacher" in result["error"]
    assert any("unknown teacher" in m.message and m.type == types.MessageType.Error for m in client.messages)
    _open(client, SOURCE)
    assert len((await _inline(client)).items) == 0
