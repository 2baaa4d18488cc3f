"""A raw LSP client over a subprocess's pipes, for tests that must send broken frames.

pytest-lsp only sends well-formed messages; the fuzz suite, the privacy test and
``benchmarks/server_edge.py`` need to write any bytes and to see every message the server
sends back (replies, ``window/showMessage``), so they use this instead.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

INLINE_CAPS = {"textDocument": {"inlineCompletion": {}, "completion": {}}, "window": {"workDoneProgress": False}}


def frame(body: Any) -> bytes:
    """One base-protocol frame: ``Content-Length`` header, blank line, body (bytes as they are,
    anything else JSON-encoded; lone surrogates are escaped as JSON allows)."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class RawServer:
    """``pocketpilot serve`` (or any command) on pipes: write raw bytes, read every message back.

    Args:
        home: ``POCKETPILOT_HOME`` for the server (an empty folder means "no model").
        stderr_path: where the server's stderr goes (read it with :meth:`stderr`).
        command: the server command (default ``python -m pocketpilot serve``).
        env: extra environment variables.
    """

    def __init__(self, home: Path, stderr_path: Path, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "wb")
        full_env = {**os.environ, "POCKETPILOT_HOME": str(home), **(env or {})}
        self.proc = subprocess.Popen(command or [sys.executable, "-m", "pocketpilot", "serve"], env=full_env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self.replies: dict[Any, dict] = {}
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.extra_stdout = b""  # bytes that were not a well-formed frame (must stay empty)
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- reading --------------------------------------------------------------------------------------------------

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            header = b""
            while not header.endswith(b"\r\n\r\n"):
                byte = out.read(1)
                if not byte:
                    return self._closed()
                header += byte
            fields = dict(line.split(b": ", 1) for line in header.strip().split(b"\r\n") if b": " in line)
            if b"Content-Length" not in fields:
                with self._cond:
                    self.extra_stdout += header
                continue
            body = out.read(int(fields[b"Content-Length"]))
            msg = json.loads(body)
            with self._cond:
                if "method" in msg and "id" in msg:
                    self.server_requests.append(msg)
                    self._answer_server_request(msg)
                elif "method" in msg:
                    self.notifications.append(msg)
                else:
                    key = msg.get("id")
                    self.replies.setdefault(key if isinstance(key, (int, str)) or key is None else json.dumps(key), msg)
                self._cond.notify_all()

    def _closed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _answer_server_request(self, msg: dict) -> None:
        """Reply null to the server's own requests (progress tokens, ...)."""
        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})

    # -- writing --------------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write raw bytes to the server's stdin (ignores a closed pipe: the caller checks :meth:`alive`)."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def send(self, message: dict) -> None:
        """Send one well-formed frame."""
        self.write(frame(message))

    def request(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        """Send a request; returns its id (a fresh integer unless given)."""
        msg_id = next(self._ids) if msg_id is None else msg_id
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return msg_id

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification."""
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def wait_reply(self, msg_id: Any, timeout: float = 30.0) -> dict | None:
        """The reply to ``msg_id``, or ``None`` when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.2))
            return self.replies[msg_id]

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> dict | None:
        """Send a request and wait for its reply."""
        return self.wait_reply(self.request(method, params), timeout)

    def wait_status(self, states: tuple[str, ...] = ("ready", "no-model"), timeout: float = 120.0) -> dict | None:
        """The first ``pocketpilot/status`` notification whose state is one of ``states``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for n in self.notifications:
                    if n["method"] == "pocketpilot/status" and n["params"]["state"] in states:
                        return n["params"]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._cond.wait(min(left, 0.2))

    # -- sessions -------------------------------------------------------------------------------------------------

    def initialize(self, options: dict | None = None, wait: tuple[str, ...] | None = ("ready", "no-model")) -> dict:
        """``initialize`` + ``initialized``; waits for a status in ``wait`` (``None``: do not wait)."""
        reply = self.call("initialize", {"processId": None, "rootUri": None, "capabilities": INLINE_CAPS,
                                         "initializationOptions": options}, timeout=60)
        assert reply is not None and "result" in reply, reply
        self.notify("initialized", {})
        if wait:
            assert self.wait_status(wait) is not None, self.stderr()[-3000:]
        return reply

    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        """``textDocument/didOpen``."""
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": version,
                                                              "text": text}})

    def inline(self, uri: str, line: int, character: int, msg_id: Any = None) -> Any:
        """Send a ``textDocument/inlineCompletion`` request; returns its id."""
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}, msg_id)

    def alive(self, uri: str | None = None, timeout: float = 15.0) -> bool:
        """True when the process runs and answers a request within ``timeout`` seconds (an inline
        completion on ``uri`` if given, else a request for an unknown method)."""
        if self.proc.poll() is not None:
            return False
        msg_id = self.inline(uri, 0, 0) if uri else self.request("pocketpilot/noSuchMethod", {})
        return self.wait_reply(msg_id, timeout) is not None

    def pop_ups(self) -> list[dict]:
        """``window/showMessage`` notifications received so far."""
        with self._cond:
            return [n for n in self.notifications if n["method"] == "window/showMessage"]

    def stderr(self) -> str:
        """What the server wrote to stderr so far."""
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self, timeout: float = 10.0) -> int | None:
        """``shutdown`` + ``exit`` when alive, then kill; returns the exit code."""
        if self.proc.poll() is None:
            self.call("shutdown", timeout=5)
            self.notify("exit")
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self._err.close()
        return code
