"""The VS Code extension contributes the server's settings one for one, with the same defaults."""

import json
from dataclasses import MISSING, fields
from pathlib import Path

from pocketpilot.lsp_server.settings import ServerSettings

PACKAGE = Path(__file__).resolve().parents[2] / "vscode-client" / "package.json"


def _manifest() -> tuple[dict, set[str]]:
    pkg = json.loads(PACKAGE.read_text())
    sections = pkg["contributes"]["configuration"]
    props: dict = {}
    for section in sections if isinstance(sections, list) else [sections]:
        props.update(section["properties"])
    return props, set(pkg["pocketpilotClientOnlySettings"])


def _server_defaults() -> dict:
    out = {}
    for f in fields(ServerSettings):
        assert f.default is not MISSING, f.name
        out[ServerSettings.camel(f.name)] = f.default
    return out


def test_every_server_setting_is_contributed_with_the_same_default():
    props, _ = _manifest()
    for name, default in _server_defaults().items():
        key = f"pocketpilot.{name}"
        assert key in props, f"{key} missing from vscode-client/package.json"
        assert props[key]["default"] == default, f"{key}: default {props[key]['default']!r}, server has {default!r}"
        assert (props[key]["default"] is None) == (default is None), key


def test_no_contributed_setting_lacks_a_server_counterpart():
    props, client_only = _manifest()
    server = set(_server_defaults())
    assert not client_only & server, f"settings marked client-only but read by the server: {client_only & server}"
    assert all(k.startswith("pocketpilot.") for k in props), list(props)
    unknown = {k.removeprefix("pocketpilot.") for k in props} - server - client_only
    assert not unknown, f"contributed settings the server does not know (mark client-only ones in pocketpilotClientOnlySettings): {unknown}"
    stale = client_only - {k.removeprefix("pocketpilot.") for k in props}
    assert not stale, f"pocketpilotClientOnlySettings lists settings that are not contributed: {stale}"
