/** Server status (`pocketpilot/status`) and its status-bar text (no `vscode` import). */

export type State = "starting" | "loading" | "ready" | "no-model" | "compressing" | "error" | "stopped" | string;

export interface ServerStatus {
  state: State;
  model?: string | null;
  message?: string | null;
  /** Latency of the last completion in ms; absent in older servers. */
  lastLatencyMs?: number | null;
}

const ICONS: Record<string, string> = {
  starting: "$(loading~spin)",
  loading: "$(loading~spin)",
  compressing: "$(sync~spin)",
  ready: "$(sparkle)",
  "no-model": "$(warning)",
  error: "$(error)",
  stopped: "$(debug-stop)",
};

/** Latency as shown to the user: `42 ms`, `1.3 s`; empty when unknown. */
export function formatLatency(ms: number | null | undefined): string {
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) return "";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Status-bar text and tooltip, e.g. `$(sparkle) PocketPilot tiny-int8 · 42 ms`. */
export function formatStatusBar(status: ServerStatus, enabled = true): { text: string; tooltip: string } {
  const icon = enabled ? (ICONS[status.state] ?? "$(question)") : "$(circle-slash)";
  const parts = [`${icon} PocketPilot`];
  if (status.state === "ready" && status.model) parts.push(status.model);
  else parts.push(status.state);
  const latency = formatLatency(status.lastLatencyMs);
  const text = latency && status.state === "ready" ? `${parts.join(" ")} · ${latency}` : parts.join(" ");
  return { text, tooltip: describeStatus(status, enabled).join("\n") };
}

/** Lines describing the status in full (tooltip and "Show Status"). */
export function describeStatus(status: ServerStatus, enabled = true, extra: Record<string, string | undefined> = {}): string[] {
  const lines = [`State: ${status.state}`, `Model: ${status.model ?? "none"}`];
  const latency = formatLatency(status.lastLatencyMs);
  if (latency) lines.push(`Last completion: ${latency}`);
  if (status.message) lines.push(`Message: ${status.message}`);
  lines.push(`Inline suggestions: ${enabled ? "on" : "off"}`);
  for (const [k, v] of Object.entries(extra)) if (v) lines.push(`${k}: ${v}`);
  return lines;
}
