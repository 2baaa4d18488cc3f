"""The server's edge: every message is checked here before a handler sees it.

:class:`EdgeProtocol` replaces pygls's message decoding (pygls structures messages inside
``json.loads`` and, when that fails, answers nothing and pops up "Error in server"):

- a message that is not JSON, not an object or not JSON-RPC 2.0 is logged (stderr,
  rate-limited); a request among them whose id can still be read gets -32700 / -32600;
- a request before ``initialize`` gets -32002, a second ``initialize`` or a request after
  ``shutdown`` -32600, an unknown method -32601;
- params that do not match the method's LSP type, a ``textDocument`` that was never opened,
  and a ``position`` or ``range`` outside that document get -32602 (a notification with such
  params is logged and dropped) -- for every registered feature, before its handler runs;
- a handler's exception becomes a one-line error reply (``PositionError`` and
  ``DocumentNotOpenError`` -32602, another ``PocketPilotError`` -32803 RequestFailed, anything
  else -32603 with the traceback in the log only); a cancelled request gets -32800;
- no error reply carries a traceback, and protocol noise never reaches ``window/showMessage``.

Reading the frames is :mod:`pocketpilot.lsp_server.transport`'s job.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import JsonRPCResponseMessage

from pocketpilot.errors import DocumentNotOpenError, PocketPilotError, PositionError
from pocketpilot.lsp_server.documents import SafeTextDocument, SafeWorkspace, open_document

log = logging.getLogger("pocketpilot.protocol")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002
REQUEST_FAILED = -32803
REQUEST_CANCELLED = -32800

#: the id of a request whose body is not JSON, when it opens the object (as clients write it)
_LEADING_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?[0-9]{1,15}|"[A-Za-z0-9_.:-]{1,100}")\s*[,}]')


#: the document a request named, as it was when the request arrived (a handler starts later, when
#: more changes may have been applied): set by :class:`EdgeProtocol` for the request's task
RECEIVED: ContextVar[SafeTextDocument | None] = ContextVar("pocketpilot_received_document", default=None)


def received_document(uri: str) -> SafeTextDocument | None:
    """The document ``uri`` as the current request saw it on arrival, or ``None`` (not inside a
    request's handler, or the request named another document)."""
    doc = RECEIVED.get()
    return doc if doc is not None and unquote(doc.uri) == unquote(uri) else None


class EdgeError(JsonRpcException):
    """A request refused at the edge, with its JSON-RPC error code and a one-line message."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line of at most ``limit`` characters (for replies and logs)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _camel(path: str) -> str:
    """``$.params.text_document.uri`` -> ``params.textDocument.uri`` (the client's spelling)."""
    parts = path.removeprefix("$.").split(".")
    return ".".join(p.split("_")[0] + "".join(w.title() for w in p.split("_")[1:]) for p in parts)


def describe(exc: BaseException) -> str:
    """What is wrong with a message's params, in one line (the first problem cattrs found)."""
    if isinstance(exc, cattrs.BaseValidationError):
        def fmt(err: BaseException, _type: Any) -> str:
            if isinstance(err, KeyError):
                return "required field missing"
            if isinstance(err, (ValueError, TypeError)) and str(err):
                return one_line(err, 120)
            return f"invalid value for type, expected {getattr(_type, '__name__', _type)}"

        problems = cattrs.transform_error(exc, format_exception=fmt)
        if problems:
            text, _, where = problems[0].rpartition(" @ ")
            return f"{text} (at {_camel(where)})" if where else problems[0]
    return one_line(f"{type(exc).__name__}: {exc}", 160)


def error_reply(exc: BaseException) -> tuple[int, str]:
    """The JSON-RPC error code and one-line message a handler's exception is answered with."""
    if isinstance(exc, JsonRpcException):
        return exc.code, one_line(exc.message)
    if isinstance(exc, (PositionError, DocumentNotOpenError)):
        return INVALID_PARAMS, one_line(exc)
    if isinstance(exc, PocketPilotError):
        return REQUEST_FAILED, one_line(exc)
    return INTERNAL_ERROR, one_line(f"internal error ({type(exc).__name__}: {exc}); details are in the server log")


class RateLimitFilter(logging.Filter):
    """A log filter letting through at most ``burst`` records of one kind (logger and message
    template) per ``window_s`` seconds, each cut to one line of ``max_chars``; the first record
    over the limit says that more are dropped.

    Args:
        burst: records of one kind per window.
        window_s: window length (s).
        max_chars: longest message kept (characters).
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_chars: int = 500) -> None:
        super().__init__()
        self.burst, self.window_s, self.max_chars = burst, window_s, max_chars
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record over its kind's limit; else True, the record cut to one line."""
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        start, count = self._seen.get(key, (now, 0))
        if now - start > self.window_s:
            start, count = now, 0
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (start, count + 1)
        if count >= self.burst + 1:
            return False
        message = record.getMessage()
        if count == self.burst:
            message += f" [more like this are dropped for {self.window_s:.0f} s]"
        if len(message) > self.max_chars or "\n" in message:
            message = one_line(message, self.max_chars) if not record.exc_info else message[: self.max_chars]
        record.msg, record.args = message, ()
        return True


def noise(reason: str) -> None:
    """Log protocol noise (a warning on stderr, rate-limited by :class:`RateLimitFilter`)."""
    log.warning("ignored: %s", reason)


class EdgeProtocol(LanguageServerProtocol):
    """pygls's :class:`LanguageServerProtocol` with the checks of this module at its edge.

    Feed it a frame's body with :meth:`handle_body` (the transport does); a registered
    feature's handler is only called with params of the method's LSP type, for an open
    document and a position/range inside it.
    """

    # -- decoding ---------------------------------------------------------------------------------------------------

    def handle_body(self, data: bytes) -> bool:
        """Decode and handle one frame's body; False when it is not JSON (the transport may then
        look in it for a frame it swallowed). Never raises (except ``SystemExit`` from ``exit``)."""
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            noise(f"message is not JSON ({describe(exc)})")
            found = _LEADING_ID.match(data)
            if found:
                self.reply_error(json.loads(found.group(1)), PARSE_ERROR, f"parse error: {describe(exc)}")
            return False
        try:
            self.handle_object(obj)
        except Exception:  # a bug here must not take the reader down
            log.exception("could not handle a message")
        return True

    def handle_object(self, obj: Any) -> None:
        """Check one decoded message's envelope and route it (request, notification, response)."""
        if not isinstance(obj, dict):
            return noise(f"message is a JSON {type(obj).__name__}, not an object (LSP has no batches)")
        msg_id, method = obj.get("id"), obj.get("method")
        good_id = isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)
        if obj.get("jsonrpc") != "2.0" or ("method" in obj and not isinstance(method, str)):
            if "method" in obj and good_id:
                return self.reply_error(msg_id, INVALID_REQUEST, 'not a JSON-RPC 2.0 request: needs "jsonrpc": "2.0" '
                                                                 'and a string "method"')
            return noise("message is not JSON-RPC 2.0")
        if "method" not in obj:
            return self._response(obj) if good_id else noise("response without a valid id")
        if "id" not in obj:
            return self._notification(method, obj)
        if not good_id:
            return noise(f"request {method!r} has an id that is not an integer or a string")
        try:
            self._request(msg_id, method, obj)
        except (EdgeError, PositionError, DocumentNotOpenError) as exc:
            self.reply_error(msg_id, *error_reply(exc))

    def _request(self, msg_id: int | str, method: str, obj: dict) -> None:
        """Check a request and dispatch it; raises :class:`EdgeError` / ``PositionError`` /
        ``DocumentNotOpenError`` for the reply."""
        if method == types.INITIALIZE and self._workspace is not None:
            raise EdgeError("initialize was already sent; a server is initialized once", INVALID_REQUEST)
        if method != types.INITIALIZE and self._workspace is None:
            raise EdgeError(f"server not initialized: send initialize before {method}", SERVER_NOT_INITIALIZED)
        if self._shutdown:
            raise EdgeError(f"server is shutting down; {method} not run", INVALID_REQUEST)
        if not self.knows(method):
            raise EdgeError(f"unknown method {method!r}", METHOD_NOT_FOUND)
        message = self._structure(method, obj)
        doc = self.check_document(getattr(message, "params", None))
        token = RECEIVED.set(copy.copy(doc) if doc is not None else None)  # the handler's task copies the context
        try:
            super().handle_message(message)
        finally:
            RECEIVED.reset(token)

    def _notification(self, method: str, obj: dict) -> None:
        """Check a notification and dispatch it; a bad one is logged and dropped."""
        if method == types.EXIT:
            return super().handle_message(self._structure(method, obj))
        if self._workspace is None or self._shutdown:
            return noise(f"{method} {'before initialize' if self._workspace is None else 'after shutdown'}")
        if method == types.CANCEL_REQUEST:
            params = obj.get("params")
            return self.cancel(params.get("id") if isinstance(params, dict) else None)
        if not self.knows(method):
            if not method.startswith("$/"):  # $/ notifications may be ignored (LSP)
                log.debug("unknown notification %r ignored", method)
            return None
        try:
            message = self._structure(method, obj)
            if method != types.TEXT_DOCUMENT_DID_OPEN:
                self.check_document(getattr(message, "params", None))
        except (EdgeError, PositionError, DocumentNotOpenError) as exc:
            return noise(f"{method}: {one_line(exc)}")
        super().handle_message(message)

    def _response(self, obj: dict) -> None:
        """A client's reply to one of the server's requests."""
        try:
            if "error" in obj:
                message = self._converter.structure(obj, types.ResponseErrorMessage)
            else:
                kind = self._result_types.pop(obj["id"], None) or JsonRPCResponseMessage
                message = self._converter.structure(obj, kind)
        except Exception as exc:
            return noise(f"bad response to {obj.get('id')!r}: {describe(exc)}")
        super().handle_message(message)

    def knows(self, method: str) -> bool:
        """True when a handler (pygls's or the server's) is registered for ``method``."""
        return method in self.fm.builtin_features or method in self.fm.features

    def _structure(self, method: str, obj: dict) -> Any:
        """The message as the method's LSP type (or pygls's generic one for our own methods).

        Raises:
            EdgeError: -32602, naming the first field that does not fit.
        """
        kind = self.get_message_type(method) or (JsonRPCRequestMessage if "id" in obj else JsonRPCNotification)
        if kind in (JsonRPCRequestMessage, JsonRPCNotification):  # our own methods: keep the envelope's keys
            obj = {"params": None, **{k: v for k, v in obj.items() if k in ("id", "method", "jsonrpc", "params")}}
        try:
            return self._converter.structure(obj, kind)
        except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            raise EdgeError(f"invalid params for {method}: {describe(exc)}", INVALID_PARAMS) from None

    def check_document(self, params: Any) -> SafeTextDocument | None:
        """For params naming a ``textDocument``: the open document, with any ``position`` and
        ``range`` checked against it; ``None`` for other params.

        Raises:
            DocumentNotOpenError: the client never opened the document.
            PositionError: a position or range lies outside it (or the range ends before it starts).
        """
        uri = getattr(getattr(params, "text_document", None), "uri", None)
        if not isinstance(uri, str):
            return None
        doc = open_document(self.workspace, uri)
        position = getattr(params, "position", None)
        if isinstance(position, types.Position):
            doc.offset_at_position(position)
        span = getattr(params, "range", None)
        if isinstance(span, types.Range) and doc.offset_at_position(span.start) > doc.offset_at_position(span.end):
            raise PositionError(f"range of {uri} ends before it starts")
        return doc

    # -- replies ----------------------------------------------------------------------------------------------------

    def reply_error(self, msg_id: int | str, code: int, message: str) -> None:
        """Send an error reply (one line, no data)."""
        self._send_response(msg_id, error=types.ResponseError(code=code, message=one_line(message)))

    def _send_response(self, msg_id, result=None, error=None) -> None:
        """pygls's, with every error cut to its code and one line (no traceback in ``data``)."""
        if error is not None:
            error = types.ResponseError(code=error.code, message=one_line(error.message))
        super()._send_response(msg_id, result, error)

    def _send_handler_result(self, future, *, msg_id) -> None:
        """Reply with a handler's result, or its exception as one line (see :func:`error_reply`)."""
        self._request_futures.pop(msg_id, None)
        if future.cancelled():
            return self.reply_error(msg_id, REQUEST_CANCELLED, f"request {msg_id!r} was cancelled")
        exc = future.exception()
        if exc is None:
            return self._send_response(msg_id, result=future.result())
        code, message = error_reply(exc)
        if code == INTERNAL_ERROR:
            log.error("request %r failed", msg_id, exc_info=exc)
        else:
            log.debug("request %r: %s", msg_id, message)
        self.reply_error(msg_id, code, message)

    def cancel(self, msg_id: Any) -> None:
        """``$/cancelRequest``: cancel the request if it is still running (its reply is -32800)."""
        if not isinstance(msg_id, (int, str)) or isinstance(msg_id, bool):
            return noise("$/cancelRequest needs {id: integer | string}")
        future = self._request_futures.pop(msg_id, None)
        if future is not None:
            future.cancel()

    # -- documents --------------------------------------------------------------------------------------------------

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        """pygls's ``initialize``, with a :class:`SafeWorkspace` (no disk reads, LSP lines)."""
        inner = super().lsp_initialize(params)
        try:
            step = next(inner)  # pygls has made its workspace by its first yield
        except StopIteration as done:
            self._use_safe_workspace()
            return done.value
        self._use_safe_workspace()
        while True:
            value = yield step
            try:
                step = inner.send(value)
            except StopIteration as done:
                return done.value

    def _use_safe_workspace(self) -> None:
        old = self._workspace
        self._workspace = SafeWorkspace(old.root_uri, old._sync_kind, list(old.folders.values()),
                                        old.position_encoding)
