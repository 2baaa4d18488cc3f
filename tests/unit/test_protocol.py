"""The edge checks, in-process: every request gets one reply with the right code and one line."""

import asyncio
import json

import pytest

from pocketpilot.lsp_server import server as srv
from pocketpilot.lsp_server.framing import Body, FrameParser
from pocketpilot.lsp_server.protocol import RateLimitFilter

URI = "file:///w/a.py"


class Capture:
    """A writer that parses what the server sends."""

    def __init__(self):
        self.parser = FrameParser()
        self.messages: list[dict] = []

    def write(self, data: bytes) -> None:
        self.parser.feed(data)
        while (e := self.parser.next()) is not None:
            assert isinstance(e, Body), e
            self.messages.append(json.loads(e.data))

    def close(self) -> None:
        pass

    def reply(self, msg_id):
        found = [m for m in self.messages if m.get("id") == msg_id and "method" not in m]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture
def edge(monkeypatch):
    """The real server's protocol, uninitialized, writing into a :class:`Capture`."""
    ls = srv.server
    proto = ls.protocol
    monkeypatch.setattr(proto, "_workspace", None)
    monkeypatch.setattr(proto, "_shutdown", False)
    monkeypatch.setattr(ls, "engine", None)
    out = Capture()
    proto.set_writer(out)
    yield proto, out
    proto.set_writer(None)


def send(proto, obj) -> None:
    proto.handle_body(json.dumps(obj).encode())


def request(proto, msg_id, method, params=None):
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    if params is not None:
        msg["params"] = params
    send(proto, msg)


def initialize(proto, out):
    request(proto, 1, "initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert "result" in out.reply(1), out.messages
    send(proto, {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": URI, "languageId": "python", "version": 1, "text": "def add(a, b):\n    return\n"}}})


def inline(line, character, uri=URI, **extra):
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
              "context": {"triggerKind": 1}}
    params.update(extra)
    return params


def code(out, msg_id):
    reply = out.reply(msg_id)
    assert reply is not None, f"request {msg_id} unanswered: {out.messages}"
    assert "error" in reply, reply
    err = reply["error"]
    assert "data" not in err and "\n" not in err["message"] and "Traceback" not in err["message"], err
    return err["code"], err["message"]


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_requests_before_initialize_get_32002_and_notifications_are_dropped(edge):
    proto, out = edge
    request(proto, 7, "textDocument/inlineCompletion", inline(0, 0))
    send(proto, {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {}})
    assert code(out, 7)[0] == -32002
    initialize(proto, out)
    request(proto, 2, "initialize", {"processId": None, "rootUri": None, "capabilities": {}})
    assert code(out, 2)[0] == -32600  # initialized once


async def test_bad_requests_get_the_right_code_and_one_line(edge):
    proto, out = edge
    initialize(proto, out)
    cases = {
        10: ("foo/bar", None, -32601, "unknown method"),
        11: ("textDocument/inlineCompletion", inline(-1, 0), -32602, "params.position"),
        12: ("textDocument/inlineCompletion", {"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}},
             -32602, "required field missing (at params.context)"),
        13: ("textDocument/inlineCompletion", inline(0, 0, uri="file:///dev/stdin"), -32602, "document not open"),
        14: ("textDocument/inlineCompletion", inline(0, 0, uri="file:///etc/passwd"), -32602, "document not open"),
        15: ("textDocument/inlineCompletion", inline(9, 0), -32602, "line 9 is outside"),
        16: ("textDocument/completion", "x", -32602, "invalid params"),
        17: ("textDocument/completion", {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 11}},
             -32602, "character 11 is outside line 1"),
    }
    for msg_id, (method, params, _, _) in cases.items():
        request(proto, msg_id, method, params)
    await settle()
    for msg_id, (_, _, want, text) in cases.items():
        got, message = code(out, msg_id)
        assert got == want and text in message, (msg_id, got, message)
    assert not [m for m in out.messages if m.get("method") == "window/showMessage"]


async def test_a_valid_request_is_answered_and_a_cancelled_one_gets_32800(edge):
    proto, out = edge
    initialize(proto, out)
    request(proto, 20, "textDocument/inlineCompletion", inline(1, 10))
    request(proto, 21, "textDocument/inlineCompletion", inline(1, 10))
    send(proto, {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 21}})
    send(proto, {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": {"bad": 1}}})
    await settle()
    assert out.reply(20)["result"] == {"items": []}  # no model: empty, but answered
    assert code(out, 21)[0] == -32800


async def test_unparseable_messages_are_answered_when_their_id_can_be_read(edge):
    proto, out = edge
    initialize(proto, out)
    assert proto.handle_body(b'{"jsonrpc": "2.0", "id": 30, "method": "x", ') is False
    assert code(out, 30)[0] == -32700
    n = len(out.messages)
    for bad in (b"[1, 2]", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"jsonrpc": "1.0", "id": 31}',
                b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "shutdown"}', b'{"jsonrpc": "2.0", "method": 5}'):
        proto.handle_body(bad)
    request(proto, 32, "x/y")
    assert len(out.messages) == n + 1 and code(out, 32)[0] == -32601  # noise got no reply, the request did


async def test_a_handler_exception_is_one_line_without_traceback(edge, monkeypatch):
    proto, out = edge
    initialize(proto, out)

    async def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(srv.server, "complete_at", broken)
    request(proto, 40, "textDocument/inlineCompletion", inline(1, 10))
    await settle()
    got, message = code(out, 40)
    assert got == -32603 and "RuntimeError: boom second line" in message


async def test_compress_arguments_are_checked_and_the_status_never_sticks(edge):
    proto, out = edge
    initialize(proto, out)
    srv.server.state = "ready"
    for msg_id, args in [(50, ["x"]), (51, [{"teacher": 5}]), (52, [{"force": "yes"}]), (53, [{"budgetMs": -1}]),
                         (54, [{"evalTasks": True}]), (55, [{"bogus": 1}]), (56, [{}, {}])]:
        request(proto, msg_id, "workspace/executeCommand", {"command": "pocketpilot.compress", "arguments": args})
    await settle()
    for msg_id in range(50, 57):
        got, message = code(out, msg_id)
        assert got == -32602 and "pocketpilot.compress" in message, message
    assert srv.server.state == "ready" and not srv.server.compressing


async def test_requests_after_shutdown_are_refused(edge):
    proto, out = edge
    initialize(proto, out)
    request(proto, 60, "shutdown")
    await settle()
    assert out.reply(60)["result"] is None
    request(proto, 61, "textDocument/inlineCompletion", inline(1, 10))
    assert code(out, 61)[0] == -32600


def test_rate_limited_log_lets_a_burst_through_then_one_note():
    import logging

    f = RateLimitFilter(burst=3, window_s=60)
    records = [logging.LogRecord("pocketpilot.protocol", logging.WARNING, "", 0, "ignored: %s", (f"x{i}",), None)
               for i in range(10)]
    passed = [r for r in records if f.filter(r)]
    assert len(passed) == 4 and "dropped" in passed[-1].msg
    long = logging.LogRecord("p", logging.WARNING, "", 0, "%s", ("a\nb" * 1000,), None)
    assert f.filter(long) and "\n" not in long.msg and len(long.msg) <= 500
