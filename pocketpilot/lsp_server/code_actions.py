"""``textDocument/codeAction`` "PocketPilot: Write docstring": a docstring / doc comment for the
function under the cursor, written by the served model.

Editors ask for code actions whenever the cursor moves (VS Code's light bulb), so the model runs
only when the user picks the action: the action is offered without an edit and the edit is
computed in ``codeAction/resolve`` (VS Code's language client and Neovim 0.12's
``vim.lsp.buf.code_action`` resolve it). A client that cannot resolve gets the edit in the
``codeAction`` answer, and only when the user asked for actions (trigger kind Invoked).

No action outside a function, for an unsupported language, or without a model (an empty list,
not an error). The edit is a ``WorkspaceEdit`` for the document version the action was offered
on: when the document changed meanwhile, resolve returns the action without an edit and the
generation is stopped. ``$/cancelRequest`` stops the generation at the next token, as for
completions; the model runs on the server's inference thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

from lsprotocol import types

from pocketpilot.errors import DocumentNotOpenError
from pocketpilot.runtime.functions import LANGUAGES, FunctionAt, find_function

log = logging.getLogger("pocketpilot.server")

TITLE = "PocketPilot: Write docstring"
KIND = types.CodeActionKind.RefactorRewrite


def register(server: Any) -> None:
    """Add the code action and its resolve handler to ``server`` (a :class:`PocketPilotServer`)."""

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                    types.CodeActionOptions(code_action_kinds=[KIND], resolve_provider=True))
    async def code_action(ls, params: types.CodeActionParams):
        return await offer(ls, params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls, action: types.CodeAction):
        return await resolve(ls, action)


def _can_resolve_edit(ls) -> bool:
    """True when the client resolves a code action's ``edit`` lazily (``codeAction.resolveSupport``)."""
    caps = ls.client_capabilities
    ca = caps.text_document.code_action if caps and caps.text_document else None
    return bool(ca and ca.resolve_support and "edit" in (ca.resolve_support.properties or []))


def _function(ls, uri: str, line: int, character: int) -> tuple[Any, FunctionAt] | None:
    """The open document and the function at a client position (``None``: no document, model, language or function)."""
    try:
        doc = ls.document(uri)  # as it was when the request arrived: the position refers to that text
    except DocumentNotOpenError:
        return None
    if ls.engine is None or doc.language_id not in LANGUAGES:
        return None
    lines = doc.lines
    if not 0 <= line < len(lines):
        return None
    pos = doc.position_from_client_units(types.Position(line=line, character=character))
    fn = find_function(doc.source, pos.line, pos.character, doc.language_id)
    return (doc, fn) if fn is not None else None


async def offer(ls, params: types.CodeActionParams) -> list[types.CodeAction]:
    """The ``textDocument/codeAction`` answer: ``[]`` or the one "Write docstring" action."""
    only = params.context.only if params.context else None  # kinds the client asks for (e.g. "refactor")
    wanted = [str(getattr(k, "value", k)) for k in only or []]
    if wanted and not any(KIND.value == k or KIND.value.startswith(f"{k}.") for k in wanted):
        return []
    uri, start = params.text_document.uri, params.range.start
    found = _function(ls, uri, start.line, start.character)
    if found is None:
        return []
    doc, fn = found
    action = types.CodeAction(title=TITLE, kind=KIND, data={"uri": uri, "version": doc.version,
                                                            "line": start.line, "character": start.character})
    if _can_resolve_edit(ls):
        return [action]
    if params.context and params.context.trigger_kind == types.CodeActionTriggerKind.Automatic:
        return []  # not without being asked: the model would run on every cursor move
    action.edit = await docstring_edit(ls, doc, fn)
    return [action] if action.edit is not None else []


def _data(action: types.CodeAction) -> dict | None:
    """The action's ``data`` as ``{"uri", "version", "line", "character"}``, or ``None`` when it is not ours."""
    data = action.data
    get = data.get if isinstance(data, dict) else functools.partial(getattr, data)
    try:
        out = {"uri": str(get("uri")), "version": get("version"), "line": int(get("line")),
               "character": int(get("character"))}
    except (AttributeError, TypeError, ValueError):
        return None
    return out


async def resolve(ls, action: types.CodeAction) -> types.CodeAction:
    """``codeAction/resolve``: the action with its edit, or without one when the document changed."""
    data = _data(action)
    if data is None or action.title != TITLE:
        return action
    found = _function(ls, data["uri"], data["line"], data["character"])
    if found is None:
        return action
    doc, fn = found
    if doc.version != data["version"]:
        log.info("docstring: %s changed since the action was offered (version %s, now %s); no edit",
                 data["uri"], data["version"], doc.version)
        return action
    action.edit = await docstring_edit(ls, doc, fn)
    return action


async def docstring_edit(ls, doc, fn: FunctionAt) -> types.WorkspaceEdit | None:
    """Write ``fn``'s docstring on the inference thread; the edit for ``doc``'s version now, or ``None``
    (nothing written, cancelled, or the document changed meanwhile).

    Raises:
        asyncio.CancelledError: ``$/cancelRequest``; the generation stops at its next token.
    """
    from pocketpilot.runtime.summarize import format_docstring, write_docstring  # lazy: torch

    uri, version, engine = doc.uri, doc.version, ls.engine
    cancelled = threading.Event()

    def changed() -> bool:
        now = ls.open_or_none(uri)
        return now is None or now.version != version

    def should_stop() -> bool:  # polled by the inference thread between tokens
        return cancelled.is_set() or changed()

    try:
        result = await ls.run_user(functools.partial(write_docstring, engine, fn, should_stop=should_stop))
    except asyncio.CancelledError:
        cancelled.set()
        raise
    if result.cancelled or changed():
        log.info("docstring for %s: %s; no edit", fn.name or uri,
                 "the document changed meanwhile" if changed() else "cancelled")
        return None
    log.info("docstring for %s in %.0f ms (%s prompt, %d tokens, %d new%s)", fn.name or uri, result.ms, result.prompt,
             result.prompt_tokens, result.new_tokens, f", function cut by {result.cut_tokens} tokens"
             if result.cut_tokens else "")
    if not result.text:
        return None
    text = fn.lead + format_docstring(result.text, fn.language, fn.indent) + fn.trail
    l0, c0, l1, c1 = fn.replace
    rng = doc.range_to_client_units(types.Range(start=types.Position(line=l0, character=c0),
                                                end=types.Position(line=l1, character=c1)))
    edit = types.TextEdit(range=rng, new_text=text)
    caps = ls.client_capabilities
    ws = caps.workspace.workspace_edit if caps and caps.workspace else None
    if ws is not None and ws.document_changes:
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version), edits=[edit])])
    return types.WorkspaceEdit(changes={uri: [edit]})
