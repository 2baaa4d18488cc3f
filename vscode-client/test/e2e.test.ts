/**
 * End to end: the extension's own client configuration (src/config, src/interpreter) against the
 * real Python server over stdio, with the tiny model. Needs a Python with pocketpilot:
 * POCKETPILOT_PYTHON (default python3). Skipped when that interpreter lacks pocketpilot.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  createProtocolConnection,
  ExecuteCommandRequest,
  InitializeRequest,
  InitializedNotification,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  type InlineCompletionList,
  type ProtocolConnection,
  ShowMessageNotification,
  type ShowMessageParams,
  DidOpenTextDocumentNotification,
  ShutdownRequest,
  ExitNotification,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-languageserver-protocol/node";

import { documentSelector, initializationOptions, serverCommand } from "../src/config";
import { candidates, describeTried, discover } from "../src/interpreter";
import type { ServerStatus } from "../src/status";

const SOURCE = "def add(a, b):\n    return\n";
const URI = "file:///tmp/pocketpilot-e2e/example.py";
const HELPER = join(__dirname, "..", "..", "test", "make_tiny_model.py");

interface Session {
  proc: ChildProcess;
  conn: ProtocolConnection;
  statuses: ServerStatus[];
  messages: ShowMessageParams[];
  progress: { token: string | number; value: { kind: string; message?: string; percentage?: number } }[];
  stderr: string[];
}

let python: string[] | undefined;
let work = "";
let teacher = "";
let readyHome = "";

async function startServer(home: string, settings: Record<string, unknown> = {}): Promise<Session> {
  const { command, args } = serverCommand(python!);
  const proc = spawn(command, args, { env: { ...process.env, POCKETPILOT_HOME: home }, stdio: ["pipe", "pipe", "pipe"] });
  const stderr: string[] = [];
  proc.stderr!.on("data", (d) => stderr.push(String(d)));
  const conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
  const s: Session = { proc, conn, statuses: [], messages: [], progress: [], stderr };
  conn.onNotification("pocketpilot/status", (p: ServerStatus) => { s.statuses.push(p); });
  conn.onNotification(ShowMessageNotification.type, (p) => { s.messages.push(p); });
  conn.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    conn.onProgress(WorkDoneProgress.type, token, (value) => { s.progress.push({ token, value }); });
  });
  conn.listen();
  const { options } = initializationOptions((k) => settings[k]);
  const result = await conn.sendRequest(InitializeRequest.type, {
    processId: process.pid,
    rootUri: null,
    initializationOptions: options,
    capabilities: {
      textDocument: { inlineCompletion: { dynamicRegistration: false }, completion: {} },
      window: { workDoneProgress: true },
    },
  });
  assert.ok(result.capabilities.inlineCompletionProvider, "server offers inline completion");
  assert.ok(result.capabilities.executeCommandProvider?.commands.includes("pocketpilot.compress"));
  await conn.sendNotification(InitializedNotification.type, {});
  return s;
}

async function stopServer(s: Session): Promise<void> {
  try {
    await s.conn.sendRequest(ShutdownRequest.type);
    await s.conn.sendNotification(ExitNotification.type);
  } catch {
    // already gone
  }
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => { s.proc.kill(); resolve(); }, 5000);
    s.proc.on("exit", () => { clearTimeout(timer); resolve(); });
    if (s.proc.exitCode !== null) { clearTimeout(timer); resolve(); }
  });
  s.conn.dispose();
}

async function waitState(s: Session, state: string, timeoutMs = 120_000): Promise<ServerStatus> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const last = s.statuses.at(-1);
    if (last?.state === state) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${state} status: ${JSON.stringify(s.statuses)}\n${s.stderr.join("")}`);
}

async function inline(s: Session): Promise<string[]> {
  await s.conn.sendNotification(DidOpenTextDocumentNotification.type, {
    textDocument: { uri: URI, languageId: "python", version: 1, text: SOURCE },
  });
  const result = await s.conn.sendRequest(InlineCompletionRequest.type, {
    textDocument: { uri: URI },
    position: { line: 1, character: 10 },
    context: { triggerKind: InlineCompletionTriggerKind.Invoked },
  });
  const items = Array.isArray(result) ? result : (result as InlineCompletionList | null)?.items ?? [];
  return items.map((i) => (typeof i.insertText === "string" ? i.insertText : i.insertText.value));
}

describe("e2e: real server over stdio", { timeout: 600_000 }, () => {
  before(async () => {
    const setting = process.env.POCKETPILOT_PYTHON || "python3";
    const found = await discover(candidates({ setting }));
    if (!found.found) {
      throw new Error(`POCKETPILOT_PYTHON=${setting} cannot import pocketpilot:\n${describeTried(found)}`);
    }
    python = found.found.command;
    work = mkdtempSync(join(tmpdir(), "pocketpilot-vscode-e2e-"));
    teacher = join(work, "teacher");
    readyHome = join(work, "ready-home");
    // One torch thread: the tiny model trains faster so than with threads fighting for busy cores.
    const env = { ...process.env, OMP_NUM_THREADS: process.env.OMP_NUM_THREADS ?? "1" };
    execFileSync(python[0], [...python.slice(1), HELPER, teacher, readyHome], { env, stdio: ["ignore", "pipe", "inherit"], timeout: 540_000 });
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("inline completion from the active artifact, with the extension's settings", async () => {
    const s = await startServer(readyHome, { maxNewTokens: 16, prefixTokens: 256, artifact: "" });
    try {
      const status = await waitState(s, "ready");
      assert.ok(status.model, "status names the model");
      assert.deepEqual(await inline(s), [" a + b"]);
      const after = s.statuses.at(-1)!;
      assert.equal(typeof after.lastLatencyMs, "number", "status carries the last latency");
      assert.ok(!s.stderr.join("").includes("unknown setting"), "server knows every setting we send");
    } finally {
      await stopServer(s);
    }
  });

  test("no model: hint, empty answers, then compress command with progress serves the model", async () => {
    const s = await startServer(join(work, "empty-home"));
    try {
      await waitState(s, "no-model");
      assert.ok(s.messages.some((m) => m.message.includes("pocketpilot compress")), JSON.stringify(s.messages));
      assert.deepEqual(await inline(s), []);
      const result = (await s.conn.sendRequest(ExecuteCommandRequest.type, {
        command: "pocketpilot.compress",
        arguments: [{ teacher, evalTasks: 0 }],
      })) as { ok: boolean; artifact_id: string; artifact_bytes: number };
      assert.ok(result.ok && result.artifact_bytes > 0, JSON.stringify(result));
      const kinds = s.progress.map((p) => p.value.kind);
      assert.equal(kinds[0], "begin");
      assert.equal(kinds.at(-1), "end");
      assert.ok(kinds.includes("report"), kinds.join(","));
      assert.ok(s.statuses.some((st) => st.state === "compressing"));
      await waitState(s, "ready");
      assert.deepEqual(await inline(s), [" a + b"]);
    } finally {
      await stopServer(s);
    }
  });

  test("document selector from the default settings covers every language", () => {
    assert.deepEqual(documentSelector(["*"]), [{ scheme: "file" }, { scheme: "untitled" }]);
  });
});
