"""Reading frames from stdio or TCP into :class:`~pocketpilot.lsp_server.protocol.EdgeProtocol`.

Replaces pygls's ``start_io`` / ``start_tcp`` loops, which read a header line at a time
without bounds (one ``Content-Length: 10^20`` header ends the server) and, over TCP, let any
local process take over the session. Here:

- bytes are read in chunks and parsed by :class:`~pocketpilot.lsp_server.framing.FrameParser`
  (bounded, resynchronising); all complete frames of a chunk are handled before the loop
  yields, so a request and its ``$/cancelRequest`` sent together never start the model;
- ``serve --tcp`` writes a per-session token to a 0600 file in the cache dir
  (:func:`token_path`); a connection must send it in ``initialize``'s
  ``initializationOptions.token`` or it is answered with an error and closed, before pygls
  sees anything. One client at a time: while the editor is connected, another connection is
  closed at once and the editor's session goes on; when the editor disconnects the server
  stops.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from pocketpilot import store
from pocketpilot.lsp_server.framing import Body, FrameParser, Noise
from pocketpilot.lsp_server.protocol import INVALID_REQUEST, EdgeProtocol, noise, one_line

log = logging.getLogger("pocketpilot.transport")

#: bytes asked for per read (bytes)
READ_CHUNK = 65536
#: quiet time after which a body still awaited is checked for a later header (s)
STALL_S = 2.0
#: time a TCP connection has to send ``initialize`` with the token (s)
AUTH_TIMEOUT_S = 10.0
#: TCP connections waiting to authenticate at once; more are closed at once
MAX_PENDING = 4
#: the ``initializationOptions`` key holding the TCP session token
TOKEN_KEY = "token"
#: handling frames for longer than this yields to the event loop once (s)
_SLICE_S = 0.05


async def pump(read: Callable[[], Awaitable[bytes]], handle: Callable[[bytes], bool], stop: threading.Event,
               parser: FrameParser | None = None) -> None:
    """Read chunks with ``read()`` (``b""`` = end of stream) and pass each frame's body to
    ``handle`` (False: not JSON) until the stream ends or ``stop`` is set; framing noise is
    logged. A body awaited after :data:`STALL_S` quiet seconds is given up if a later header
    arrived (see :meth:`FrameParser.stalled`)."""
    parser = parser or FrameParser()
    pending: asyncio.Future | None = None
    try:
        while not stop.is_set():
            if pending is None:
                pending = asyncio.ensure_future(read())
            done, _ = await asyncio.wait({pending}, timeout=STALL_S if parser.waiting_for_body else None)
            if not done:
                skipped = parser.stalled()
                if skipped is not None:
                    noise(skipped.reason)
                    await _drain(parser, handle)
                continue
            chunk, pending = pending.result(), None
            if not chunk:
                return
            parser.feed(chunk)
            await _drain(parser, handle)
    finally:
        if pending is not None:
            pending.cancel()


async def _drain(parser: FrameParser, handle: Callable[[bytes], bool]) -> None:
    """Handle every complete frame the parser holds, yielding to the loop every :data:`_SLICE_S`."""
    started = time.monotonic()
    while (event := parser.next()) is not None:
        if isinstance(event, Noise):
            noise(event.reason)
        elif not handle(event.data):
            recovered = parser.reject(event)
            if recovered is not None:
                noise("a frame's Content-Length was too long; reading its message and the frame it swallowed")
                handle(recovered.data)
        if time.monotonic() - started > _SLICE_S:
            await asyncio.sleep(0)
            started = time.monotonic()


class ThreadReader:
    """Chunks of a blocking binary stream (stdin), read in a daemon thread (so a pending read
    never holds up exit), at most ``max_chunks`` ahead of the consumer. A stream with a file
    descriptor is read with ``os.read`` (a daemon thread blocked inside a buffered reader's
    lock aborts the interpreter at exit).

    Args:
        stream: a binary stream: with ``fileno()`` (``sys.stdin.buffer``), else with ``read1``.
        loop: the event loop :meth:`read` is awaited on.
        max_chunks: chunks read ahead at most (backpressure).
    """

    def __init__(self, stream: BinaryIO, loop: asyncio.AbstractEventLoop, max_chunks: int = 64) -> None:
        self.stream, self.loop = stream, loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.slots = threading.Semaphore(max_chunks)
        threading.Thread(target=self._run, name="pocketpilot-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            fd = self.stream.fileno()
            read = functools.partial(os.read, fd)
        except (AttributeError, OSError, ValueError):  # no descriptor (an in-memory stream)
            read = self.stream.read1
        while True:
            self.slots.acquire()
            try:
                data = read(READ_CHUNK)
            except (OSError, ValueError):
                data = b""
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: the server is exiting
                return
            if not data:
                return

    async def read(self) -> bytes:
        """The next chunk (``b""`` at the end of the stream)."""
        data = await self.queue.get()
        self.slots.release()
        return data


def serve_stdio(server: LanguageServer, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """Serve one client on stdin/stdout until it exits or closes stdin."""
    protocol = _edge(server)
    server._stop_event = stop = threading.Event()
    protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

    async def main() -> None:
        reader = ThreadReader(stdin or sys.stdin.buffer, asyncio.get_running_loop())
        await pump(reader.read, protocol.handle_body, stop)

    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("the client closed the connection; stopping")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def token_path(port: int) -> Path:
    """The file holding the session token of ``serve --tcp PORT``: ``<cache>/serve-PORT.token``."""
    return store.home() / f"serve-{port}.token"


def write_token(path: Path) -> str:
    """Write a fresh random token to ``path``, readable by this user only (0600); returns it."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


class TcpSessions:
    """Accepts TCP connections for one server: authenticates them, one session at a time.

    Args:
        server: the language server (its protocol gets the authenticated connection's messages).
        token: the session token a client must send in ``initializationOptions.token``.
        where: the token file's path, named in the refusal message.
    """

    def __init__(self, server: LanguageServer, token: str, where: Path) -> None:
        self.server, self.protocol = server, _edge(server)
        self.token, self.where = token, where
        self.active: asyncio.StreamWriter | None = None
        self.pending = 0
        self.stop = threading.Event()
        self.listener: asyncio.Server | None = None

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: refused when a session is on or too many wait; else authenticated,
        then served until it closes (which ends the server if it was the session)."""
        peer = writer.get_extra_info("peername")
        if self.active is not None or self.pending >= MAX_PENDING:
            log.warning("refused a connection from %s: one client at a time", peer)
            writer.close()
            return
        self.pending += 1
        parser = FrameParser()
        try:
            first = await asyncio.wait_for(self._first_body(reader, parser), AUTH_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            first = None
        finally:
            self.pending -= 1
        if first is None or not self._authenticate(first, writer):
            writer.close()
            return
        await self._serve(reader, writer, parser, first)

    async def _first_body(self, reader: asyncio.StreamReader, parser: FrameParser) -> Any:
        """The connection's first message, decoded (``None`` if it closed first or sent no JSON)."""
        while True:
            event = parser.next()
            if isinstance(event, Body):
                try:
                    return json.loads(event.data)
                except (ValueError, RecursionError):
                    return None
            if isinstance(event, Noise):
                return None
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                return None
            parser.feed(chunk)

    def _authenticate(self, message: Any, writer: asyncio.StreamWriter) -> bool:
        """True when ``message`` is ``initialize`` carrying the token (which is then removed from
        it) and no other session started meanwhile; otherwise the client gets an error reply."""
        msg_id = message.get("id") if isinstance(message, dict) else None
        params = message.get("params") if isinstance(message, dict) else None
        options = params.get("initializationOptions") if isinstance(params, dict) else None
        given = options.get(TOKEN_KEY) if isinstance(options, dict) else None
        ok = (isinstance(message, dict) and message.get("method") == "initialize" and isinstance(given, str)
              and hmac.compare_digest(given.encode(), self.token.encode()))
        if ok and self.active is None:
            del options[TOKEN_KEY]
            return True
        reason = ("another client is connected" if ok else
                  f"send initialize with initializationOptions.token, the session token in {self.where}")
        log.warning("refused a client: %s", reason)
        if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
            body = json.dumps({"jsonrpc": "2.0", "id": msg_id,
                               "error": {"code": INVALID_REQUEST, "message": one_line(f"refused: {reason}")}}).encode()
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: FrameParser,
                     first: dict) -> None:
        """Serve the authenticated session; when it ends, the server stops."""
        self.active = writer
        self.protocol.set_writer(writer)
        log.info("client connected from %s", writer.get_extra_info("peername"))
        try:
            self.protocol.handle_object(first)
            await pump(lambda: reader.read(READ_CHUNK), self.protocol.handle_body, self.stop, parser)
        except ConnectionError:
            pass
        finally:
            log.info("client disconnected; stopping")
            self.stop.set()
            writer.close()
            if self.listener is not None:
                self.listener.close()

    async def run(self, host: str, port: int) -> None:
        """Listen on ``host:port`` until the session ends."""
        self.listener = await asyncio.start_server(self.connected, host, port)
        async with self.listener:
            try:
                await self.listener.serve_forever()
            except asyncio.CancelledError:
                pass


def serve_tcp(server: LanguageServer, host: str, port: int) -> None:
    """Serve one authenticated client over TCP (see the module docstring); the token file is
    removed when the server stops."""
    where = token_path(port)
    token = write_token(where)
    server._stop_event = threading.Event()
    sessions = TcpSessions(server, token, where)
    log.info("listening on %s:%d; a client must send initializationOptions.token from %s", host, port, where)
    try:
        asyncio.run(sessions.run(host, port))
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        where.unlink(missing_ok=True)
        server.shutdown()


def _edge(server: LanguageServer) -> EdgeProtocol:
    """The server's protocol, which must be an :class:`EdgeProtocol`.

    Raises:
        TypeError: the server was made with another protocol class.
    """
    if not isinstance(server.protocol, EdgeProtocol):
        raise TypeError(f"{type(server).__name__} must use protocol_cls=EdgeProtocol, not {type(server.protocol).__name__}")
    return server.protocol
