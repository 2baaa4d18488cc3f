"""Benchmark (not a test): the server's edge figures of issue 18, with the tiny test teacher.

    nice -n 10 python benchmarks/server_edge.py [--home DIR] [--big-mb 5] [--storm 250]

Prints, one per line:
- single-frame probes, each in a fresh server: crashes, hangs (no answer to a request sent
  after the probe within 15 s), probe requests left unanswered, replies carrying a Python
  traceback, ``window/showMessage`` pop-ups caused by protocol errors;
- documents that poison others (a lone surrogate in one document, completions in another);
- with three ``--big-mb`` MB documents open, typing in one for 8 s: completion latency (in it
  and in a small document) and the worst wait of a cheap request sent every 20 ms (ms);
- a cancel storm: ``--storm`` inline requests each followed by ``$/cancelRequest``: time until
  the last is answered, beside one completion's time (ms).

``--home`` is a POCKETPILOT_HOME with an active tiny artifact (built there on first use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edge_probes import PROBES, SOURCE, URI, actionable, has_traceback, inline_request  # noqa: E402
from rawlsp import RawServer, frame  # noqa: E402


def tiny_home(path: Path) -> Path:
    """A POCKETPILOT_HOME with an active int8 artifact of the tiny test teacher (built once)."""
    import os

    if (path / "active.json").exists():
        return path
    from tiny import make_tiny_teacher

    from pocketpilot.compression import compress

    teacher = make_tiny_teacher(path.parent / (path.name + "-teacher"))
    os.environ["POCKETPILOT_HOME"] = str(path)
    compress(str(teacher), "int8", eval_tasks=0)
    return path


def run_probe(name: str, data: bytes, must_answer: list, empty_home: Path, tmp: Path) -> dict:
    """One probe in a fresh server (no model): what it did to the server."""
    srv = RawServer(empty_home, tmp / "probe.err")
    try:
        srv.initialize()
        srv.open(URI, SOURCE)
        before = len(srv.pop_ups())
        srv.write(data)
        alive = srv.alive(URI, timeout=10)
        answered = [srv.wait_reply(i, 5) for i in must_answer]
        replies = [r for r in srv.replies.values() if r]
        tracebacks = sum(has_traceback(r) for r in replies)
        pops = len([m for m in srv.pop_ups()[before:] if not actionable(m)])
        crashed = srv.proc.poll() is not None
    finally:
        srv.proc.kill()
        srv.close()
    return {"probe": name, "crashed": crashed, "hung": not crashed and not alive,
            "unanswered": sum(a is None for a in answered), "tracebacks": tracebacks, "pop_ups": pops}


def probes(empty_home: Path, tmp: Path) -> None:
    rows = []
    for name, (data, ids) in PROBES.items():
        rows.append(run_probe(name, data, ids, empty_home, tmp))
        bad = {k: v for k, v in rows[-1].items() if k != "probe" and v}
        print(f"  {name}: {bad or 'ok'}", flush=True)
    before_init = RawServer(empty_home, tmp / "probe.err")
    reply = before_init.call("textDocument/completion", {"textDocument": {"uri": URI},
                                                          "position": {"line": 0, "character": 0}}, timeout=10)
    before_init.proc.kill()
    before_init.close()
    print(f"  request before initialize: {reply and reply.get('error', {}).get('code')}, "
          f"traceback: {has_traceback(reply)}")
    total = {k: sum(r[k] for r in rows) for k in ("crashed", "hung", "unanswered", "tracebacks", "pop_ups")}
    print(f"single-frame probes ({len(rows)}): crashes {total['crashed']}, hangs {total['hung']}, "
          f"unanswered {total['unanswered']}, traceback replies {total['tracebacks']}, "
          f"protocol-error pop-ups {total['pop_ups']}")


def poisoning(home: Path, tmp: Path) -> None:
    srv = RawServer(home, tmp / "poison.err")
    try:
        srv.initialize()
        srv.open(URI, SOURCE)
        ok = srv.wait_reply(srv.inline(URI, 1, 10), 30)
        srv.open("file:///tmp/edge/bad.py", "def add(a, b):\n    return a + b  # \ud83d\n")
        after = srv.wait_reply(srv.inline(URI, 1, 10), 30)
        poisoned = int(after is None or "error" in after)
        print(f"documents that poison others: {poisoned}  (before: {ok.get('result') if ok else None}; "
              f"after: {after})")
    finally:
        srv.close()


def big_documents(home: Path, tmp: Path, mb: int) -> None:
    """Three ``mb`` MB documents open; completions in a small one; a cheap request every 20 ms."""
    srv = RawServer(home, tmp / "big.err")
    try:
        srv.initialize()
        srv.open(URI, SOURCE)
        chunk = "def add_numbers(a, b):\n    total = a + b\n    return total\n\n"
        big = chunk * (mb * 1_000_000 // len(chunk))
        for i in range(3):
            srv.open(f"file:///tmp/edge/big{i}.py", big)
        waits: list[float] = []
        stop = threading.Event()

        def pinger() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                if srv.wait_reply(srv.request("pocketpilot/ping", {}), 60) is None:
                    waits.append(60_000.0)
                    return
                waits.append((time.perf_counter() - t0) * 1e3)
                time.sleep(0.02)

        thread = threading.Thread(target=pinger)
        thread.start()
        lat = []
        t_end = time.perf_counter() + 8
        i = 0
        while time.perf_counter() < t_end:  # type in a big document; ask for completions in it and in a small one
            i += 1
            srv.notify("textDocument/didChange", {"textDocument": {"uri": "file:///tmp/edge/big0.py", "version": i + 1},
                                                  "contentChanges": [{"range": {"start": {"line": 1, "character": 4},
                                                                                "end": {"line": 1, "character": 4}},
                                                                      "text": "x"}]})
            uri, pos = ("file:///tmp/edge/big0.py", (1, 4 + i)) if i % 2 else (URI, (1, 10))
            t0 = time.perf_counter()
            srv.wait_reply(srv.inline(uri, *pos), 120)
            lat.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.05)
        stop.set()
        thread.join()
        print(f"three {mb} MB documents open, typing in one: completion median {statistics.median(lat):.0f} ms, "
              f"max {max(lat):.0f} ms ({len(lat)} completions, half in the big document); worst wait of other "
              f"requests {max(waits):.0f} ms, median {statistics.median(waits):.0f} ms ({len(waits)} pings)")
    finally:
        srv.close()


def storm(home: Path, tmp: Path, n: int) -> None:
    srv = RawServer(home, tmp / "storm.err")
    try:
        srv.initialize()
        text = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n" * 20
        srv.open(URI, text)
        one = []
        for i in range(5):
            t0 = time.perf_counter()
            srv.wait_reply(srv.inline(URI, 4 * (i + 1) - 1, 14), 60)
            one.append((time.perf_counter() - t0) * 1e3)
        ids = []
        t0 = time.perf_counter()
        for i in range(n):
            msg_id = f"storm-{i}"
            srv.write(frame(inline_request(URI, (i * 7) % 80, 0, msg_id)) +
                      frame({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": msg_id}}))
            ids.append(msg_id)
        ran_before = srv.stderr().count("completion in")
        answered = [srv.wait_reply(i, 120) for i in ids]
        drain = (time.perf_counter() - t0) * 1e3
        cancelled = sum(1 for a in answered if a and a.get("error", {}).get("code") == -32800)
        time.sleep(0.5)
        ran = srv.stderr().count("completion in") - ran_before
        print(f"cancel storm of {n}: drained in {drain:.0f} ms ({sum(a is None for a in answered)} unanswered, "
              f"{cancelled} answered -32800, {ran} ran the model to the end); "
              f"one completion: median {statistics.median(one):.0f} ms")
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(tempfile.gettempdir()) / "pp-edge-home")
    ap.add_argument("--big-mb", type=int, default=5)
    ap.add_argument("--storm", type=int, default=250)
    ap.add_argument("--only", choices=["probes", "poison", "big", "storm"])
    args = ap.parse_args()
    home = tiny_home(args.home)
    tmp = Path(tempfile.mkdtemp(prefix="pp-edge-"))
    empty = tmp / "empty-home"
    empty.mkdir()
    if args.only in (None, "probes"):
        probes(empty, tmp)
    if args.only in (None, "poison"):
        poisoning(home, tmp)
    if args.only in (None, "big"):
        big_documents(home, tmp, args.big_mb)
    if args.only in (None, "storm"):
        storm(home, tmp, args.storm)


if __name__ == "__main__":
    main()
