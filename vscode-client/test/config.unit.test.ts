import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import {
  CLIENT_ONLY_SETTINGS, documentSelector, initializationOptions, RESTART_SETTINGS, SERVER_SETTING_DEFAULTS, SERVER_SETTINGS, serverCommand,
} from "../src/config";

const pkg = JSON.parse(readFileSync(join(__dirname, "..", "..", "package.json"), "utf8"));
const contributed: Record<string, { default: unknown; type: unknown; minimum?: number; maximum?: number }> = Object.assign(
  {}, ...pkg.contributes.configuration.map((c: { properties: object }) => c.properties));

test("defaults: no settings gives the server defaults", () => {
  const { options, problems } = initializationOptions(() => undefined);
  assert.deepEqual(options, {
    artifact: null, maxNewTokens: 48, prefixTokens: 512, suffixTokens: 128, multiline: true, blockMaxTokens: 96,
    contextTokens: 256, kvCacheMb: 256, draftTokens: 8, fimLayout: "psm", maxLatencyMs: 0, threads: 0, debounceMs: 0,
    warmUp: true, speculate: true, maxContextDocumentChars: 500000,
  });
  assert.deepEqual(problems, []);
});

test("settings map to camelCase initializationOptions", () => {
  const values: Record<string, unknown> = {
    artifact: " tiny-int8 ", maxNewTokens: 16, prefixTokens: 64, suffixTokens: 0, multiline: false, blockMaxTokens: 8,
    contextTokens: 0, kvCacheMb: 0, draftTokens: 0, fimLayout: "spm", maxLatencyMs: 500, threads: 1, debounceMs: 50,
    warmUp: false, speculate: false, maxContextDocumentChars: 1000, pythonPath: "/x",
  };
  const { options, problems } = initializationOptions((k) => values[k]);
  assert.deepEqual(options, {
    artifact: "tiny-int8", maxNewTokens: 16, prefixTokens: 64, suffixTokens: 0, multiline: false, blockMaxTokens: 8,
    contextTokens: 0, kvCacheMb: 0, draftTokens: 0, fimLayout: "spm", maxLatencyMs: 500, threads: 1, debounceMs: 50,
    warmUp: false, speculate: false, maxContextDocumentChars: 1000,
  });
  assert.deepEqual(problems, []);
  assert.ok(!("pythonPath" in options), "client-only settings are not sent");
});

test("invalid values fall back to defaults with a problem each", () => {
  const values: Record<string, unknown> = { artifact: 3, maxNewTokens: 0, prefixTokens: 1.5, suffixTokens: -1, multiline: "yes", kvCacheMb: -5, draftTokens: 16 };
  const { options, problems } = initializationOptions((k) => values[k]);
  assert.deepEqual(options, SERVER_SETTING_DEFAULTS);
  assert.equal(problems.length, 7);
  assert.ok(problems.some((p) => /draftTokens must be an integer >= 0 and <= 15, got 16; using 8/.test(p)), problems.join("\n"));
  assert.ok(problems.some((p) => /maxNewTokens must be an integer >= 1, got 0; using 48/.test(p)), problems.join("\n"));
  assert.ok(problems.some((p) => /multiline must be true or false, got "yes"; using true/.test(p)), problems.join("\n"));
});

test("a choice setting accepts only its choices", () => {
  assert.equal(initializationOptions((k) => (k === "fimLayout" ? "psm-shift" : undefined)).options.fimLayout, "psm-shift");
  const { options, problems } = initializationOptions((k) => (k === "fimLayout" ? "middle" : undefined));
  assert.equal(options.fimLayout, "psm");
  assert.ok(/fimLayout must be one of "psm", "psm-shift", "spm", got "middle"; using "psm"/.test(problems.join("\n")), problems.join("\n"));
});

test("empty artifact means the active artifact", () => {
  assert.equal(initializationOptions((k) => (k === "artifact" ? "" : undefined)).options.artifact, null);
});

test("server settings are package.json's contributed settings less the client-only ones, with its facts", () => {
  const names = Object.keys(contributed).map((k) => k.replace(/^pocketpilot\./, ""));
  assert.deepEqual(Object.keys(SERVER_SETTINGS).sort(), names.filter((n) => !(CLIENT_ONLY_SETTINGS as readonly string[]).includes(n)).sort());
  for (const [key, s] of Object.entries(SERVER_SETTINGS)) {
    assert.deepEqual(s, contributed[`pocketpilot.${key}`], key);
    assert.deepEqual(SERVER_SETTING_DEFAULTS[key], contributed[`pocketpilot.${key}`].default, key);
  }
});

test("integer bounds are package.json's: the bound is accepted, one past it is not", () => {
  const integers = Object.entries(contributed).filter(([, p]) => p.type === "integer");
  assert.ok(integers.length >= 8, "the integer settings are found");
  for (const [name, p] of integers) {
    const key = name.replace(/^pocketpilot\./, "");
    for (const [bound, step] of [[p.minimum, -1], [p.maximum, 1]] as const) {
      if (bound === undefined) continue;
      assert.equal(initializationOptions((k) => (k === key ? bound : undefined)).options[key], bound, `${key} = ${bound}`);
      const { options, problems } = initializationOptions((k) => (k === key ? bound + step : undefined));
      assert.equal(options[key], p.default, `${key} = ${bound + step}`);
      assert.equal(problems.length, 1, `${key} = ${bound + step}`);
      assert.match(problems[0], new RegExp(`${step < 0 ? ">=" : "<="} ${bound}`));
    }
  }
});

test("package.json client-only marker matches the code", () => {
  assert.deepEqual([...pkg.pocketpilotClientOnlySettings].sort(), [...CLIENT_ONLY_SETTINGS].sort());
});

test("every contributed command has a title and is activated by registration", () => {
  const ids = pkg.contributes.commands.map((c: { command: string }) => c.command);
  assert.deepEqual(ids.sort(), ["pocketpilot.compressModel", "pocketpilot.restartServer", "pocketpilot.showLogs",
    "pocketpilot.showStatus", "pocketpilot.toggleInlineSuggestions"]);
  assert.ok(!ids.includes("pocketpilot.compress"), "the server's command id is registered by the client library");
});

test("restart settings: server settings, interpreter and languages, not enable", () => {
  assert.ok(RESTART_SETTINGS.includes("maxNewTokens") && RESTART_SETTINGS.includes("pythonPath") && RESTART_SETTINGS.includes("languages"));
  assert.ok(!RESTART_SETTINGS.includes("enable"));
});

test("server command appends -m pocketpilot serve after interpreter args", () => {
  assert.deepEqual(serverCommand(["/usr/bin/python3"]), { command: "/usr/bin/python3", args: ["-m", "pocketpilot", "serve"] });
  assert.deepEqual(serverCommand(["py", "-3"]), { command: "py", args: ["-3", "-m", "pocketpilot", "serve"] });
  assert.throws(() => serverCommand([]));
});

test("document selector: all languages by default, else one filter per language and scheme", () => {
  assert.deepEqual(documentSelector(undefined), [{ scheme: "file" }, { scheme: "untitled" }]);
  assert.deepEqual(documentSelector(["*"]), [{ scheme: "file" }, { scheme: "untitled" }]);
  assert.deepEqual(documentSelector(["python", " go ", "", 3]), [
    { scheme: "file", language: "python" }, { scheme: "untitled", language: "python" },
    { scheme: "file", language: "go" }, { scheme: "untitled", language: "go" },
  ]);
});
