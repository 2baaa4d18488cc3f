/**
 * PocketPilot for VS Code: starts `pocketpilot serve` over stdio and shows its inline
 * suggestions (LSP 3.18 inline completion through vscode-languageclient).
 */
import * as vscode from "vscode";
import {
  CloseAction,
  ErrorAction,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ShowMessageNotification,
  State as ClientState,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  type ProgressToken,
  type ShowMessageParams,
  type WorkDoneProgressBegin,
  type WorkDoneProgressEnd,
  type WorkDoneProgressReport,
} from "vscode-languageclient/node";

import { Backoff } from "./backoff";
import { documentSelector, initializationOptions, RESTART_SETTINGS, SECTION, serverCommand } from "./config";
import { candidates, describeTried, discover, pipInstallCommand, type Candidate } from "./interpreter";
import { describeStatus, formatLatency, formatStatusBar, type ServerStatus } from "./status";

const DONT_OFFER_COMPRESS = "pocketpilot.dontOfferCompress";
const SERVER_COMPRESS = "pocketpilot.compress"; // the server's command (registered by the client library)

type WorkDone = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;
type Reporter = (value: WorkDone) => void;

class PocketPilot implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private status: ServerStatus = { state: "starting" };
  private interpreter: (Candidate & { version: string }) | undefined;
  private readonly backoff = new Backoff();
  private restartTimer: NodeJS.Timeout | undefined;
  private settingsTimer: NodeJS.Timeout | undefined;
  private lifecycle: Promise<void> = Promise.resolve();
  private offeredCompress = false;
  /** Set while "Compress Model" runs: server progress for compression goes to its notification. */
  private compressReporter: Reporter | undefined;
  private readonly statusBar: vscode.StatusBarItem;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly context: vscode.ExtensionContext,
    readonly log: vscode.LogOutputChannel,
  ) {
    this.statusBar = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
    this.statusBar.command = "pocketpilot.showStatus";
    this.statusBar.name = "PocketPilot";
    this.statusBar.show();
    this.render();
  }

  private get config(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration(SECTION);
  }

  private get enabled(): boolean {
    return this.config.get<boolean>("enable", true);
  }

  private setStatus(status: ServerStatus): void {
    // Older servers omit lastLatencyMs: keep the last one we saw.
    this.status = { ...status, lastLatencyMs: status.lastLatencyMs ?? this.status.lastLatencyMs ?? null };
    this.render();
  }

  render(): void {
    const { text, tooltip } = formatStatusBar(this.status, this.enabled);
    this.statusBar.text = text;
    this.statusBar.tooltip = tooltip;
    const bad = this.status.state === "error" || this.status.state === "no-model";
    this.statusBar.backgroundColor = bad ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
  }

  /** Serialise start/stop/restart so that settings changes and crashes never overlap. */
  private queue(step: () => Promise<void>): Promise<void> {
    this.lifecycle = this.lifecycle.then(step, step).catch((err) => this.log.error(`lifecycle: ${err}`));
    return this.lifecycle;
  }

  start(): Promise<void> {
    return this.queue(() => this.doStart());
  }

  restart(reason: string, userAsked = false): Promise<void> {
    if (userAsked) this.backoff.reset();
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.log.info(`restarting server: ${reason}`);
    return this.queue(async () => {
      await this.doStop();
      await this.doStart();
    });
  }

  private async doStop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (!client) return;
    try {
      if (client.state === ClientState.Running) await client.stop(5000);
      else await client.dispose(2000);
    } catch (err) {
      this.log.warn(`stopping server: ${err}`);
    }
  }

  private async findInterpreter(): Promise<(Candidate & { version: string }) | undefined> {
    const setting = this.config.get<string | null>("pythonPath");
    const found = await discover(candidates({ setting, extension: await pythonExtensionInterpreter() }));
    this.log.info(`Python interpreters:\n${describeTried(found)}`);
    if (found.found) return found.found;
    if (found.missingPackage) {
      const pip = pipInstallCommand(found.missingPackage.command);
      this.setStatus({ state: "error", message: `pocketpilot is not installed for ${found.missingPackage.command.join(" ")}` });
      void vscode.window
        .showErrorMessage(`PocketPilot: the Python package is not installed for ${found.missingPackage.command.join(" ")}. Install it with: ${pip}`,
          "Install in Terminal", "Copy Command", "Choose Interpreter")
        .then((pick) => this.onMissingPackage(pick, pip));
    } else {
      this.setStatus({ state: "error", message: "no Python interpreter found" });
      void vscode.window
        .showErrorMessage("PocketPilot: no Python interpreter found. Set pocketpilot.pythonPath or install Python 3.10+.", "Open Settings")
        .then((pick) => pick && vscode.commands.executeCommand("workbench.action.openSettings", "pocketpilot.pythonPath"));
    }
    return undefined;
  }

  private async onMissingPackage(pick: string | undefined, pip: string): Promise<void> {
    if (pick === "Install in Terminal") {
      const terminal = vscode.window.createTerminal("PocketPilot install");
      terminal.show();
      terminal.sendText(pip);
      void vscode.window.showInformationMessage("PocketPilot: run \"PocketPilot: Restart Server\" when the install has finished.", "Restart Server")
        .then((p) => p && this.restart("after install", true));
    } else if (pick === "Copy Command") {
      await vscode.env.clipboard.writeText(pip);
    } else if (pick === "Choose Interpreter") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "pocketpilot.pythonPath");
    }
  }

  private async doStart(): Promise<void> {
    this.setStatus({ state: "starting", model: null });
    const interpreter = await this.findInterpreter();
    this.interpreter = interpreter;
    if (!interpreter) return; // waits for a settings change or "Restart Server"
    const { options, problems } = initializationOptions((key) => this.config.get(key));
    problems.forEach((p) => this.log.warn(p));
    const { command, args } = serverCommand(interpreter.command);
    this.log.info(`starting ${command} ${args.join(" ")} (pocketpilot ${interpreter.version}) with ${JSON.stringify(options)}`);

    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(this.config.get("languages")),
      initializationOptions: options,
      outputChannel: this.log,
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue }),
        closed: () => {
          if (this.client === client) this.onCrash();
          return { action: CloseAction.DoNotRestart, handled: true };
        },
      },
      initializationFailedHandler: (err) => {
        this.log.error(`initialize failed: ${err}`);
        return false;
      },
      middleware: {
        provideInlineCompletionItems: (document, position, context, token, next) =>
          this.enabled ? next(document, position, context, token) : null,
        // VS Code shows the inline suggestion; the server's plain completion item would repeat it.
        provideCompletionItem: () => null,
      },
    };
    const client = new LanguageClient("pocketpilot", "PocketPilot", { command, args, options: { env: process.env } }, clientOptions);
    client.onNotification("pocketpilot/status", (params: ServerStatus) => {
      this.setStatus(params);
      if (params.state === "no-model") void this.offerCompress();
    });
    this.client = client;
    this.backoff.started(Date.now());
    try {
      await client.start();
    } catch (err) {
      this.log.error(`server did not start: ${err}`);
      if (this.client === client) this.onCrash();
      return;
    }
    // Replace the library's generic progress UI: compression progress goes to our cancellable notification.
    client.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => this.trackProgress(client, token));
    client.onNotification(ShowMessageNotification.type, (params) => this.showServerMessage(params));
    this.sendFocus(vscode.window.activeTextEditor);
  }

  /**
   * Tell the server which editor has focus and where its cursor is (`pocketpilot/didFocus`), so
   * it computes that document's prompt while idle and the first suggestion there is fast.
   */
  sendFocus(editor: vscode.TextEditor | undefined): void {
    const client = this.client;
    if (!editor || !client || !client.isRunning() || !this.enabled) return;
    if (!vscode.languages.match(documentSelector(this.config.get("languages")), editor.document)) return;
    const pos = editor.selection.active;
    void client.sendNotification("pocketpilot/didFocus", {
      textDocument: { uri: editor.document.uri.toString() },
      position: { line: pos.line, character: pos.character },
    });
  }

  private onCrash(): void {
    if (this.restartTimer) return;
    const delay = this.backoff.nextDelay(Date.now());
    this.log.error(`server exited; restarting in ${delay / 1000} s (failure ${this.backoff.failureCount})`);
    this.setStatus({ state: "error", model: this.status.model, message: `server exited; restarting in ${formatLatency(delay)}` });
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.restart("after crash");
    }, delay);
  }

  private showServerMessage(params: ShowMessageParams): void {
    this.log.info(`server message: ${params.message}`);
    // The first-run offer replaces the server's "no compressed model yet" hint.
    if (/no compressed model/i.test(params.message) && !this.context.globalState.get(DONT_OFFER_COMPRESS)) return;
    const show = params.type === 1 ? vscode.window.showErrorMessage : params.type === 2 ? vscode.window.showWarningMessage : vscode.window.showInformationMessage;
    void show(params.message);
  }

  private trackProgress(client: LanguageClient, token: ProgressToken): void {
    const own = this.compressReporter;
    if (own) {
      const sub = client.onProgress(WorkDoneProgress.type, token, (value) => {
        own(value);
        if (value.kind === "end") sub.dispose();
      });
      return;
    }
    // Progress we did not ask for (e.g. another client's command): a plain notification.
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: "PocketPilot" }, (progress) =>
      new Promise<void>((resolve) => {
        let last = 0;
        const sub = client.onProgress(WorkDoneProgress.type, token, (value) => {
          if (value.kind === "end") {
            sub.dispose();
            resolve();
            return;
          }
          const pct = value.percentage ?? last;
          progress.report({ message: value.message ?? (value.kind === "begin" ? value.title : undefined), increment: pct - last });
          last = pct;
        });
      }));
  }

  private async offerCompress(): Promise<void> {
    if (this.offeredCompress || this.context.globalState.get(DONT_OFFER_COMPRESS)) return;
    this.offeredCompress = true;
    const pick = await vscode.window.showInformationMessage(
      "PocketPilot: no compressed model yet. Compress one for this machine now? This takes a few minutes.",
      "Compress", "Not Now", "Don't Ask Again");
    if (pick === "Compress") await this.compress();
    else if (pick === "Don't Ask Again") await this.context.globalState.update(DONT_OFFER_COMPRESS, true);
  }

  /** Run the server's compress command with a cancellable notification; cancel restarts the server. */
  async compress(options: Record<string, unknown> = {}): Promise<void> {
    const client = this.client;
    if (!client || client.state !== ClientState.Running) {
      void vscode.window.showErrorMessage("PocketPilot: the server is not running; see \"PocketPilot: Show Logs\".");
      return;
    }
    if (this.compressReporter) {
      void vscode.window.showInformationMessage("PocketPilot: a compression is already running.");
      return;
    }
    let cancelled = false;
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: "PocketPilot: compressing", cancellable: true },
      async (progress, cancel) => {
        let last = 0;
        this.compressReporter = (value) => {
          if (value.kind === "end") return progress.report({ message: value.message });
          const pct = value.percentage ?? last;
          progress.report({ message: value.message, increment: Math.max(0, pct - last) });
          last = pct;
        };
        const source = new vscode.CancellationTokenSource();
        try {
          const request = client.sendRequest(ExecuteCommandRequest.type, { command: SERVER_COMPRESS, arguments: [options] }, source.token);
          const stop = new Promise<undefined>((resolve) => cancel.onCancellationRequested(() => {
            cancelled = true;
            source.cancel();
            resolve(undefined);
          }));
          return (await Promise.race([request, stop])) as { ok: boolean; error?: string; artifact_id?: string; artifact_bytes?: number } | undefined;
        } catch (err) {
          return { ok: false, error: String(err) };
        } finally {
          this.compressReporter = undefined;
          source.dispose();
        }
      });
    if (cancelled) {
      // The server cannot stop a compression midway; restarting it ends the work.
      void vscode.window.showInformationMessage("PocketPilot: compression cancelled; the server was restarted.");
      await this.restart("compression cancelled", true);
    } else if (result?.ok) {
      const mb = result.artifact_bytes ? ` (${(result.artifact_bytes / 1e6).toFixed(1)} MB)` : "";
      void vscode.window.showInformationMessage(`PocketPilot: compressed model ${result.artifact_id}${mb} is ready.`);
    } else {
      this.log.error(`compression failed: ${result?.error}`); // the server shows the error itself
    }
  }

  async showStatus(): Promise<void> {
    const lines = describeStatus(this.status, this.enabled, {
      Interpreter: this.interpreter ? `${this.interpreter.command.join(" ")} (${this.interpreter.source}, pocketpilot ${this.interpreter.version})` : "none",
      Languages: JSON.stringify(this.config.get("languages")),
    });
    const actions: (vscode.QuickPickItem & { command?: string })[] = [
      ...lines.map((label) => ({ label })),
      { label: "", kind: vscode.QuickPickItemKind.Separator },
      { label: "$(output) Show Logs", command: "pocketpilot.showLogs" },
      { label: "$(debug-restart) Restart Server", command: "pocketpilot.restartServer" },
      { label: `$(circle-slash) ${this.enabled ? "Disable" : "Enable"} Inline Suggestions`, command: "pocketpilot.toggleInlineSuggestions" },
      { label: "$(package) Compress Model for This Machine", command: "pocketpilot.compressModel" },
    ];
    const pick = await vscode.window.showQuickPick(actions, { title: "PocketPilot status" });
    if (pick?.command) await vscode.commands.executeCommand(pick.command);
  }

  async toggle(): Promise<void> {
    const inspect = this.config.inspect<boolean>("enable");
    const target = inspect?.workspaceFolderValue !== undefined || inspect?.workspaceValue !== undefined
      ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await this.config.update("enable", !this.enabled, target);
    void vscode.window.setStatusBarMessage(`PocketPilot inline suggestions ${this.enabled ? "on" : "off"}`, 3000);
  }

  onSettingsChanged(e: vscode.ConfigurationChangeEvent): void {
    if (e.affectsConfiguration(`${SECTION}.enable`)) this.render();
    if (!RESTART_SETTINGS.some((key) => e.affectsConfiguration(`${SECTION}.${key}`))) return;
    clearTimeout(this.settingsTimer); // typing in the settings editor fires many changes
    this.settingsTimer = setTimeout(() => void this.restart("settings changed", true), 500);
  }

  watchPythonExtension(): void {
    const api = pythonExtensionApi();
    void api.then((a) => {
      const event = a?.environments?.onDidChangeActiveEnvironmentPath;
      if (typeof event !== "function") return;
      this.disposables.push(event(() => {
        if (!this.config.get<string>("pythonPath")) void this.restart("active Python interpreter changed", true);
      }));
    });
  }

  async dispose(): Promise<void> {
    clearTimeout(this.restartTimer);
    clearTimeout(this.settingsTimer);
    this.disposables.forEach((d) => d.dispose());
    this.statusBar.dispose();
    await this.queue(() => this.doStop());
  }
}

/** The ms-python.python API, if the extension is installed (typed loosely: it is optional). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function pythonExtensionApi(): Promise<any> {
  const ext = vscode.extensions.getExtension("ms-python.python");
  if (!ext) return undefined;
  try {
    return ext.isActive ? ext.exports : await ext.activate();
  } catch {
    return undefined;
  }
}

/** The Python extension's active interpreter as a command line, or undefined. */
async function pythonExtensionInterpreter(): Promise<string[] | undefined> {
  const api = await pythonExtensionApi();
  const resource = vscode.workspace.workspaceFolders?.[0]?.uri;
  try {
    const envs = api?.environments;
    if (envs?.getActiveEnvironmentPath) {
      const active = envs.getActiveEnvironmentPath(resource);
      const resolved = await envs.resolveEnvironment?.(active);
      const path: string | undefined = resolved?.executable?.uri?.fsPath ?? active?.path;
      if (path) return [path];
    }
    const exec: unknown = api?.settings?.getExecutionDetails?.(resource)?.execCommand; // older API
    if (Array.isArray(exec) && exec.length > 0) return exec.map(String);
  } catch {
    // fall through to PATH
  }
  return undefined;
}

let pilot: PocketPilot | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel("PocketPilot", { log: true });
  const p = new PocketPilot(context, log);
  pilot = p;
  context.subscriptions.push(
    log,
    vscode.commands.registerCommand("pocketpilot.compressModel", (options?: Record<string, unknown>) => p.compress(options)),
    vscode.commands.registerCommand("pocketpilot.showStatus", () => p.showStatus()),
    vscode.commands.registerCommand("pocketpilot.toggleInlineSuggestions", () => p.toggle()),
    vscode.commands.registerCommand("pocketpilot.restartServer", () => p.restart("asked by the user", true)),
    vscode.commands.registerCommand("pocketpilot.showLogs", () => log.show(true)),
    vscode.workspace.onDidChangeConfiguration((e) => p.onSettingsChanged(e)),
    vscode.window.onDidChangeActiveTextEditor((editor) => p.sendFocus(editor)),
  );
  p.watchPythonExtension();
  await p.start();
}

export async function deactivate(): Promise<void> {
  await pilot?.dispose();
  pilot = undefined;
}
