/**
 * Find a Python interpreter that can run `pocketpilot serve` (no `vscode` import).
 *
 * Order: the `pocketpilot.pythonPath` setting (if set, it is the only candidate), then the
 * Python extension's active interpreter, then `python3` and `python` on PATH.
 */
import { execFile } from "node:child_process";

export type Source = "setting" | "python-extension" | "path";

export interface Candidate {
  source: Source;
  /** Executable and leading arguments, e.g. `["/usr/bin/python3"]` or `["py", "-3"]`. */
  command: string[];
}

export interface ProbeResult {
  /** The interpreter ran at all. */
  runs: boolean;
  /** `import pocketpilot` worked. */
  importable: boolean;
  version?: string;
  error?: string;
}

export interface Discovery {
  /** First candidate that runs and imports pocketpilot. */
  found?: Candidate & { version: string };
  /** First candidate that runs but lacks pocketpilot: offer to pip install into it. */
  missingPackage?: Candidate;
  tried: { candidate: Candidate; result: ProbeResult }[];
}

/** Candidates in order of preference. */
export function candidates(opts: { setting?: string | null; extension?: string[] | null; platform?: string }): Candidate[] {
  const setting = opts.setting?.trim();
  if (setting) return [{ source: "setting", command: [setting] }];
  const out: Candidate[] = [];
  if (opts.extension && opts.extension.length > 0 && opts.extension[0]) {
    out.push({ source: "python-extension", command: opts.extension });
  }
  const names = (opts.platform ?? process.platform) === "win32" ? [["python"], ["py", "-3"]] : [["python3"], ["python"]];
  for (const command of names) out.push({ source: "path", command });
  return out;
}

const PROBE = "import sys\ntry:\n import pocketpilot\nexcept ImportError as e:\n print('missing:', e); sys.exit(3)\nprint(pocketpilot.__version__)";

/** Run `python -c "import pocketpilot"`; never throws. */
export function probe(command: string[], timeoutMs = 20_000, env: NodeJS.ProcessEnv = process.env): Promise<ProbeResult> {
  return new Promise((resolve) => {
    execFile(command[0], [...command.slice(1), "-c", PROBE], { timeout: timeoutMs, env, windowsHide: true }, (err, stdout, stderr) => {
      if (!err) {
        resolve({ runs: true, importable: true, version: stdout.trim().split("\n").pop() });
      } else if ((err as { code?: unknown }).code === 3) {
        resolve({ runs: true, importable: false, error: stdout.trim() || stderr.trim() });
      } else {
        resolve({ runs: false, importable: false, error: (stderr.trim() || err.message).split("\n").pop() });
      }
    });
  });
}

/** Probe candidates in order and return the first usable one (and what was tried). */
export async function discover(cands: Candidate[], probeFn: (command: string[]) => Promise<ProbeResult> = (c) => probe(c)): Promise<Discovery> {
  const tried: Discovery["tried"] = [];
  let missingPackage: Candidate | undefined;
  for (const candidate of cands) {
    const result = await probeFn(candidate.command);
    tried.push({ candidate, result });
    if (result.importable) return { found: { ...candidate, version: result.version ?? "unknown" }, missingPackage, tried };
    if (result.runs && !missingPackage) missingPackage = candidate;
  }
  return { missingPackage, tried };
}

/** Shell-quoted pip command that installs pocketpilot into `command`'s environment. */
export function pipInstallCommand(command: string[]): string {
  const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `"${s.replace(/(["\\$`])/g, "\\$1")}"`);
  return [...command.map(quote), "-m", "pip", "install", "pocketpilot"].join(" ");
}

/** One line per candidate, for the log and error messages. */
export function describeTried(d: Discovery): string {
  return d.tried
    .map(({ candidate, result }) =>
      `${candidate.command.join(" ")} (${candidate.source}): ${result.importable ? `pocketpilot ${result.version}` : result.runs ? "pocketpilot not installed" : `does not run: ${result.error ?? "?"}`}`)
    .join("\n");
}
