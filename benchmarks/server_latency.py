"""Benchmark (not a test): one-line completion latency through the real server over stdio.

Starts `pocketpilot serve`, opens a file, waits for the model, then sends N inline-completion
requests at one position and prints the median and p95 request-to-response time (ms).

    python benchmarks/server_latency.py FILE --line L --col C [--n 20] [--as-typed]
    (1-based positions and --as-typed as in `pocketpilot complete`; the active artifact is served)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--line", type=int, required=True)
    ap.add_argument("--col", type=int, required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--as-typed", action="store_true", help="open the file without the rest of the cursor's line")
    args = ap.parse_args()
    path = Path(args.file).resolve()
    client = LanguageClient("bench", "0")
    ready = asyncio.Event()

    @client.feature("pocketpilot/status")
    def status(params):
        if params.state in ("ready", "no-model"):
            ready.set()

    await client.start_io(sys.executable, "-m", "pocketpilot", "serve")
    caps = types.ClientCapabilities(text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities()))
    await client.initialize_async(types.InitializeParams(capabilities=caps))
    client.initialized(types.InitializedParams())
    await asyncio.wait_for(ready.wait(), 600)
    uri = path.as_uri()
    lines = path.read_text().split("\n")
    if args.as_typed:
        lines[args.line - 1] = lines[args.line - 1][: args.col - 1]
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text="\n".join(lines))))
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=args.line - 1, character=args.col - 1),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    times, text = [], None
    for i in range(args.n + 1):
        t0 = time.perf_counter()
        result = await client.text_document_inline_completion_async(params)
        if i:  # the first request warms up
            times.append((time.perf_counter() - t0) * 1e3)
        items = result.items if hasattr(result, "items") else result
        text = items[0].insert_text if items else ""
    times.sort()
    print(f"server: {args.n} inline completions, median {statistics.median(times):.1f} ms, "
          f"p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms; text {text!r}")
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()


if __name__ == "__main__":
    asyncio.run(main())
