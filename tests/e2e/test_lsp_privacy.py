"""Serving opens no network connection: an audit hook in the server process records every attempt."""

import subprocess
import sys

import pytest

from rawlsp import RawServer

pytestmark = pytest.mark.e2e

#: runs ``pocketpilot ARGS...`` (or, with ``--probe``, one TCP connect) with an audit hook that writes
#: each network event to the file in argv[1]
HARNESS = """
import sys
events = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.sendmsg",
          "http.client.connect", "urllib.Request", "ftplib.connect", "smtplib.connect")
log = open(sys.argv[1], "a", buffering=1)

def hook(event, args):
    if event in events:
        log.write(f"{event} {args!r}\\n")

sys.addaudithook(hook)
if sys.argv[2] == "--probe":
    import socket
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    except OSError:
        pass
    sys.exit(0)
from pocketpilot.cli import main
sys.exit(main(sys.argv[2:]))
"""

URI = "file:///tmp/privacy/a.py"


def test_the_audit_hook_sees_a_connection_attempt(tmp_path):
    """The harness works: a process that connects is caught (so an empty log below means something)."""
    log = tmp_path / "net.log"
    subprocess.run([sys.executable, "-c", HARNESS, str(log), "--probe"], check=True, timeout=60)
    assert "socket.connect" in log.read_text()


def test_serving_a_session_attempts_no_connection(tiny_home, tmp_path):
    log = tmp_path / "net.log"
    log.touch()
    srv = RawServer(tiny_home, tmp_path / "server.err", command=[sys.executable, "-c", HARNESS, str(log), "serve"])
    try:
        srv.initialize()
        srv.open(URI, "def add(a, b):\n    return\n")
        srv.open("file:///tmp/privacy/b.py", "def add_numbers(a, b):\n    return a + b\n")
        reply = srv.wait_reply(srv.inline(URI, 1, 10), 60)
        assert reply["result"]["items"], reply  # the model ran (with b.py as a snippet)
        srv.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 1, "character": 10}, "end": {"line": 1, "character": 10}}, "text": " a"}]})
        assert "result" in srv.wait_reply(srv.request("textDocument/completion", {
            "textDocument": {"uri": URI}, "position": {"line": 1, "character": 12}}), 60)
        assert "error" in srv.call("workspace/executeCommand", {"command": "pocketpilot.compress",
                                                                 "arguments": [{"teacher": 5}]})
        assert "error" in srv.wait_reply(srv.inline("file:///etc/hosts", 0, 0), 30)
        srv.notify("pocketpilot/didFocus", {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 12}})
        assert srv.alive(URI)
    finally:
        code = srv.close()
    assert code == 0, srv.stderr()[-2000:]
    assert log.read_text() == "", log.read_text()
