"""pygls server: inline completion (LSP 3.18), plain completion, and the compress command.

stdout is the JSON-RPC channel: nothing here prints; logs go to stderr.

Every message passes the edge checks of :mod:`pocketpilot.lsp_server.protocol` first (params
of the method's LSP type, an open document, positions inside it, one-line error replies), and
frames are read by :mod:`pocketpilot.lsp_server.transport`. A new feature is registered with
``@server.feature(METHOD, options)`` as usual and gets those checks; inside it, take the
document with ``ls.document(uri)`` (never ``ls.workspace.get_text_document``) and convert
positions with its ``offset_at_position`` / ``position_at``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from pocketpilot import __version__
from pocketpilot.errors import DocumentNotOpenError, PocketPilotError, PositionError
from pocketpilot.lsp_server import transport
from pocketpilot.lsp_server.documents import SafeTextDocument, clean_text, open_document, units
from pocketpilot.lsp_server.protocol import (INVALID_PARAMS, REQUEST_FAILED, EdgeError, EdgeProtocol, RateLimitFilter,
                                             one_line, received_document)
from pocketpilot.lsp_server.code_actions import register as register_code_actions
from pocketpilot.lsp_server.settings import ServerSettings
from pocketpilot.runtime.context import best_snippets

log = logging.getLogger("pocketpilot.server")

COMPRESS_COMMAND = "pocketpilot.compress"
STATUS_NOTIFICATION = "pocketpilot/status"
#: client -> server: ``{textDocument: {uri}, position}`` when an editor gains focus (or opens), so
#: the server can warm that document up at the cursor before the first request
FOCUS_NOTIFICATION = "pocketpilot/didFocus"
#: quiet time after a change before the document is warmed up at the changed position (s)
WARM_PAUSE_S = 0.3
#: quiet time after a suggestion is shown before the one after accepting it is computed (s): while
#: the user types on, the inference thread stays free for their requests
SPECULATE_DELAY_S = 0.25


class PocketPilotServer(LanguageServer):
    """Language server holding one completion engine, loaded off the event loop."""

    def __init__(self) -> None:
        super().__init__("pocketpilot", __version__, protocol_cls=EdgeProtocol)
        self.settings = ServerSettings()
        self.engine = None
        self.state = "starting"  # starting | loading | ready | no-model | error | compressing
        self.model_name: str | None = None
        self.infer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketpilot-infer")
        self.jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketpilot-jobs")
        # snippet selection scans other documents: never on the event loop, never on the inference thread
        self.context = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketpilot-context")
        self._tasks: set[asyncio.Task] = set()  # background tasks kept alive until done
        self.compressing = False  # a pocketpilot.compress command is running
        self.cli_artifact: str | None = None
        self.last_latency_ms: float | None = None
        self.last_cache_hit: bool | None = None
        self.last_reused_tokens: int | None = None
        self.last_typed_ahead: bool | None = None
        self.last: dict = {}  # figures of the last completion for the status notification
        self.max_threads: int | None = None  # torch's threads at the first model load: adaptation's ceiling
        self._waiting = 0  # user requests submitted to the inference thread and not yet started
        self._waiting_lock = threading.Lock()
        self._idle: dict[str, int] = {}  # document URI -> ticket of its newest background job
        self._pause: dict[str, asyncio.TimerHandle] = {}  # document URI -> pending warm-up after typing
        self._speculating: dict[str, asyncio.TimerHandle] = {}  # document URI -> pending speculation
        self.sources: dict[str, str] = {}  # document URI -> its text at the last change (to find where it changed)
        self._tickets = itertools.count(1)
        self.latest: dict[str, int] = {}  # document URI -> number of its newest completion request
        self._snippets: dict[str, tuple[tuple, int, list[str]]] = {}  # URI -> (open docs, line, snippets)

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Log a protocol or handler error (stderr, rate-limited); never a pop-up (pygls's default)."""
        log.warning("%s", one_line(error))

    def document(self, uri: str) -> SafeTextDocument:
        """The open document at ``uri`` (text as the client sent it, LSP lines, client positions);
        inside a request's handler, as it was when the request arrived (its positions refer to
        that text; compare ``version`` with :meth:`open_or_none`'s to see whether it changed since).

        Raises:
            DocumentNotOpenError: the client never opened it; nothing is read from disk.
        """
        received = received_document(uri)
        return received if received is not None else open_document(self.workspace, uri)

    def open_or_none(self, uri: str) -> SafeTextDocument | None:
        """The open document at ``uri`` as it is now, or ``None`` when it is not open."""
        try:
            return open_document(self.workspace, uri)
        except DocumentNotOpenError:
            return None

    def set_state(self, state: str, message: str | None = None) -> None:
        """Record the state and send a ``pocketpilot/status`` notification.

        Params: ``{state, model, message, lastLatencyMs, cacheHit, reusedTokens, typedAhead,
        prefilledTokens, remembered, cut, threads}``: the latency of the last completion (ms),
        whether it reused the document's KV cache or the previous suggestion, how many prompt
        tokens it reused and how many it ran through the model (tokens), whether it was the rest
        of the previous suggestion, whether it came from the suggestion cache (a speculative or
        earlier suggestion), whether the time budget (``maxLatencyMs``) cut it, and the CPU
        threads it ran with; null before the first completion.
        """
        self.state = state
        self.protocol.notify(STATUS_NOTIFICATION, {
            "state": state, "model": self.model_name, "message": message, "lastLatencyMs": self.last_latency_ms,
            "cacheHit": self.last_cache_hit, "reusedTokens": self.last_reused_tokens,
            "typedAhead": self.last_typed_ahead, "prefilledTokens": self.last.get("prefilled"),
            "remembered": self.last.get("remembered"), "cut": self.last.get("cut"),
            "threads": self.last.get("threads")})

    def run_user(self, fn):
        """Submit a user request to the inference thread; background jobs see it waiting and yield."""
        with self._waiting_lock:
            self._waiting += 1

        def job():
            with self._waiting_lock:
                self._waiting -= 1
            return fn()

        return asyncio.get_running_loop().run_in_executor(self.infer, job)

    @property
    def user_waiting(self) -> bool:
        """True while a user request is queued for the inference thread."""
        return self._waiting > 0

    def run_idle(self, uri: str, job, stop_on_change: bool = True) -> None:
        """Run ``job(should_stop)`` on the inference thread when it is free, at idle priority.

        Only the newest background job of a document runs (older ones are skipped); ``should_stop``
        turns True as soon as a user request is waiting, a newer background job for the document
        is scheduled or (``stop_on_change``) the document changes, and the job then yields (within
        one warm-up chunk or decode step). Failures are logged, never raised.
        """
        if self.engine is None:
            return
        ticket = next(self._tickets)
        self._idle[uri] = ticket
        docs, key = self.workspace.text_documents, unquote(uri)
        doc = docs.get(key)
        version = doc.version if doc is not None else None

        def should_stop() -> bool:
            now = docs.get(key)
            return (self.user_waiting or self._idle.get(uri) != ticket or now is None
                    or (stop_on_change and now.version != version))

        def run() -> None:
            if should_stop():
                return
            try:
                job(should_stop)
            except Exception:  # a background job must never take the server down
                log.exception("background job for %s failed", uri)

        self.infer.submit(run)

    def warm_up(self, uri: str, position: types.Position | None = None, offset: int | None = None) -> None:
        """Schedule a background warm-up of ``uri`` at ``position`` or character ``offset`` (default:
        the document's end), computing the keys/values its next request will reuse (see
        :meth:`CompletionEngine.warm`)."""
        if self.engine is None or not self.settings.warm_up or not self.settings.kv_cache_mb:
            return
        doc = self.open_or_none(uri)
        if doc is None:
            return
        source = doc.source
        if position is not None:
            try:
                offset = doc.offset_at_position(position)
            except PositionError:
                return  # a stale position from the client; the next request computes anyway
        offset = len(source) if offset is None else max(0, min(offset, len(source)))
        inputs = self._snippet_inputs(uri, doc, doc.position_at(offset).line)
        prefix, suffix, engine, loop = source[:offset], source[offset:], self.engine, asyncio.get_running_loop()

        async def schedule() -> None:
            snippets = await loop.run_in_executor(self.context, self._choose_snippets, *inputs) if inputs else []

            def job(should_stop) -> None:
                done = engine.warm(prefix, suffix, cache_key=uri, should_stop=should_stop, snippets=snippets)
                log.debug("warm-up of %s: %d tokens prefilled", uri, done)

            self.run_idle(uri, job)

        self._background(schedule())

    def _background(self, coro) -> None:
        """Run ``coro`` as a task on the loop, kept referenced until it ends; failures are logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("background task failed: %s", one_line(t.exception()))

        task.add_done_callback(done)

    def warm_after_pause(self, uri: str, position: types.Position | None = None, offset: int | None = None) -> None:
        """Warm ``uri`` up at ``position`` (or ``offset``) once no change came for :data:`WARM_PAUSE_S`."""
        self._cancel_timer(self._pause, uri)
        if self.engine is None or not self.settings.warm_up:
            return
        loop = asyncio.get_running_loop()
        self._pause[uri] = loop.call_later(WARM_PAUSE_S, lambda: (self._pause.pop(uri, None),
                                                                  self.warm_up(uri, position, offset)))

    def speculate(self, uri: str, prefix: str, suffix: str, text: str, snippets: list[str],
                  language: str | None) -> None:
        """Schedule, at idle priority, the suggestion that follows accepting ``text``; it lands in the
        engine's suggestion cache (see :meth:`CompletionEngine.complete`, ``remember_answer=False``).

        It starts after :data:`SPECULATE_DELAY_S` without a change to the document (the user
        looking at the suggestion), so it does not compete with requests while they type on.
        """
        if self.engine is None or not self.settings.speculate or not self.settings.kv_cache_mb:
            return
        engine = self.engine
        self._cancel_timer(self._speculating, uri)

        def job(should_stop) -> None:
            got = engine.complete(prefix + text, suffix, cache_key=uri, should_stop=should_stop, language=language,
                                  snippets=snippets, remember_answer=False, background=True)
            log.debug("speculative suggestion for %s: %r%s", uri, got.text[:40], " (stopped)" if got.cancelled else "")

        self._speculating[uri] = asyncio.get_running_loop().call_later(
            SPECULATE_DELAY_S, lambda: (self._speculating.pop(uri, None),
                                        self.run_idle(uri, job, stop_on_change=False)))  # accepting changes the doc

    @staticmethod
    def _cancel_timer(timers: dict, uri: str) -> None:
        """Cancel and forget the pending timer of ``uri`` in ``timers``, if any."""
        pending = timers.pop(uri, None)
        if pending is not None:
            pending.cancel()

    async def begin_progress(self, title: str) -> str | None:
        """Start a ``$/progress`` report if the client supports it; returns its token or ``None``."""
        caps = self.client_capabilities
        if caps is None or caps.window is None or not caps.window.work_done_progress:
            return None
        token = f"pocketpilot-{uuid.uuid4().hex[:8]}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception as exc:  # the client refused the token; go on without progress
            log.debug("no progress token: %s", exc)
            return None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=False))
        return token

    def end_progress(self, token: str | None, message: str) -> None:
        """End a ``$/progress`` report started by :meth:`begin_progress` (no-op for ``None``)."""
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    async def load_model(self) -> None:
        """Load the configured artifact in a worker thread, with ``$/progress``; report problems with the fix."""
        # lazy: torch and transformers, so the server answers `initialize` at once and reports "loading"
        from pocketpilot.runtime.engine import CompletionEngine
        from pocketpilot.runtime.loader import load_artifact

        self.set_state("loading")
        name = self.settings.artifact or self.cli_artifact
        token = await self.begin_progress(f"PocketPilot: loading {name or 'the active model'}")
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(self.infer, load_artifact, name)
        except PocketPilotError as exc:
            self.engine = None
            self.end_progress(token, f"failed: {exc}")
            log.warning("%s", exc)
            # the hint before the state: a client that sees "no-model" has the message already
            self.window_show_message(types.ShowMessageParams(types.MessageType.Warning, f"PocketPilot: {exc}"))
            self.set_state("no-model", str(exc))
            return
        import torch  # loaded with the model by now

        self.max_threads = self.max_threads or torch.get_num_threads()  # before any adaptation lowers it
        self.engine = CompletionEngine(loaded, self.settings.engine_settings(), max_threads=self.max_threads)
        self.model_name = loaded.folder.name
        self.end_progress(token, f"{self.model_name} ready")
        self.set_state("ready")
        log.info("model %s ready (FIM: %s)", self.model_name, self.engine.uses_fim)

    def neighbour_snippets(self, uri: str, line: int, language: str | None) -> list[str]:
        """Snippets from the other open documents most similar to the code above ``line``.

        Rendered as comments, best first (see :mod:`pocketpilot.runtime.context`). The choice
        is kept while the cursor stays within 10 lines and no other document changes, so the
        prompt (and its KV cache) stays stable while the user types. Documents longer than
        ``maxContextDocumentChars`` are left out. Scans the documents in the calling thread:
        the server calls it through :meth:`_snippet_inputs` and :meth:`_choose_snippets` on its
        context thread, never on the event loop.
        """
        doc = self.open_or_none(uri)
        inputs = self._snippet_inputs(uri, doc, line, language) if doc is not None else None
        return self._choose_snippets(*inputs) if inputs else []

    def _snippet_inputs(self, uri: str, doc: SafeTextDocument, line: int,
                        language: str | None = None) -> tuple | None:
        """What :meth:`_choose_snippets` needs, taken on the event loop (cheap: no scanning):
        ``(uri, line, language, query, others, texts)``, or ``None`` without context."""
        if not self.settings.context_tokens:
            return None
        limit = self.settings.max_context_document_chars
        docs = [d for d in self.workspace.text_documents.values() if d.uri != uri and len(d.source) <= limit]
        if not docs:
            return None
        others = tuple(sorted((d.uri, d.version or 0) for d in docs))
        texts = {d.uri: d.source for d in docs}  # str is immutable: a consistent snapshot
        index, source = doc.index, doc.source
        line = max(0, min(line, index.line_count - 1))
        query = source[index.line_start(max(0, line - 20)):index.line_end(line)]
        return uri, line, language if language is not None else doc.language_id, query, others, texts

    def _choose_snippets(self, uri: str, line: int, language: str | None, query: str, others: tuple,
                         texts: dict[str, str]) -> list[str]:
        """The snippets for :meth:`neighbour_snippets` from a snapshot (any thread)."""
        kept = self._snippets.get(uri)
        if kept is not None and kept[0] == others and abs(kept[1] - line) < 10:
            return kept[2]
        chosen = [s.render(language) for s in best_snippets(query, ((_display_path(u), texts[u]) for u, _ in others))]
        self._snippets[uri] = (others, line, chosen)
        return chosen

    async def complete_at(self, uri: str, position: types.Position) -> tuple[str, str] | None:
        """Return ``(line text before the cursor, completion)``, or ``None`` when there is nothing.

        ``None`` also when a newer request for the same document arrived meanwhile (it
        pre-empts this one between tokens) or the document changed. ``$/cancelRequest``
        cancels the awaiting coroutine; the generation stops at its next token.

        Raises:
            DocumentNotOpenError: the client never opened ``uri``.
            PositionError: the position lies outside the document.
        """
        doc = self.document(uri)
        offset = doc.offset_at_position(position)
        if self.engine is None:
            return None
        ticket = next(self._tickets)
        self.latest[uri] = ticket  # a newer request for this document pre-empts this one
        try:
            return await self._complete(uri, doc, offset, position, ticket)
        finally:
            if self.latest.get(uri) == ticket:
                del self.latest[uri]

    async def _complete(self, uri: str, doc: SafeTextDocument, offset: int, position: types.Position,
                        ticket: int) -> tuple[str, str] | None:
        """:meth:`complete_at` once the request is checked: debounce, snippets, the model."""
        if self.settings.debounce_ms:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
            if self.latest.get(uri) != ticket:
                return None
        now = self.open_or_none(uri)
        if now is None or now.version != doc.version:  # closed or changed since the request was sent
            return None
        version, source, language = doc.version, doc.source, doc.language_id
        prefix, suffix = source[:offset], source[offset:]
        line_prefix = source[doc.index.line_start(position.line):offset]
        inputs = self._snippet_inputs(uri, doc, position.line)
        loop = asyncio.get_running_loop()
        snippets = await loop.run_in_executor(self.context, self._choose_snippets, *inputs) if inputs else []
        if self.latest.get(uri) != ticket:
            return None
        engine = self.engine
        cancelled = threading.Event()

        def should_stop() -> bool:  # polled by the inference thread between tokens
            return cancelled.is_set() or self.latest.get(uri) != ticket

        self._idle.pop(uri, None)  # a background job for this document yields to the request
        try:
            result = await self.run_user(functools.partial(
                engine.complete, prefix, suffix, cache_key=uri, should_stop=should_stop,
                language=language, snippets=snippets))
        except asyncio.CancelledError:  # $/cancelRequest: stop the generation at the next token
            cancelled.set()
            raise
        if result.cancelled:
            log.debug("completion for %s pre-empted after %.0f ms", uri, result.total_ms)
            return None
        now = self.open_or_none(uri)
        if now is None or now.version != version:
            log.debug("document %s changed during inference; answering empty", uri)
            return None
        self._record(result)
        if not result.text:
            return None
        self.speculate(uri, prefix, suffix, result.text, snippets, language)
        return line_prefix, result.text

    def _record(self, result) -> None:
        """Log a completion's figures and send them in the status notification."""
        log.info("completion in %.0f ms (%d prompt tokens, %d reused, %d prefilled, %d context, %d new, %d threads%s%s%s%s)",
                 result.total_ms, result.prompt_tokens, result.reused_tokens, result.prefilled_tokens,
                 result.context_tokens, result.new_tokens, result.threads,
                 ", typed ahead" if result.typed_ahead else "", ", remembered" if result.remembered else "",
                 ", cut at the time budget" if result.cut else "", ", block" if result.block else "")
        self.last_latency_ms = round(result.total_ms, 1)
        self.last_cache_hit = result.typed_ahead or result.remembered or result.reused_tokens > 0
        self.last_reused_tokens = result.reused_tokens
        self.last_typed_ahead = result.typed_ahead
        self.last = {"prefilled": result.prefilled_tokens, "remembered": result.remembered, "cut": result.cut,
                     "threads": result.threads or None}
        self.set_state(self.state)


server = PocketPilotServer()
register_code_actions(server)  # textDocument/codeAction "PocketPilot: Write docstring", codeAction/resolve


@server.feature(types.INITIALIZE)
def on_initialize(ls: PocketPilotServer, params: types.InitializeParams) -> None:
    """Parse the settings; bad values are logged and shown in ONE ``window/showMessage`` warning
    (the spec allows it before the ``initialize`` response), which names each and its default."""
    ls.settings, problems = ServerSettings.parse(params.initialization_options)
    for p in problems:
        log.warning("%s", p)
    if problems:
        text = "PocketPilot: bad settings ignored: " + " | ".join(problems)
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning, text))


@server.feature(types.INITIALIZED)
async def on_initialized(ls: PocketPilotServer, params: types.InitializedParams) -> None:
    await ls.load_model()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: PocketPilotServer, params: types.DidOpenTextDocumentParams) -> None:
    """Warm the opened document up at its end (a focus notification with the cursor supersedes it)."""
    doc = ls.open_or_none(params.text_document.uri)
    if doc is not None:
        ls.sources[params.text_document.uri] = doc.source
        ls.warm_up(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: PocketPilotServer, params: types.DidChangeTextDocumentParams) -> None:
    """After a typing pause, warm the document up where it changed: the end of the last change,
    or, for a whole-document change, the end of the text that differs from the previous version."""
    uri = params.text_document.uri
    doc = ls.open_or_none(uri)
    if doc is None:
        return
    old, new = ls.sources.get(uri), doc.source
    ls.sources[uri] = new
    ls._cancel_timer(ls._speculating, uri)  # typing on: no speculation yet
    if not params.content_changes:
        return
    if doc.last_change_end is not None:  # a ranged change: the cursor is after its text
        ls.warm_after_pause(uri, offset=doc.last_change_end)
    else:
        ls.warm_after_pause(uri, offset=changed_offset(old, new) if old is not None else None)


def changed_offset(old: str, new: str) -> int:
    """Offset in ``new`` just after the text that differs from ``old`` (where a typing cursor is):
    ``len(new)`` minus the longest common suffix that does not overlap the common prefix.
    Linear in the documents' length, in C-speed block comparisons (see :func:`_common_prefix`)."""
    head = _common_prefix(old, new, min(len(old), len(new)))
    tail = _common_prefix(old[::-1], new[::-1], min(len(old), len(new)) - head)
    return len(new) - tail


def _common_prefix(a: str, b: str, limit: int, block: int = 4096) -> int:
    """Length of the longest common prefix of ``a`` and ``b``, at most ``limit`` (characters):
    equal blocks are skipped, then the differing block is bisected."""
    i = 0
    while i + block <= limit and a[i:i + block] == b[i:i + block]:
        i += block
    lo, hi = i, min(i + block, limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i:mid] == b[i:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@server.feature(FOCUS_NOTIFICATION)
def did_focus(ls: PocketPilotServer, params) -> None:
    """``pocketpilot/didFocus {textDocument: {uri}, position}``: warm up at the editor's cursor."""
    try:
        uri = params.textDocument.uri
        pos = types.Position(line=int(params.position.line), character=int(params.position.character))
    except (AttributeError, TypeError, ValueError):
        log.warning("pocketpilot/didFocus needs {textDocument: {uri}, position: {line, character}}; ignored")
        return
    ls.warm_up(uri, pos)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: PocketPilotServer, params: types.DidCloseTextDocumentParams) -> None:
    """Free the closed document's KV cache (on the inference thread, which owns the engine)."""
    ls.latest.pop(params.text_document.uri, None)  # pre-empts a running completion for it
    ls._snippets.pop(params.text_document.uri, None)
    ls._idle.pop(params.text_document.uri, None)  # and its background job
    ls.sources.pop(params.text_document.uri, None)
    ls._cancel_timer(ls._speculating, params.text_document.uri)
    ls._cancel_timer(ls._pause, params.text_document.uri)
    if ls.engine is not None:
        ls.infer.submit(ls.engine.forget, params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def inline_completion(ls: PocketPilotServer, params: types.InlineCompletionParams):
    found = await ls.complete_at(params.text_document.uri, params.position)
    if found is None:
        return types.InlineCompletionList(items=[])
    pos = params.position
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=found[1], range=types.Range(start=pos, end=pos))
    ])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
async def completion(ls: PocketPilotServer, params: types.CompletionParams):
    """One item with the same text as the inline suggestion, for clients without inline completion.

    The item replaces the identifier before the cursor with identifier + completion, so that
    clients that filter by the typed word keep it.
    """
    found = await ls.complete_at(params.text_document.uri, params.position)
    if found is None:
        return types.CompletionList(is_incomplete=True, items=[])
    line_prefix, text = found
    word = _trailing_word(line_prefix)
    encoding = ls.document(params.text_document.uri).encoding
    start = types.Position(line=params.position.line, character=params.position.character - units(word, encoding))
    new_text = word + text
    return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
        label=new_text.strip(), kind=types.CompletionItemKind.Text, detail="PocketPilot",
        filter_text=new_text, sort_text="0",
        text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=new_text),
    )])


def _display_path(uri: str) -> str:
    """The file name of a document URI, as shown above its snippets in the prompt (lone surrogates
    replaced: the tokenizer rejects them)."""
    return clean_text(PurePosixPath(unquote(urlparse(uri).path)).name or uri)


def _trailing_word(text: str) -> str:
    i = len(text)
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return text[i:]


#: ``pocketpilot.compress``'s options: key -> (accepted JSON types, what the value must be)
COMPRESS_OPTIONS: dict[str, tuple[tuple[type, ...], str]] = {
    "teacher": ((str,), "a teacher spec (a string)"),
    "method": ((str,), "a method name (a string)"),
    "force": ((bool,), "true or false"),
    "budgetMs": ((int, float), "a latency budget in ms (a number > 0)"),
    "evalTasks": ((int,), "a task count (an integer >= 0)"),
}


def compress_options(args: tuple) -> dict:
    """The options of a ``pocketpilot.compress`` call, checked against :data:`COMPRESS_OPTIONS`.

    Raises:
        EdgeError: -32602, saying what the arguments must be (nothing has started).
    """
    usage = "pocketpilot.compress takes no argument or one object {" + ", ".join(COMPRESS_OPTIONS) + "}"
    if len(args) > 1 or (args and not isinstance(args[0], dict)):
        raise EdgeError(f"{usage}; got {one_line(repr(list(args)), 80)}", INVALID_PARAMS)
    opts = dict(args[0]) if args else {}
    for key, value in opts.items():
        if key not in COMPRESS_OPTIONS:
            raise EdgeError(f"{usage}; unknown option {key!r}", INVALID_PARAMS)
        kinds, what = COMPRESS_OPTIONS[key]
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if ok and key == "budgetMs":
            ok = 0 < value < float("inf")
        elif ok and key == "evalTasks":
            ok = value >= 0
        if not ok:
            raise EdgeError(f"pocketpilot.compress: {key} must be {what}, got {one_line(repr(value), 60)}",
                            INVALID_PARAMS)
    return opts


@server.command(COMPRESS_COMMAND)
async def compress_command(ls: PocketPilotServer, *args):
    """``pocketpilot.compress [{"teacher": SPEC, "method": NAME, "force": bool, "budgetMs": ms, "evalTasks": n}]``
    with ``$/progress``.

    Without ``teacher`` and ``method`` (the first run, the editor's "Compress Model for This
    Machine"), the recipe is chosen for this machine (:mod:`pocketpilot.compression.recipe`).
    Returns the artifact summary (sizes in bytes) and serves the new artifact. Arguments are
    checked first (:func:`compress_options`); one compression runs at a time; the status goes
    back to what it was whatever happens.
    """
    opts = compress_options(args)
    if ls.compressing:
        raise EdgeError("a compression is already running; wait for it to finish", REQUEST_FAILED)
    ls.compressing = True
    try:
        return await _compress(ls, opts)
    finally:
        ls.compressing = False


async def _compress(ls: PocketPilotServer, opts: dict) -> dict:
    """Run the compression of :func:`compress_command` in the jobs thread and serve its artifact."""
    # lazy: torch (the compress command is the only path into compression)
    from pocketpilot.compression.api import compress
    from pocketpilot.compression.recipe import DEFAULT_BUDGET_MS, compress_for_this_machine

    loop = asyncio.get_running_loop()
    token = await ls.begin_progress("PocketPilot: compressing")

    def report(message: str, fraction: float | None) -> None:
        log.info("compress: %s", message)
        if token is not None:
            value = types.WorkDoneProgressReport(message=message, percentage=None if fraction is None else int(fraction * 100))
            loop.call_soon_threadsafe(ls.work_done_progress.report, token, value)

    previous = ls.state
    ls.set_state("compressing")
    try:
        if opts.get("teacher") or opts.get("method"):
            job = lambda: compress(opts.get("teacher"), opts.get("method", "int8"),  # noqa: E731
                                   force=bool(opts.get("force")), eval_tasks=int(opts.get("evalTasks", 20)),
                                   progress=report)
        else:
            job = lambda: compress_for_this_machine(  # noqa: E731
                float(opts.get("budgetMs", DEFAULT_BUDGET_MS)), force=bool(opts.get("force")),
                eval_tasks=int(opts.get("evalTasks", 10)), progress=report)[0]
        result = await loop.run_in_executor(ls.jobs, job)
    except PocketPilotError as exc:
        ls.set_state(previous)
        ls.end_progress(token, f"failed: {exc}")
        ls.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"PocketPilot: {exc}"))
        return {"ok": False, "error": str(exc)}
    except BaseException:  # a bug or a cancel: the reply says so; the status must not stay "compressing"
        ls.set_state(previous)
        ls.end_progress(token, "failed")
        raise
    ls.end_progress(token, f"artifact {result.artifact_id} ready")
    ls.settings = ServerSettings(**{**ls.settings.__dict__, "artifact": result.artifact_id})
    await ls.load_model()
    return {"ok": True, **result.summary()}


def run(tcp_port: int | None = None, host: str = "127.0.0.1", artifact: str | None = None) -> None:
    """Start the server on stdio (default) or TCP (127.0.0.1 by default; a client must send the
    session token, see :mod:`pocketpilot.lsp_server.transport`). Never touches the network for models."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="pocketpilot %(levelname)s: %(message)s", force=True)
    logging.getLogger("pygls").setLevel(logging.WARNING)  # its INFO level traces every message
    for handler in logging.getLogger().handlers:  # a hostile client must not flood the log
        handler.addFilter(RateLimitFilter())
    server.cli_artifact = artifact
    if tcp_port is not None:
        transport.serve_tcp(server, host, tcp_port)
    else:
        transport.serve_stdio(server)
