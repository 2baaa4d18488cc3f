import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff } from "../src/backoff";
import { describeStatus, formatLatency, formatStatusBar } from "../src/status";

test("latency formatting", () => {
  assert.equal(formatLatency(41.6), "42 ms");
  assert.equal(formatLatency(1340), "1.3 s");
  assert.equal(formatLatency(null), "");
  assert.equal(formatLatency(undefined), "");
});

test("ready shows the model and last latency", () => {
  const { text, tooltip } = formatStatusBar({ state: "ready", model: "tiny-int8", message: null, lastLatencyMs: 42 });
  assert.equal(text, "$(sparkle) PocketPilot tiny-int8 · 42 ms");
  assert.match(tooltip, /State: ready\nModel: tiny-int8\nLast completion: 42 ms/);
});

test("other states show the state; lastLatencyMs may be absent", () => {
  assert.equal(formatStatusBar({ state: "loading", model: null }).text, "$(loading~spin) PocketPilot loading");
  assert.equal(formatStatusBar({ state: "compressing", model: "m", lastLatencyMs: 5 }).text, "$(sync~spin) PocketPilot compressing");
  assert.equal(formatStatusBar({ state: "no-model" }).text, "$(warning) PocketPilot no-model");
  assert.equal(formatStatusBar({ state: "error", message: "boom" }).text, "$(error) PocketPilot error");
  assert.equal(formatStatusBar({ state: "ready", model: "m" }, false).text, "$(circle-slash) PocketPilot m");
});

test("describeStatus lists message, toggle and extra lines", () => {
  const lines = describeStatus({ state: "no-model", message: "no compressed model yet" }, false, { Interpreter: "/py", Empty: undefined });
  assert.deepEqual(lines, ["State: no-model", "Model: none", "Message: no compressed model yet", "Inline suggestions: off", "Interpreter: /py"]);
});

test("back-off doubles to the cap and resets after a stable run", () => {
  const b = new Backoff(1000, 8000, 60_000);
  b.started(0);
  assert.deepEqual([1, 2, 3, 4, 5].map(() => b.nextDelay(10)), [1000, 2000, 4000, 8000, 8000]);
  b.started(100_000);
  assert.equal(b.nextDelay(200_000), 1000); // ran 100 s: stable
  b.reset();
  assert.equal(b.failureCount, 0);
});
