// UI test: install ../pocketpilot.vsix into code-server, open a Python file in headless chromium,
// and accept PocketPilot's inline suggestion. Needs Node 24 (code-server), Debian chromium
// (CHROMIUM, default /usr/bin/chromium) and POCKETPILOT_PYTHON with pocketpilot installed.
// STATUS: unfinished. Activation, the ready status bar and Show Status pass; no ghost text appears
// after triggering the inline suggestion, so the first test fails (not yet diagnosed). Not in `npm test`.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const VSIX = join(here, "..", "pocketpilot.vsix");
const CODE_SERVER = join(here, "node_modules", "code-server", "out", "node", "entry.js");
const PYTHON = process.env.POCKETPILOT_PYTHON || "python3";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

let work, server, browser, page;
const serverLog = [];

const step = (what) => process.env.UI_VERBOSE && console.error(`[ui-test ${new Date().toISOString()}] ${what}`);

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

async function until(what, fn, timeoutMs = 120_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value) return value;
    if (Date.now() > end) {
      if (process.env.UI_SCREENSHOT) await page?.screenshot({ path: process.env.UI_SCREENSHOT }).catch(() => {});
      throw new Error(`timed out waiting for ${what}\n${serverLog.join("").slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "pocketpilot-ui-"));
  const home = join(work, "pp-home");
  step("building the tiny model");
  execFileSync(PYTHON, [join(here, "..", "test", "make_tiny_model.py"), join(work, "teacher"), home],
    { env: { ...process.env, OMP_NUM_THREADS: "1" }, stdio: ["ignore", "ignore", "inherit"], timeout: 540_000 });

  const userData = join(work, "user-data");
  const extensions = join(work, "extensions");
  const project = join(work, "project");
  mkdirSync(join(userData, "User"), { recursive: true });
  mkdirSync(project);
  writeFileSync(join(project, "example.py"), "def add(a, b):\n    return\n");
  // User settings can reach the extension host after activation in code-server; the same settings
  // as Machine settings, and PYTHON's folder first on PATH, keep the interpreter choice stable.
  mkdirSync(join(userData, "Machine"), { recursive: true });
  const settings = JSON.stringify({
    "pocketpilot.pythonPath": PYTHON,
    "editor.inlineSuggest.enabled": true,
    "editor.quickSuggestions": { other: false, comments: false, strings: false },
    "workbench.startupEditor": "none",
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "workbench.tips.enabled": false,
    "security.workspace.trust.enabled": false,
    "telemetry.telemetryLevel": "off",
    "extensions.autoUpdate": false,
    "extensions.autoCheckUpdates": false,
  });
  writeFileSync(join(userData, "User", "settings.json"), settings);
  writeFileSync(join(userData, "Machine", "settings.json"), settings);
  const common = ["--user-data-dir", userData, "--extensions-dir", extensions];
  step("installing the vsix");
  execFileSync(process.execPath, [CODE_SERVER, ...common, "--install-extension", VSIX], { stdio: "inherit" });

  step("starting code-server");
  const port = await freePort();
  server = spawn(process.execPath, [CODE_SERVER, ...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`,
    "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override", project],
  { env: { ...process.env, POCKETPILOT_HOME: home, PATH: `${dirname(PYTHON)}:${process.env.PATH}` }, stdio: ["ignore", "pipe", "pipe"] });
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
  server?.kill();
  if (work) rmSync(work, { recursive: true, force: true });
});

test("status bar shows the ready model, and the inline suggestion is accepted with Tab", { timeout: 300_000 }, async () => {
  // The extension activates on startup; the status-bar item names the model when the server is ready.
  const item = page.locator(".statusbar-item", { hasText: "PocketPilot" });
  await until("a ready PocketPilot status", async () => {
    const text = await item.first().innerText();
    return /PocketPilot\s+\S*int8/.test(text) && text;
  });

  await page.locator(".explorer-folders-view .monaco-list-row", { hasText: "example.py" }).dblclick();
  const editor = page.locator(".editor-group-container .monaco-editor .view-lines").filter({ visible: true }).first();
  await editor.waitFor();
  const text = async () => (await editor.innerText()).replace(/\u00a0/g, " "); // Monaco renders spaces as NBSP
  await until("example.py in the editor", async () => (await text()).includes("def add"));
  await page.locator(".editor-group-container .monaco-editor .view-line").filter({ visible: true }).nth(1).click();
  await page.keyboard.press("End");
  await page.keyboard.press("F1"); // editor.action.inlineSuggest.trigger from the palette
  await page.keyboard.type("Trigger Inline Suggestion");
  await until("the trigger command", async () =>
    (await page.locator(".quick-input-list .monaco-list-row").first().innerText()).includes("Trigger Inline Suggestion"), 10_000);
  await page.keyboard.press("Enter");
  const ghost = page.locator(".editor-group-container .monaco-editor").locator(".ghost-text-decoration, .ghost-text");
  await until("ghost text", async () => (await ghost.first().innerText()).replace(/\u00a0/g, " ").includes("a + b"), 60_000);
  await page.keyboard.press("Tab");
  await until("the accepted suggestion", async () => (await text()).includes("return a + b"), 10_000);

  const statusText = await item.first().innerText();
  assert.match(statusText, /\d+ ms|\d\.\d s/, `status bar shows the last latency: ${statusText}`);
});

test("Show Status lists the state in a quick pick", { timeout: 60_000 }, async () => {
  await page.keyboard.press("F1"); // the command palette
  await page.keyboard.type("PocketPilot: Show Status");
  await until("the command in the palette", async () =>
    (await page.locator(".quick-input-list .monaco-list-row").first().innerText()).includes("Show Status"), 10_000);
  await page.keyboard.press("Enter");
  await until("State: ready", async () => (await page.locator(".quick-input-widget").innerText()).includes("State: ready"), 10_000);
  await page.keyboard.press("Escape");
});
