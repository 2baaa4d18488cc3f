import assert from "node:assert/strict";
import { test } from "node:test";

import { candidates, describeTried, discover, pipInstallCommand, probe, type ProbeResult } from "../src/interpreter";

test("the pythonPath setting is the only candidate when set", () => {
  assert.deepEqual(candidates({ setting: " /opt/py/bin/python ", extension: ["/ext/python"] }), [
    { source: "setting", command: ["/opt/py/bin/python"] },
  ]);
});

test("without the setting: Python extension first, then PATH", () => {
  assert.deepEqual(candidates({ setting: "", extension: ["/ext/python"], platform: "linux" }), [
    { source: "python-extension", command: ["/ext/python"] },
    { source: "path", command: ["python3"] },
    { source: "path", command: ["python"] },
  ]);
  assert.deepEqual(candidates({ platform: "win32" }).map((c) => c.command), [["python"], ["py", "-3"]]);
});

test("discover takes the first interpreter that imports pocketpilot", async () => {
  const results: Record<string, ProbeResult> = {
    "/ext/python": { runs: true, importable: false, error: "missing" },
    python3: { runs: true, importable: true, version: "0.1.0" },
  };
  const d = await discover(candidates({ extension: ["/ext/python"], platform: "linux" }), async (c) => results[c[0]]);
  assert.deepEqual(d.found, { source: "path", command: ["python3"], version: "0.1.0" });
  assert.deepEqual(d.missingPackage?.command, ["/ext/python"]);
  assert.equal(d.tried.length, 2);
});

test("discover reports the first interpreter lacking the package when none has it", async () => {
  const d = await discover(candidates({ platform: "linux" }), async (c) =>
    c[0] === "python3" ? { runs: false, importable: false, error: "ENOENT" } : { runs: true, importable: false });
  assert.equal(d.found, undefined);
  assert.deepEqual(d.missingPackage?.command, ["python"]);
  assert.match(describeTried(d), /python3 \(path\): does not run: ENOENT\npython \(path\): pocketpilot not installed/);
});

test("pip command quotes paths with spaces", () => {
  assert.equal(pipInstallCommand(["/usr/bin/python3"]), "/usr/bin/python3 -m pip install pocketpilot");
  assert.equal(pipInstallCommand(["/My Envs/python"]), '"/My Envs/python" -m pip install pocketpilot');
});

test("probe: a missing executable does not run", async () => {
  const r = await probe(["/nonexistent/python-for-pocketpilot-test"]);
  assert.equal(r.runs, false);
  assert.equal(r.importable, false);
});

test("probe: node stands in for an interpreter that runs but lacks the package", async () => {
  // `node -c CODE` is a syntax check that fails: it runs, exits non-zero and not with 3.
  const r = await probe([process.execPath]);
  assert.equal(r.importable, false);
});
