/**
 * Client configuration that does not need `vscode`: the server's settings with their
 * defaults and bounds (read from the extension's package.json, never restated here), the
 * client-only settings, initializationOptions, the server command line, and the document
 * selector. Shared by the extension and the Node tests.
 */

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** Settings section in VS Code (`pocketpilot.*`). */
export const SECTION = "pocketpilot";

/** One contributed setting as `package.json` declares it (the JSON-schema subset used here). */
export interface SettingSchema {
  type: string | string[];
  default: unknown;
  minimum?: number;
  maximum?: number;
  enum?: string[];
}
export type SettingValue = string | number | boolean | null;
/** What the server receives: camelCase server setting -> value. */
export type InitializationOptions = Record<string, SettingValue>;

/**
 * The extension's own `package.json`: two folders up from `out/src/config.js` (tests), one
 * up from the bundled `dist/extension.js`. Read once at load.
 */
function extensionManifest(): { contributes: { configuration: { properties: Record<string, SettingSchema> }[] } } {
  for (let dir = __dirname, up = 0; up < 4; dir = dirname(dir), up++) {
    const file = join(dir, "package.json");
    if (!existsSync(file)) continue;
    const pkg = JSON.parse(readFileSync(file, "utf8"));
    if (pkg.name === SECTION && pkg.contributes?.configuration) return pkg;
  }
  throw new Error(`PocketPilot: no package.json with contributes.configuration above ${__dirname}; reinstall the extension`);
}

/**
 * Settings only the client reads; never sent to the server. package.json lists the same
 * names under `pocketpilotClientOnlySettings` (the Python drift test reads that list).
 */
export const CLIENT_ONLY_SETTINGS = ["pythonPath", "enable", "languages"] as const;

/**
 * Server settings (camelCase key -> type, default and bounds), read from `package.json`'s
 * `contributes.configuration`: every `pocketpilot.*` setting that is not client-only. The
 * server's schema (`pocketpilot.lsp_server.settings.SCHEMA`) declares the same facts;
 * `tests/unit/test_vscode_settings.py` checks that package.json matches it.
 */
export const SERVER_SETTINGS: Readonly<Record<string, SettingSchema>> = Object.fromEntries(
  extensionManifest().contributes.configuration
    .flatMap((section) => Object.entries(section.properties))
    .map(([name, schema]): [string, SettingSchema] => [name.slice(SECTION.length + 1), schema])
    .filter(([key]) => !(CLIENT_ONLY_SETTINGS as readonly string[]).includes(key)),
);

/** The server settings' defaults (from `package.json`), sent when a setting is missing or bad. */
export const SERVER_SETTING_DEFAULTS: Readonly<InitializationOptions> = Object.fromEntries(
  Object.entries(SERVER_SETTINGS).map(([key, s]) => [key, s.default as SettingValue]),
);

/** Settings whose change needs a server restart (all server settings, interpreter, selector). */
export const RESTART_SETTINGS: readonly string[] = [
  ...Object.keys(SERVER_SETTINGS),
  "pythonPath",
  "languages",
];

/** `" >= 0 and <= 15"`, `" >= 1"` or `""`: the bounds of an integer setting in words. */
function boundsText(s: SettingSchema): string {
  const parts = [...(s.minimum === undefined ? [] : [`>= ${s.minimum}`]), ...(s.maximum === undefined ? [] : [`<= ${s.maximum}`])];
  return parts.length ? ` ${parts.join(" and ")}` : "";
}

/**
 * Check one present value against its schema: the value to send, or why it is bad
 * (`"must be an integer >= 1"`). A blank string of a string-or-null setting means null.
 *
 * @throws Error when package.json gives a server setting a type this client cannot check.
 */
function checkValue(key: string, s: SettingSchema, value: unknown): { value: SettingValue } | { reason: string } {
  const type = JSON.stringify(s.type);
  if (type === '"integer"') {
    const ok = typeof value === "number" && Number.isInteger(value) && value >= (s.minimum ?? -Infinity) && value <= (s.maximum ?? Infinity);
    return ok ? { value } : { reason: `must be an integer${boundsText(s)}` };
  }
  if (type === '"boolean"') return typeof value === "boolean" ? { value } : { reason: "must be true or false" };
  if (type === '"string"' && s.enum) {
    const ok = typeof value === "string" && s.enum.includes(value);
    return ok ? { value } : { reason: `must be one of ${s.enum.map((c) => JSON.stringify(c)).join(", ")}` };
  }
  if (type === '["string","null"]') {
    if (typeof value !== "string") return { reason: "must be a string" };
    return { value: value.trim() === "" ? null : value.trim() };
  }
  throw new Error(`pocketpilot.${key}: package.json type ${type} is not checked by the client; use integer, boolean, string with enum or [string, null]`);
}

/**
 * Build `initializationOptions` from a settings getter (`get("maxNewTokens")` etc.).
 * Missing (undefined or null) values use the defaults; invalid ones too, each with a problem
 * naming the setting, its bounds (from package.json) and the default used. An empty artifact
 * means the active one. Returns the options and one-line problems for the log.
 */
export function initializationOptions(get: (key: string) => unknown): {
  options: InitializationOptions;
  problems: string[];
} {
  const options: InitializationOptions = { ...SERVER_SETTING_DEFAULTS };
  const problems: string[] = [];
  for (const [key, schema] of Object.entries(SERVER_SETTINGS)) {
    const value = get(key);
    if (value === undefined || value === null) continue;
    const checked = checkValue(key, schema, value);
    if ("value" in checked) options[key] = checked.value;
    else problems.push(`pocketpilot.${key} ${checked.reason}, got ${JSON.stringify(value)}; using ${JSON.stringify(schema.default)}`);
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
