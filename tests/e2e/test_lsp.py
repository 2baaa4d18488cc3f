"""The real server over stdio, driven by pytest-lsp as an LSP client."""

import asyncio
import random
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.e2e

INLINE_CAPS = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities(dynamic_registration=False),
        completion=types.CompletionClientCapabilities(),
    ),
    window=types.WindowClientCapabilities(work_done_progress=True),
)
URI = "file:///tmp/example.py"
SOURCE = "def add(a, b):\n    return\n"


async def _start(client: LanguageClient, options=None) -> dict:
    statuses: list = []
    client.feature("pocketpilot/status")(lambda params: statuses.append(params))
    client.statuses = statuses
    await client.initialize_session(types.InitializeParams(capabilities=INLINE_CAPS, initialization_options=options))
    for _ in range(600):
        if statuses and statuses[-1].state in ("ready", "no-model"):
            return statuses[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"server never became ready: {statuses}")


def _open(client: LanguageClient, text: str = SOURCE, version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=URI, language_id="python", version=version, text=text)))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "pocketpilot", "serve"]))
async def client(lsp_client: LanguageClient, tiny_home):
    yield lsp_client
    await lsp_client.shutdown_session()


# pytest-lsp starts the server when the fixture is created; the environment must be set before.
@pytest.fixture(autouse=True)
def _env(tiny_home, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))


async def test_inline_completion_returns_the_model_text(client: LanguageClient):
    status = await _start(client)
    assert status.state == "ready", status
    _open(client)
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=1, character=10),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
    items = result.items if hasattr(result, "items") else result
    assert len(items) == 1
    assert items[0].insert_text == " a + b"
    assert items[0].range.start == types.Position(line=1, character=10)
    for _ in range(100):  # the status notification after the answer carries its latency
        if client.statuses[-1].lastLatencyMs is not None:
            break
        await asyncio.sleep(0.02)
    assert client.statuses[-1].state == "ready" and client.statuses[-1].lastLatencyMs > 0
    # the model load was reported as $/progress
    loads = [r for rs in client.progress_reports.values() for r in rs if getattr(r, "title", None)]
    assert any("loading" in r.title for r in loads), client.progress_reports


async def test_plain_completion_has_the_same_text(client: LanguageClient):
    await _start(client)
    _open(client, "def add(a, b):\n    retur\n")
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=1, character=9)))
    assert len(result.items) == 1
    item = result.items[0]
    # the typed word is kept so that clients filtering by it show the item
    assert item.text_edit.new_text.startswith("retur")
    assert item.text_edit.range.start.character == 4


async def test_position_outside_document_is_an_error_and_server_survives(client: LanguageClient):
    await _start(client)
    _open(client)
    with pytest.raises(Exception, match="outside"):
        await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=40, character=0),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
    result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=1, character=10),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
    assert result.items[0].insert_text == " a + b"


def _inline_params(line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))


async def test_burst_of_200_requests_with_random_cancellations(client: LanguageClient):
    """Typing fast: 200 edits, each followed by a request, a third of them cancelled; then the real one."""
    await _start(client)
    _open(client, "def add(a, b):\n    r\n")
    rng = random.Random(0)
    word = "return"
    futures, cancelled = [], set()
    for i in range(200):
        n = rng.randint(1, len(word))
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=i + 2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=f"def add(a, b):\n    {word[:n]}\n")]))
        msg_id = f"burst-{i}"
        futures.append(asyncio.wrap_future(client.protocol.send_request(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, _inline_params(1, 4 + n), msg_id=msg_id)))
        if rng.random() < 0.33:
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
            cancelled.add(i)
        if i % 20 == 0:
            await asyncio.sleep(0)  # let responses flow
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 120)
    for i, r in enumerate(results):  # every request got an answer: a list, or an error only if cancelled
        assert not isinstance(r, Exception) or (i in cancelled and "cancel" in str(r).lower()), (i, r)
    assert 0 < sum(isinstance(r, Exception) for r in results) <= len(cancelled)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=500),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=SOURCE)]))
    last = await asyncio.wait_for(client.text_document_inline_completion_async(_inline_params(1, 10)), 30)
    assert [item.insert_text for item in last.items] == [" a + b"]
