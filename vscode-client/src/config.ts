/**
 * Client configuration that does not need `vscode`: the server's settings and their
 * defaults, the client-only settings, initializationOptions, the server command line,
 * and the document selector. Shared by the extension and the Node tests.
 */

/** Settings section in VS Code (`pocketpilot.*`). */
export const SECTION = "pocketpilot";

/**
 * Server settings, one for one with `pocketpilot.lsp_server.settings.ServerSettings`
 * (camelCase keys, same defaults). Sent as `initializationOptions`.
 */
export const SERVER_SETTING_DEFAULTS = {
  artifact: null as string | null,
  maxNewTokens: 48,
  prefixTokens: 512,
  suffixTokens: 128,
  multiline: true,
  blockMaxTokens: 96,
  contextTokens: 256,
  kvCacheMb: 256,
  draftTokens: 8,
  debounceMs: 0,
};
export type ServerSettingKey = keyof typeof SERVER_SETTING_DEFAULTS;
export type InitializationOptions = { [K in ServerSettingKey]: (typeof SERVER_SETTING_DEFAULTS)[K] };

/**
 * Settings only the client reads; never sent to the server. package.json lists the same
 * names under `pocketpilotClientOnlySettings` (the Python drift test reads that list).
 */
export const CLIENT_ONLY_SETTINGS = ["pythonPath", "enable", "languages"] as const;

/** Settings whose change needs a server restart (all server settings, interpreter, selector). */
export const RESTART_SETTINGS: readonly string[] = [
  ...Object.keys(SERVER_SETTING_DEFAULTS),
  "pythonPath",
  "languages",
];

/** Smallest accepted value per integer setting (mirrors the server's checks). */
const MINIMUM = {
  maxNewTokens: 1,
  prefixTokens: 1,
  suffixTokens: 0,
  blockMaxTokens: 1,
  contextTokens: 0,
  kvCacheMb: 0,
  draftTokens: 0,
  debounceMs: 0,
} as const;
/** Largest accepted value of the integer settings that have one (mirrors the server). */
const MAXIMUM: Partial<Record<keyof typeof MINIMUM, number>> = { draftTokens: 15 };
type IntegerSettingKey = keyof typeof MINIMUM;

/**
 * Build `initializationOptions` from a settings getter (`get("maxNewTokens")` etc.).
 * Missing or invalid values fall back to the defaults; an empty artifact means the active one.
 * Returns the options and one-line problems for the log.
 */
export function initializationOptions(get: (key: string) => unknown): {
  options: InitializationOptions;
  problems: string[];
} {
  const options: InitializationOptions = { ...SERVER_SETTING_DEFAULTS };
  const problems: string[] = [];
  const artifact = get("artifact");
  if (typeof artifact === "string" && artifact.trim() !== "") {
    options.artifact = artifact.trim();
  } else if (artifact !== undefined && artifact !== null && artifact !== "") {
    problems.push(`pocketpilot.artifact must be a string; using the active artifact`);
  }
  const multiline = get("multiline");
  if (typeof multiline === "boolean") {
    options.multiline = multiline;
  } else if (multiline !== undefined && multiline !== null) {
    problems.push(`pocketpilot.multiline must be true or false, got ${JSON.stringify(multiline)}; using ${SERVER_SETTING_DEFAULTS.multiline}`);
  }
  for (const key of Object.keys(MINIMUM) as IntegerSettingKey[]) {
    const value = get(key);
    if (value === undefined || value === null) continue;
    const max = MAXIMUM[key] ?? Number.MAX_SAFE_INTEGER;
    if (typeof value === "number" && Number.isInteger(value) && value >= MINIMUM[key] && value <= max) {
      options[key] = value;
    } else {
      const bound = MAXIMUM[key] === undefined ? "" : ` and <= ${MAXIMUM[key]}`;
      problems.push(`pocketpilot.${key} must be an integer >= ${MINIMUM[key]}${bound}, got ${JSON.stringify(value)}; using ${SERVER_SETTING_DEFAULTS[key]}`);
    }
  }
  return { options, problems };
}

/** The command line that starts the server over stdio with `python` (command + leading args). */
export function serverCommand(python: readonly string[]): { command: string; args: string[] } {
  if (python.length === 0) throw new Error("empty Python command");
  return { command: python[0], args: [...python.slice(1), "-m", "pocketpilot", "serve"] };
}

export interface DocumentFilter {
  scheme: string;
  language?: string;
}

/**
 * Document selector for the enabled languages: `["*"]` (the default) or an empty list
 * means every language. Files and untitled documents only.
 */
export function documentSelector(languages: unknown): DocumentFilter[] {
  const ids = Array.isArray(languages) ? languages.filter((l): l is string => typeof l === "string" && l.trim() !== "") : [];
  const schemes = ["file", "untitled"];
  if (ids.length === 0 || ids.includes("*")) return schemes.map((scheme) => ({ scheme }));
  return ids.flatMap((language) => schemes.map((scheme) => ({ scheme, language: language.trim() })));
}
