"""Benchmark (not a test): replay typing against the real server over stdio.

``pocketpilot bench typing`` picks a few stretches of real code (the Python standard library
by default), opens each file in the server with the stretch removed (the code after it stays
as the suffix) and types the stretch back, one character per keystroke. An editor's
auto-indent is simulated: a newline brings the next line's indentation with it.

Timing model (closed loop, so figures measure the server, not a queue): the typist types at
``cps`` characters per second and the client debounces ``debounce_ms``; with the defaults
(10 characters per second, 100 ms) every gap between keystrokes reaches the debounce, so a
pause, and with it an inline-completion request, follows every keystroke. The next keystroke
comes one typing interval after the request or when the answer arrives, whichever is later.

Each file is opened as an editor opens it: ``didOpen``, then ``pocketpilot/didFocus`` with the
cursor where typing starts (what the VS Code extension sends), then a pause (``open_pause_s``,
default 2 s) before the first keystroke, during which the server may warm the document up.

Reported: request-to-response latency p50/p95 (ms), also without each document's first request
(warm) and for the first requests alone; tokens prefilled per request p50/p95 (prompt tokens
the model ran, from the status notification); KV-cache hit rate (requests that reused cached
keys/values, the previous suggestion or a remembered one) and mean prompt tokens reused;
typed-ahead and remembered hits (answered without the model); and the acceptance proxy, the
share of shown suggestions whose first line is a prefix of what the user typed next. It runs
once with reuse on (the server defaults), once with ``kvCacheMb: 0`` (reuse off) and, with
``background_load`` N, once more with N CPU-bound processes running beside the server,
reporting the slowdown against the quiet run.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from pocketpilot.corpus import default_source_dir, source_files
from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.line_completion import percentile


@dataclass(frozen=True)
class Stretch:
    """Lines of a file to type back.

    Attributes:
        path: the source file.
        before: file text before the stretch (ends with a newline or is empty).
        typed: the text to type (whole lines, newline-terminated).
        after: file text after the stretch.
    """

    path: Path
    before: str
    typed: str
    after: str


def pick_stretches(root: Path | None = None, files: int = 3, lines: int = 3, seed: int = 0) -> list[Stretch]:
    """Choose ``files`` stretches of ``lines`` consecutive code lines, deterministically for ``seed``.

    A stretch starts after at least 20 lines of context, and each of its lines has code (no
    blank or comment-only lines), at most 100 characters.

    Raises:
        PocketPilotError: the folder is missing or has no file with such a stretch.
    """
    root = Path(root) if root else default_source_dir()
    if not root.is_dir():
        raise PocketPilotError(f"source folder not found: {root}")
    candidates = source_files(root)
    rng = random.Random(seed)
    rng.shuffle(candidates)
    out: list[Stretch] = []
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        all_lines = text.split("\n")
        starts = [i for i in range(20, len(all_lines) - lines)
                  if all(_is_code(ln) for ln in all_lines[i : i + lines])]
        if not starts:
            continue
        i = rng.choice(starts)
        out.append(Stretch(path, "".join(ln + "\n" for ln in all_lines[:i]),
                           "".join(ln + "\n" for ln in all_lines[i : i + lines]),
                           "\n".join(all_lines[i + lines :])))
        if len(out) == files:
            return out
    if not out:
        raise PocketPilotError(f"no file under {root} has {lines} consecutive code lines to type")
    return out


def _is_code(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#") and len(line) <= 100 and "\t" not in line


def keystrokes(typed: str) -> list[str]:
    """Split text into keystrokes: one character each, a newline together with the next line's indent."""
    keys: list[str] = []
    i = 0
    while i < len(typed):
        if typed[i] == "\n":
            j = i + 1
            while j < len(typed) and typed[j] == " ":
                j += 1
            keys.append(typed[i:j])
            i = j
        else:
            keys.append(typed[i])
            i += 1
    return keys


async def replay(stretches: list[Stretch], settings: dict, cps: float = 10.0, debounce_ms: float = 100.0,
                 python: str = sys.executable, progress: Callable[[str], None] | None = None,
                 open_pause_s: float = 2.0) -> dict:
    """Type every stretch into one server started with ``settings`` as initializationOptions,
    pausing ``open_pause_s`` seconds after opening each file.

    Returns:
        ``{"requests", "latency_ms_p50", "latency_ms_p95", "latency_ms_mean", "warm_latency_ms_p50",
        "warm_latency_ms_p95" (without each document's first request), "first_latency_ms_p50",
        "first_latency_ms_max", "prefilled_tokens_p50", "prefilled_tokens_p95", "model_runs"
        (requests not answered typed-ahead or remembered), "model_run_latency_ms_p50",
        "cache_hit_rate", "reused_tokens_mean", "typed_ahead_hits", "remembered_hits", "cut",
        "suggestions", "accepted", "acceptance", "model", "log"}`` (latencies in ms, rates 0..1,
        token counts in tokens); ``log`` has one ``{"ms", "first_in_document", "typed_ahead",
        "remembered", "reused", "prefilled", "line", "suggestion", "next"}`` per request.

    Raises:
        PocketPilotError: the server has no model to serve.
    """
    session = _Session(LanguageClient("pocketpilot-bench", "0"), 1.0 / cps, debounce_ms, open_pause_s)
    await session.client.start_io(python, "-m", "pocketpilot", "serve")
    try:
        model = await session.initialize(settings)
        for n, st in enumerate(stretches):
            keys = await session.type_stretch(n, st)
            if progress:
                progress(f"{st.path.name}: {len(keys)} keystrokes typed")
        await session.client.shutdown_async(None)
        session.client.exit(None)
    finally:
        await session.client.stop()
    return session.tally.summary(model)


@dataclass
class _Tally:
    """What the replay counted: one latency (ms) and one log row per request, and the totals."""

    latencies: list[float] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    hits: int = 0  # requests that reused cached keys/values or the previous suggestion
    reused: int = 0  # prompt tokens reused, summed over requests
    ahead: int = 0  # requests answered typed-ahead
    remembered: int = 0  # requests answered from the suggestion cache
    cut: int = 0  # requests whose decoding the time budget cut
    shown: int = 0  # non-empty suggestions
    accepted: int = 0  # shown suggestions whose first line starts what was typed next

    def add(self, elapsed_s: float, status, suggestion: str, line: str, rest_of_line: str, first_in_document: bool) -> None:
        """Count one request: its wall time (s), the status the server sent for it (or ``None``),
        its suggestion, the line typed so far and the rest of the line the user typed next."""
        self.latencies.append(elapsed_s * 1e3)
        if status is not None:
            self.hits += bool(status.cacheHit)
            self.reused += status.reusedTokens or 0
            self.ahead += bool(getattr(status, "typedAhead", False))
            self.remembered += bool(getattr(status, "remembered", False))
            self.cut += bool(getattr(status, "cut", False))
        first = suggestion.split("\n", 1)[0]
        if first.strip():
            self.shown += 1
            self.accepted += rest_of_line.startswith(first)
        self.log.append({"ms": round(elapsed_s * 1e3, 1), "first_in_document": first_in_document,
                         "typed_ahead": bool(status and status.typedAhead),
                         "remembered": bool(status and getattr(status, "remembered", False)),
                         "reused": status.reusedTokens if status else None,
                         "prefilled": getattr(status, "prefilledTokens", None) if status else None, "line": line,
                         "suggestion": suggestion, "next": rest_of_line})

    def summary(self, model) -> dict:
        """The figures :func:`replay` returns."""
        latencies, log = self.latencies, self.log
        n = len(latencies)
        warm = [x["ms"] for x in log if not x["first_in_document"]]
        first = [x["ms"] for x in log if x["first_in_document"]]
        computed = [x["ms"] for x in log if not (x["typed_ahead"] or x["remembered"])]
        prefilled = [x["prefilled"] or 0 for x in log if x["prefilled"] is not None or x["typed_ahead"]]
        return {
            "model": model,
            "requests": n,
            "latency_ms_p50": _percentile(latencies, 50),
            "latency_ms_p95": _percentile(latencies, 95),
            "latency_ms_mean": round(statistics.fmean(latencies), 1) if n else None,
            "warm_latency_ms_p50": _percentile(warm, 50),
            "warm_latency_ms_p95": _percentile(warm, 95),
            "first_latency_ms_p50": _percentile(first, 50),
            "first_latency_ms_max": max(first) if first else None,
            "prefilled_tokens_p50": _percentile(prefilled, 50),
            "prefilled_tokens_p95": _percentile(prefilled, 95),
            "model_runs": len(computed),
            "model_run_latency_ms_p50": _percentile(computed, 50),
            "cache_hit_rate": round(self.hits / n, 3) if n else None,
            "reused_tokens_mean": round(self.reused / n, 1) if n else None,
            "typed_ahead_hits": self.ahead,
            "remembered_hits": self.remembered,
            "cut": self.cut,
            "suggestions": self.shown,
            "accepted": self.accepted,
            "acceptance": round(self.accepted / self.shown, 3) if self.shown else None,
            "log": log,
        }


class _Session:
    """A bench client talking to one server: its status notifications, typing pace and tally.

    Args:
        client: a not yet started pygls ``LanguageClient``.
        gap_s: one typing interval (s).
        debounce_ms: the client's debounce before each request (ms).
    """

    def __init__(self, client: LanguageClient, gap_s: float, debounce_ms: float, open_pause_s: float = 0.0) -> None:
        self.client, self.gap_s, self.debounce_ms, self.open_pause_s = client, gap_s, debounce_ms, open_pause_s
        self.statuses: list = []
        self.ready = asyncio.Event()
        self.tally = _Tally()

        @client.feature("pocketpilot/status")
        def on_status(params) -> None:
            self.statuses.append(params)
            if params.state in ("ready", "no-model", "error"):
                self.ready.set()

    async def initialize(self, settings: dict):
        """Initialize the server with ``settings`` and wait (up to 900 s) until it has loaded its model.

        Returns the model the server reports. Raises PocketPilotError: it has none.
        """
        caps = types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities()))
        await self.client.initialize_async(types.InitializeParams(capabilities=caps, initialization_options=settings))
        self.client.initialized(types.InitializedParams())
        await asyncio.wait_for(self.ready.wait(), 900)
        if self.statuses[-1].state != "ready":
            raise PocketPilotError(f"the server has no model: {self.statuses[-1].message}")
        return self.statuses[-1].model

    async def type_stretch(self, n: int, st: Stretch) -> list[str]:
        """Open ``st``'s file without the stretch, type the stretch back (a request after each
        keystroke but the last), close it; returns the keystrokes."""
        uri = st.path.resolve().as_uri() + f"#bench{n}"
        version = 1
        text = st.before + "\n" + st.after if st.after else st.before
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=version, text=text)))
        self.client.protocol.notify("pocketpilot/didFocus", {  # as the VS Code extension does
            "textDocument": {"uri": uri}, "position": {"line": st.before.count("\n"), "character": 0}})
        await asyncio.sleep(self.open_pause_s)
        done = ""
        keys = keystrokes(st.typed)
        for k, key in enumerate(keys):
            done += key
            version += 1
            self.client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangeWholeDocument(
                    text=st.before + done + "\n" + st.after)]))
            if done == st.typed:
                break  # the stretch is typed; nothing to suggest inside it any more
            await asyncio.sleep(self.debounce_ms / 1000)
            elapsed = await self._request(uri, st, done, first_in_document=k == 0)
            await asyncio.sleep(max(0.0, self.gap_s - self.debounce_ms / 1000 - elapsed))
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))
        return keys

    async def _request(self, uri: str, st: Stretch, done: str, first_in_document: bool) -> float:
        """Ask for an inline completion at the end of ``done`` and tally it; returns its wall time (s)."""
        line_no = st.before.count("\n") + done.count("\n")
        col = len(done.rsplit("\n", 1)[-1])
        seen = len(self.statuses)
        t0 = time.perf_counter()
        result = await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line_no, character=col),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        elapsed = time.perf_counter() - t0
        status = self.statuses[-1] if len(self.statuses) > seen else None
        items = result.items if hasattr(result, "items") else (result or [])
        suggestion = items[0].insert_text if items else ""
        if isinstance(suggestion, types.StringValue):
            suggestion = suggestion.value
        self.tally.add(elapsed, status, suggestion, done.rsplit("\n", 1)[-1],
                       st.typed[len(done):].split("\n", 1)[0], first_in_document)
        return elapsed


def _percentile(values: list[float], q: float) -> float | None:
    """:func:`~pocketpilot.evaluation.line_completion.percentile` rounded to 0.1 ms, ``None`` for no values."""
    return round(percentile(values, q), 1) if values else None


def run_typing_bench(root: Path | None = None, files: int = 3, lines: int = 3, seed: int = 0, cps: float = 10.0,
                     debounce_ms: float = 100.0, artifact: str | None = None, reuse_off: bool = True,
                     settings: dict | None = None, progress: Callable[[str], None] | None = None,
                     open_pause_s: float = 2.0, background_load: int = 0) -> dict:
    """Replay typing with reuse on, (``reuse_off``) off and (``background_load`` > 0) on again
    beside that many CPU-bound processes; see the module docstring.

    ``settings`` are extra server settings (``initializationOptions``, camelCase) for every run.

    Returns:
        ``{"stretches": [{"path", "chars"}], "on": {...}, "off": {...} or None, "loaded": {...} or
        None, "p50_ratio_off_over_on": float or None, "loaded_over_quiet": {"p50", "p95"} or None}``
        with the figures of :func:`replay`.
    """
    stretches = pick_stretches(root, files, lines, seed)
    base = {**(settings or {}), **({"artifact": artifact} if artifact else {})}
    out: dict = {"stretches": [{"path": str(s.path), "chars": len(s.typed)} for s in stretches],
                 "cps": cps, "debounce_ms": debounce_ms, "open_pause_s": open_pause_s, "settings": base,
                 "background_load": background_load}
    run = lambda opts: asyncio.run(replay(stretches, opts, cps, debounce_ms, progress=progress,  # noqa: E731
                                          open_pause_s=open_pause_s))
    out["on"] = run(base)
    out["off"] = run({**base, "kvCacheMb": 0}) if reuse_off else None
    out["loaded"] = None
    if background_load > 0:
        with busy_processes(background_load):
            out["loaded"] = run(base)
    on, off, loaded = out["on"], out["off"], out["loaded"]
    out["p50_ratio_off_over_on"] = round(off["latency_ms_p50"] / on["latency_ms_p50"], 2) \
        if off and on["latency_ms_p50"] else None
    out["loaded_over_quiet"] = {q: round(loaded[f"latency_ms_{q}"] / on[f"latency_ms_{q}"], 2)
                                for q in ("p50", "p95") if on[f"latency_ms_{q}"]} if loaded else None
    return out


class busy_processes:
    """Context manager: ``n`` CPU-bound Python processes (a busy loop each) for the block's duration.

    Raises:
        ValueError: ``n`` is negative.
    """

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"background load must be >= 0 processes, got {n}")
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "busy_processes":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
