// UI test: the packaged extension (../pocketpilot.vsix) in a real VS Code (code-server 4.139.1 =
// VS Code 1.139.1, on the Node 24 binary from the npm package `node`), driven by playwright-core
// and Debian's chromium (headless). It opens a Python file, types, waits for the ghost text from
// the real server (tiny model), accepts it with Tab and checks the saved buffer; then applies the
// "PocketPilot: Write docstring" code action once through Refactor... and checks the saved buffer.
//
// Setup and run (see ../README.md): `npm run setup && npm test`.
// Environment: POCKETPILOT_PYTHON (an interpreter with pocketpilot; default python3),
// CHROMIUM (default /usr/bin/chromium; the tests are skipped when it is missing),
// UI_VERBOSE=1 (log the steps), UI_SCREENSHOT=path.png (screenshot on failure and at the end).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const VSIX = join(here, "..", "pocketpilot.vsix");
const CODE_SERVER = join(here, "node_modules", "code-server", "out", "node", "entry.js");
let PYTHON = process.env.POCKETPILOT_PYTHON || "python3"; // made absolute in before()
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SKIP = existsSync(CHROMIUM) ? false
  : `chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM`;
if (SKIP) console.error(`ui-test: SKIPPED: ${SKIP}`);

// The file as opened, what the test types at the end of line 2, and the result before the suggestion.
const BEFORE = "def add(a, b):\n    \n";
const TYPED = "return";
const TYPED_SOURCE = "def add(a, b):\n    return\n";

let work, userData, server, browser, page, expected;
const serverLog = [];

const step = (what) => process.env.UI_VERBOSE && console.error(`[ui-test ${new Date().toISOString()}] ${what}`);

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

/** The extension's output channel as code-server writes it (empty until the first line). */
function extensionLog() {
  const root = join(userData, "logs");
  for (const session of existsSync(root) ? readdirSync(root).sort().reverse() : []) {
    for (const host of readdirSync(join(root, session)).filter((d) => d.startsWith("exthost"))) {
      const file = join(root, session, host, "pocketpilot.pocketpilot", "PocketPilot.log");
      if (existsSync(file)) return readFileSync(file, "utf8");
    }
  }
  return "";
}

async function until(what, fn, timeoutMs = 120_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value) return value;
    if (Date.now() > end) {
      if (process.env.UI_SCREENSHOT) await page?.screenshot({ path: process.env.UI_SCREENSHOT }).catch(() => {});
      throw new Error(`timed out waiting for ${what}\n--- PocketPilot log:\n${extensionLog().slice(-3000)}`
        + `\n--- code-server:\n${serverLog.join("").slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe("VS Code UI (code-server + chromium)", { skip: SKIP }, () => {
  before(async () => {
    const major = Number(process.versions.node.split(".")[0]);
    assert.ok(major >= 24, `code-server needs Node 24, this is ${process.version}: run \`npm run setup\` then \`npm test\``);
    assert.ok(existsSync(CODE_SERVER), `${CODE_SERVER} is missing: run \`npm run setup\``);
    assert.ok(existsSync(VSIX), `${VSIX} is missing: run \`npm run package\` in vscode-client`);
    const { chromium } = await import("playwright-core");

    // An absolute interpreter for pocketpilot.pythonPath: code-server runs without PYTHON's folder on PATH.
    PYTHON = String(execFileSync(PYTHON, ["-c", "import sys; print(sys.executable)"])).trim();
    work = mkdtempSync(join(tmpdir(), "pocketpilot-ui-"));
    const home = join(work, "pp-home");
    step("building the tiny model");
    execFileSync(PYTHON, [join(here, "..", "test", "make_tiny_model.py"), join(work, "teacher"), home],
      { env: { ...process.env, OMP_NUM_THREADS: "1" }, stdio: ["ignore", "ignore", "inherit"], timeout: 540_000 });
    // No active artifact: the server has a model only if it reads pocketpilot.artifact from the settings.
    const artifact = JSON.parse(readFileSync(join(home, "active.json"), "utf8")).artifact;
    rmSync(join(home, "active.json"));

    userData = join(work, "user-data");
    const extensions = join(work, "extensions");
    const project = join(work, "project");
    mkdirSync(join(userData, "User"), { recursive: true });
    mkdirSync(join(userData, "Machine"), { recursive: true });
    mkdirSync(project);
    writeFileSync(join(project, "example.py"), BEFORE);
    writeFileSync(join(work, "typed.py"), TYPED_SOURCE);

    step("computing the expected completion with `pocketpilot complete`");
    const out = execFileSync(PYTHON, ["-m", "pocketpilot", "complete", "--json", "--model", artifact, "--max-new-tokens", "48",
      "--line", "2", "--col", String(4 + TYPED.length + 1), join(work, "typed.py")],
    { env: { ...process.env, POCKETPILOT_HOME: home, OMP_NUM_THREADS: "1" }, stdio: ["ignore", "pipe", "inherit"], timeout: 120_000 });
    expected = JSON.parse(String(out)).text;
    assert.ok(expected.trim(), `the tiny model completes ${JSON.stringify(TYPED_SOURCE)} with some text: ${out}`);
    step(`expected completion ${JSON.stringify(expected)}`);

    // Settings in code-server's user-data-dir. User/settings.json holds the window-scoped ones,
    // pocketpilot.artifact included. code-server is a remote window, so VS Code applies
    // machine-scoped settings such as pocketpilot.pythonPath (machine-overridable) only from the
    // remote's settings, Machine/settings.json, and ignores them in User/settings.json.
    writeFileSync(join(userData, "User", "settings.json"), JSON.stringify({
      "pocketpilot.artifact": artifact,
      "editor.inlineSuggest.enabled": true,
      "editor.quickSuggestions": { other: false, comments: false, strings: false },
      "editor.suggestOnTriggerCharacters": false,
      "files.autoSave": "off",
      "workbench.startupEditor": "none",
      "workbench.secondarySideBar.defaultVisibility": "hidden",
      "workbench.tips.enabled": false,
      "security.workspace.trust.enabled": false,
      "telemetry.telemetryLevel": "off",
      "extensions.autoUpdate": false,
      "extensions.autoCheckUpdates": false,
    }));
    writeFileSync(join(userData, "Machine", "settings.json"), JSON.stringify({ "pocketpilot.pythonPath": PYTHON }));

    const common = ["--user-data-dir", userData, "--extensions-dir", extensions];
    step("installing the vsix");
    execFileSync(process.execPath, [CODE_SERVER, ...common, "--install-extension", VSIX], { stdio: ["ignore", "ignore", "inherit"] });

    step("starting code-server");
    const port = await freePort();
    // Without PYTHON's folder (an activated venv) on PATH, the extension's fallback to python3 on
    // PATH cannot hide a pythonPath setting it did not read.
    const drop = new Set([dirname(PYTHON), process.env.VIRTUAL_ENV ? join(process.env.VIRTUAL_ENV, "bin") : ""]);
    const PATH = (process.env.PATH ?? "").split(delimiter).filter((p) => !drop.has(resolve(p || "."))).join(delimiter);
    server = spawn(process.execPath, [CODE_SERVER, ...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`,
      "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override", project],
    { env: { ...process.env, PATH, VIRTUAL_ENV: "", POCKETPILOT_HOME: home, OMP_NUM_THREADS: "1" }, stdio: ["ignore", "pipe", "pipe"] });
    server.stdout.on("data", (d) => serverLog.push(String(d)));
    server.stderr.on("data", (d) => serverLog.push(String(d)));
    await until("code-server to listen", async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok, 60_000);

    step("launching chromium");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-default-apps"],
    });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    step("opening the workbench");
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(project)}`);
    await page.locator(".monaco-workbench").waitFor({ timeout: 120_000 });
  });

  after(async () => {
    if (process.env.UI_SCREENSHOT) await page?.screenshot({ path: process.env.UI_SCREENSHOT }).catch(() => {});
    await browser?.close();
    if (server && server.exitCode === null) {
      // Wait for code-server to exit: it writes to its user-data-dir until then.
      const exited = new Promise((r) => server.once("exit", r));
      server.kill();
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    }
    if (work && !process.env.UI_KEEP) rmSync(work, { recursive: true, force: true });
    else if (work) console.error(`ui-test: kept ${work}`);
  });

  test("the server starts once, with pythonPath and artifact from the settings", { timeout: 180_000 }, async () => {
    // The status-bar item names the model when the server is ready.
    const item = page.locator(".statusbar-item", { hasText: "PocketPilot" });
    step("waiting for the ready status");
    await until("a ready PocketPilot status", async () => /PocketPilot\s+\S*int8/.test(await item.first().innerText()));
    const log = await until("the server start in the PocketPilot log", async () => /\] starting /.test(extensionLog()) && extensionLog());
    const starts = log.split("\n").filter((l) => /\] starting /.test(l));
    assert.equal(starts.length, 1, `one server start:\n${log}`);
    assert.ok(starts[0].includes(`starting ${PYTHON} -m pocketpilot serve`), `first start uses pocketpilot.pythonPath:\n${log}`);
    const artifact = JSON.parse(readFileSync(join(userData, "User", "settings.json"), "utf8"))["pocketpilot.artifact"];
    assert.ok(starts[0].includes(`"artifact":"${artifact}"`), `first start sends pocketpilot.artifact:\n${log}`);
    assert.ok(!log.includes("restarting server"), `no restart:\n${log}`);
  });

  test("typing shows the server's ghost text; Tab inserts exactly that text", { timeout: 180_000 }, async () => {
    step("opening example.py");
    await page.locator(".explorer-folders-view .monaco-list-row", { hasText: "example.py" }).dblclick();
    const editor = page.locator(".editor-group-container .monaco-editor");
    const lines = editor.locator(".view-lines").filter({ visible: true }).first();
    const nbsp = (t) => t.replace(/\u00a0/g, " "); // Monaco renders spaces as NBSP
    await until("example.py in the editor", async () => nbsp(await lines.innerText()).includes("def add"), 60_000);
    await lines.locator(".view-line").nth(1).click();
    await page.keyboard.press("End");
    step(`typing ${JSON.stringify(TYPED)}`);
    await page.keyboard.type(TYPED, { delay: 80 });

    // Monaco renders ghost text as spans (one per syntax token) after the cursor.
    const ghost = editor.locator(".ghost-text-decoration, .ghost-text");
    const ghostText = async () => nbsp((await ghost.allTextContents()).join(""));
    step("waiting for the ghost text");
    const shown = await until(`ghost text ${JSON.stringify(expected)}`, async () => (await ghostText()) === expected && expected, 90_000);
    assert.equal(shown, expected);
    if (process.env.UI_SCREENSHOT) await page.screenshot({ path: process.env.UI_SCREENSHOT.replace(/(\.png)?$/, "-ghost.png") });

    step("accepting with Tab and saving");
    await page.keyboard.press("Tab");
    await until("the ghost text to go", async () => (await ghost.count()) === 0, 10_000);
    await page.keyboard.press("Control+s");
    const file = join(work, "project", "example.py");
    const want = `def add(a, b):\n    ${TYPED}${expected}\n`;
    await until("the saved buffer", async () => readFileSync(file, "utf8") === want, 20_000)
      .catch((err) => assert.fail(`${err.message}\nbuffer on disk: ${JSON.stringify(readFileSync(file, "utf8"))}, want ${JSON.stringify(want)}`));

    const status = await page.locator(".statusbar-item", { hasText: "PocketPilot" }).first().innerText();
    assert.match(status, /\d+ ms|\d\.\d s/, `status bar shows the last latency: ${status}`);
  });

  test("Refactor... offers PocketPilot: Write docstring; choosing it inserts the server's docstring", { timeout: 180_000 }, async () => {
    // What the server writes for the saved buffer: the same runtime functions, in a child Python.
    const file = join(work, "project", "example.py");
    const source = readFileSync(file, "utf8");
    const script = "import json, sys\n"
      + "from pocketpilot.runtime.engine import CompletionEngine\n"
      + "from pocketpilot.runtime.functions import find_function\n"
      + "from pocketpilot.runtime.loader import load_artifact\n"
      + "from pocketpilot.runtime.summarize import format_docstring, write_docstring\n"
      + "src = open(sys.argv[2]).read()\n"
      + "fn = find_function(src, 1, 4, 'python')\n"
      + "doc = write_docstring(CompletionEngine(load_artifact(sys.argv[1])), fn)\n"
      + "print(json.dumps(fn.lead + format_docstring(doc.text, 'python', fn.indent) + fn.trail))\n";
    const artifact = JSON.parse(readFileSync(join(userData, "User", "settings.json"), "utf8"))["pocketpilot.artifact"];
    const inserted = JSON.parse(String(execFileSync(PYTHON, ["-c", script, artifact, file],
      { env: { ...process.env, POCKETPILOT_HOME: join(work, "pp-home"), OMP_NUM_THREADS: "1" },
        stdio: ["ignore", "pipe", "inherit"], timeout: 120_000 })));
    assert.match(inserted, /^ {4}"""\S.*"""\n$/, `the tiny model writes a docstring: ${JSON.stringify(inserted)}`);
    const lines = source.split("\n");
    const want = [lines[0], inserted.slice(0, -1), ...lines.slice(1)].join("\n");

    step("cursor in the function body, then Refactor...");
    const editor = page.locator(".editor-group-container .monaco-editor");
    await editor.locator(".view-lines").filter({ visible: true }).first().locator(".view-line").nth(1).click();
    await page.keyboard.press("F1");
    await page.keyboard.type("Refactor...");
    await until("Refactor... in the palette", async () =>
      (await page.locator(".quick-input-list .monaco-list-row").first().innerText()).includes("Refactor"), 20_000);
    await page.keyboard.press("Enter");
    const row = page.locator(".action-widget .monaco-list-row", { hasText: "PocketPilot: Write docstring" });
    step("choosing PocketPilot: Write docstring");
    await until("the Write docstring action", async () => (await row.count()) > 0, 30_000);
    await row.first().click();
    await until("the docstring in the editor", async () =>
      (await editor.locator(".view-lines").first().innerText()).replace(/\u00a0/g, " ").includes(inserted.trim()), 90_000);
    await page.keyboard.press("Control+s");
    await until("the saved buffer", async () => readFileSync(file, "utf8") === want, 20_000)
      .catch((err) => assert.fail(`${err.message}\nbuffer on disk: ${JSON.stringify(readFileSync(file, "utf8"))}, want ${JSON.stringify(want)}`));
  });

  test("Show Status lists the state and the interpreter from the settings", { timeout: 60_000 }, async () => {
    await page.keyboard.press("F1"); // the command palette
    await page.keyboard.type("PocketPilot: Show Status");
    await until("the command in the palette", async () =>
      (await page.locator(".quick-input-list .monaco-list-row").first().innerText()).includes("Show Status"), 20_000);
    await page.keyboard.press("Enter");
    const widget = page.locator(".quick-input-widget");
    await until("State: ready", async () => (await widget.innerText()).includes("State: ready"), 20_000);
    assert.ok((await widget.innerText()).includes(`Interpreter: ${PYTHON} (setting`), await widget.innerText());
    await page.keyboard.press("Escape");
  });
});
