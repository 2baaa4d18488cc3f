"""The single-frame probes of issue 18: what a broken or hostile client may send.

Shared by ``tests/e2e/test_lsp_fuzz.py`` and ``benchmarks/server_edge.py``. Each probe is the
bytes sent after ``initialize`` and ``didOpen`` of :data:`URI` (text :data:`SOURCE`), and the
ids of the requests in them that must be answered.
"""

from __future__ import annotations

import json

from rawlsp import frame

URI = "file:///tmp/edge/main.py"
SOURCE = "def add(a, b):\n    return\n"


def short_frame() -> bytes:
    """A request frame whose Content-Length is 3 bytes short."""
    whole = frame(inline_request(URI, 1, 10, 9014))
    head, body = whole.split(b"\r\n\r\n", 1)
    return b"Content-Length: %d\r\n\r\n" % (len(body) - 3) + body


def inline_request(uri: str, line: int, ch: int, msg_id) -> dict:
    """A ``textDocument/inlineCompletion`` request as a dict."""
    return {"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion",
            "params": {"textDocument": {"uri": uri}, "position": {"line": line, "character": ch},
                       "context": {"triggerKind": 1}}}


#: name -> (bytes sent after initialize, ids of requests in them that must be answered)
PROBES: dict[str, tuple[bytes, list]] = {
    "Content-Length 10^20": (b"Content-Length: 100000000000000000000\r\n\r\n{}", []),
    "Content-Length 2^45": (b"Content-Length: 35184372088832\r\n\r\n{}", []),
    "Content-Length -1": (b"Content-Length: -1\r\n\r\n{}", []),
    "Content-Length abc": (b"Content-Length: abc\r\n\r\n{}", []),
    "no header": (json.dumps(inline_request(URI, 1, 10, 9001)).encode(), []),
    "header line without end": (b"Content-Length: 12" + b"x" * 100_000, []),
    "invalid JSON": (frame(b"{\"jsonrpc\": \"2.0\", \"id\": 9002, \"method\": "), [9002]),
    "non-UTF-8 body": (frame(b"{\"jsonrpc\": \"2.0\", \"id\": 9003, \"method\": \"x\xff\xfe\"}"), [9003]),
    "deep JSON": (frame(b"[" * 100_000 + b"]" * 100_000), []),
    "JSON array": (frame(b"[1, 2, 3]"), []),
    "unknown method, no params": (frame({"jsonrpc": "2.0", "id": 9004, "method": "foo/bar"}), [9004]),
    "never-opened /dev/stdin": (frame(inline_request("file:///dev/stdin", 0, 0, 9005)), [9005]),
    "never-opened /dev/zero": (frame(inline_request("file:///dev/zero", 0, 0, 9006)), [9006]),
    "never-opened /etc/passwd": (frame(inline_request("file:///etc/passwd", 0, 0, 9007)), [9007]),
    "line -1": (frame(inline_request(URI, -1, 0, 9008)), [9008]),
    "line 10^6": (frame(inline_request(URI, 10**6, 0, 9009)), [9009]),
    "missing context": (frame({"jsonrpc": "2.0", "id": 9010, "method": "textDocument/inlineCompletion",
                               "params": {"textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}}}),
                        [9010]),
    "params a string": (frame({"jsonrpc": "2.0", "id": 9011, "method": "textDocument/completion", "params": "x"}),
                        [9011]),
    "didChange bad range": (frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
        "textDocument": {"uri": URI, "version": 9}, "contentChanges": [
            {"range": {"start": {"line": 50, "character": 3}, "end": {"line": 2, "character": 0}}, "text": "x"}]}}), []),
    "didChange unknown URI": (frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
        "textDocument": {"uri": "file:///nope.py", "version": 2}, "contentChanges": [{"text": "x"}]}}), []),
    "cancel with a bad id": (frame({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": {"x": 1}}}), []),
    "compress [\"x\"]": (frame({"jsonrpc": "2.0", "id": 9012, "method": "workspace/executeCommand",
                               "params": {"command": "pocketpilot.compress", "arguments": ["x"]}}), [9012]),
    "compress [{teacher: 5}]": (frame({"jsonrpc": "2.0", "id": 9013, "method": "workspace/executeCommand",
                                      "params": {"command": "pocketpilot.compress", "arguments": [{"teacher": 5}]}}),
                               [9013]),
    "id an object": (frame({"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}), []),
}
PROBES["Content-Length 3 short"] = (short_frame(), [])


def has_traceback(reply: dict | None) -> bool:
    """True when a reply carries a Python traceback (in its message or data)."""
    text = str(reply)
    return "Traceback" in text or 'File "' in text or "File \\\"" in text


def actionable(message: dict) -> bool:
    """A pop-up the user must act on (no model yet: run `pocketpilot compress`), not protocol noise."""
    return "pocketpilot compress" in message["params"]["message"]
