"""The "PocketPilot: Write docstring" code action against the real server (tiny int8 artifact)."""

import ast
import asyncio

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.e2e.test_lsp import INLINE_CAPS, URI, _env, _open, _start, client  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

SOURCE = "import os\n\n\ndef add(a, b):\n    return a + b\n"
#: what VS Code's language client and Neovim declare: the edit is resolved when the action is chosen
RESOLVE_CAPS = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=INLINE_CAPS.text_document.inline_completion,
        code_action=types.CodeActionClientCapabilities(
            resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"]))),
    workspace=types.WorkspaceClientCapabilities(workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)),
    window=INLINE_CAPS.window,
)


async def _start_resolving(client: LanguageClient) -> None:
    statuses: list = []
    client.feature("pocketpilot/status")(lambda params: statuses.append(params))
    client.statuses = statuses
    result = await client.initialize_session(types.InitializeParams(capabilities=RESOLVE_CAPS))
    assert result.capabilities.code_action_provider.resolve_provider is True
    for _ in range(600):
        if statuses and statuses[-1].state == "ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"server never became ready: {statuses}")


def _params(line: int, character: int, trigger=types.CodeActionTriggerKind.Invoked) -> types.CodeActionParams:
    pos = types.Position(line=line, character=character)
    return types.CodeActionParams(text_document=types.TextDocumentIdentifier(uri=URI), range=types.Range(start=pos, end=pos),
                                  context=types.CodeActionContext(diagnostics=[], trigger_kind=trigger))


def _apply(text: str, edit: types.TextEdit) -> str:
    lines = text.split("\n")
    start = sum(len(s) + 1 for s in lines[:edit.range.start.line]) + edit.range.start.character
    end = sum(len(s) + 1 for s in lines[:edit.range.end.line]) + edit.range.end.character
    return text[:start] + edit.new_text + text[end:]


async def test_write_docstring_is_offered_resolved_and_versioned(client: LanguageClient):
    await _start_resolving(client)
    _open(client, SOURCE, version=7)
    assert list(await client.text_document_code_action_async(_params(0, 3))) == []  # `import os`: no function
    actions = await client.text_document_code_action_async(_params(4, 6, types.CodeActionTriggerKind.Automatic))
    assert [a.title for a in actions] == ["PocketPilot: Write docstring"] and actions[0].edit is None
    resolved = await client.code_action_resolve_async(actions[0])
    [change] = resolved.edit.document_changes
    assert change.text_document.uri == URI and change.text_document.version == 7
    [edit] = change.edits
    assert edit.range.start == edit.range.end == types.Position(line=4, character=0)
    after = _apply(SOURCE, edit)
    doc = ast.get_docstring(ast.parse(after).body[1])
    assert doc and edit.new_text == f'    """{doc}"""\n', edit.new_text  # a real docstring, indented, after the signature
    assert after.endswith(f'def add(a, b):\n    """{doc}"""\n    return a + b\n')

    # the document changes after the action was offered: resolving it gives no edit
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=8),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=SOURCE + "\n")]))
    stale = await client.code_action_resolve_async(actions[0])
    assert stale.edit is None


async def test_without_resolve_support_the_edit_comes_with_the_action(client: LanguageClient):
    await _start(client)  # INLINE_CAPS: no codeAction capabilities at all
    _open(client, SOURCE)
    assert list(await client.text_document_code_action_async(_params(4, 6, types.CodeActionTriggerKind.Automatic))) == []
    [action] = await client.text_document_code_action_async(_params(4, 6))
    [edit] = action.edit.changes[URI]
    assert ast.get_docstring(ast.parse(_apply(SOURCE, edit)).body[1])
