"""``serve --tcp``: a session token in a 0600 file, one client at a time, the editor never dropped."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rawlsp import INLINE_CAPS, frame

pytestmark = pytest.mark.e2e

URI = "file:///tmp/tcp/example.py"


class SocketClient:
    """Frames over one TCP connection; :meth:`reply` waits for the answer to an id."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.messages: list[dict] = []

    def send(self, msg: dict) -> None:
        self.sock.sendall(frame(msg))

    def _read_one(self) -> dict | None:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n"))[b"Content-Length"])
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                return None
            rest += data
        self.buf = rest[length:]
        return json.loads(rest[:length])

    def reply(self, msg_id) -> dict | None:
        """The reply to ``msg_id`` (``None`` if the server closed the connection first)."""
        while True:
            msg = self._read_one()
            if msg is None:
                return None
            self.messages.append(msg)
            if msg.get("id") == msg_id and "method" not in msg:
                return msg

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def _initialize(msg_id, token=None) -> dict:
    options = {"token": token} if token is not None else {}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "initialize",
            "params": {"processId": None, "rootUri": None, "capabilities": INLINE_CAPS,
                       "initializationOptions": options}}


@pytest.fixture
def tcp_server(tiny_home, tmp_path):
    """``pocketpilot serve --tcp PORT`` with the tiny model; yields (process, port, token file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "POCKETPILOT_HOME": str(tiny_home)}
    err = open(tmp_path / "server.err", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pocketpilot", "serve", "--tcp", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=err)
    token_file = Path(tiny_home) / f"serve-{port}.token"
    for _ in range(300):
        if token_file.exists() and _listening(port):
            break
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "server.err").read_text())
        time.sleep(0.1)
    else:
        raise AssertionError("server did not listen")
    yield proc, port, token_file
    proc.kill()
    out, _ = proc.communicate(timeout=10)
    err.close()
    assert out == b""  # over TCP, nothing goes to stdout


def _listening(port: int) -> bool:
    """True when a TCP connection to the port succeeds (it is closed at once)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_token_file_is_private_and_a_client_without_the_token_is_refused(tcp_server):
    proc, port, token_file = tcp_server
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for token in (None, "wrong", token_file.read_text() + "x"):
        stranger = SocketClient(port)
        stranger.send(_initialize(1, token))
        reply = stranger.reply(1)
        assert reply["error"]["code"] == -32600 and "token" in reply["error"]["message"], reply
        assert stranger.closed_by_server()
    prober = SocketClient(port)  # a request before initialize is not an initialize: closed
    prober.send({"jsonrpc": "2.0", "id": 1, "method": "textDocument/completion", "params": {}})
    assert prober.reply(1)["error"]["code"] == -32600 and prober.closed_by_server()
    editor = SocketClient(port)
    editor.send(_initialize(1, token_file.read_text()))
    caps = editor.reply(1)["result"]["capabilities"]
    assert caps["inlineCompletionProvider"] is not None and "completionProvider" in caps
    assert "pocketpilot.compress" in caps["executeCommandProvider"]["commands"]
    assert proc.poll() is None


def test_a_second_client_is_refused_and_the_editor_keeps_its_session(tcp_server):
    proc, port, token_file = tcp_server
    token = token_file.read_text()
    editor = SocketClient(port)
    editor.send(_initialize(1, token))
    assert "result" in editor.reply(1)
    editor.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    editor.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": URI, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return\n"}}})
    inline = {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 10}, "context": {"triggerKind": 1}}

    def editor_completion(msg_id) -> list:
        for _ in range(100):  # the model loads after `initialized`
            editor.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion", "params": inline})
            items = editor.reply(msg_id)["result"]["items"]
            if items:
                return items
            msg_id += 1000
            time.sleep(0.1)
        raise AssertionError(editor.messages[-5:])

    assert editor_completion(2)[0]["insertText"] == " a + b"
    for send_token in (False, True):  # a second client, even with the token, gets nothing and goes
        second = SocketClient(port)
        if send_token:
            second.send(_initialize(1, token))
        assert second.closed_by_server()
        assert second.reply(1) is None
        second.close()
    assert editor_completion(3)[0]["insertText"] == " a + b"  # the editor's session goes on
    assert proc.poll() is None
    editor.close()  # the editor goes: the server stops and removes its token
    proc.wait(30)
    assert not token_file.exists()
