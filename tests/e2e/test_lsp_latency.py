"""The server hides latency: warm-up on focus, the speculative next suggestion, the thread setting."""

import asyncio

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.e2e.test_lsp import URI, _env, _inline_params, _open, _start, client  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e
LONG = "import os\n\n" + "def add(a, b):\n    return a + b\n\n" * 8 + "def add(a, b):\n    return\n"
LINE = LONG.count("\n") - 1  # the last line, "    return"


async def _status_after(client: LanguageClient, params: types.InlineCompletionParams):
    seen = len(client.statuses)
    result = await client.text_document_inline_completion_async(params)
    for _ in range(250):
        if len(client.statuses) > seen:
            break
        await asyncio.sleep(0.02)
    return result, client.statuses[-1]


async def test_focus_warms_the_document_up_so_the_first_request_prefills_one_token(client: LanguageClient):
    await _start(client)
    _open(client, LONG)
    client.protocol.notify("pocketpilot/didFocus", {"textDocument": {"uri": URI},
                                                    "position": {"line": LINE, "character": 10}})
    await asyncio.sleep(3)  # idle: the warm-up runs (milliseconds for the tiny model; room for a busy CI machine)
    result, status = await _status_after(client, _inline_params(LINE, 10))
    assert result.items[0].insert_text == " a + b"
    assert status.prefilledTokens == 1 and status.reusedTokens > 40, status  # only the last prompt token ran


async def test_accepting_a_suggestion_is_answered_from_the_speculative_one(client: LanguageClient):
    await _start(client)
    _open(client)
    result, status = await _status_after(client, _inline_params(1, 10))
    assert result.items[0].insert_text == " a + b" and not status.remembered
    await asyncio.sleep(1.5)  # idle: after 0.25 s the suggestion after accepting is computed
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text="def add(a, b):\n    return a + b\n")]))
    _, accepted = await _status_after(client, _inline_params(1, 16))
    assert accepted.remembered and accepted.prefilledTokens == 0, accepted
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=3),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text="def add(a, b):\n    return a - b\n")]))
    _, other = await _status_after(client, _inline_params(1, 16))
    assert not other.remembered  # another edit: the speculative suggestion is not served


async def test_the_thread_setting_is_honoured(client: LanguageClient):
    await _start(client, {"threads": 1, "speculate": False, "warmUp": False})
    _open(client)
    _, status = await _status_after(client, _inline_params(1, 10))
    assert status.threads == 1
