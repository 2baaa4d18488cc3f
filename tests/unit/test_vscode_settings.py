"""The VS Code extension contributes the server's settings one for one, with the schema's facts.

The schema (:data:`pocketpilot.lsp_server.settings.SCHEMA`) is the one place a server setting's
type, default, bounds and description are declared; ``vscode-client/package.json`` must say the
same, and ``vscode-client/src/config.ts`` reads its bounds from ``package.json``.
"""

import json
from pathlib import Path

import pytest

from pocketpilot.lsp_server.settings import SCHEMA
from pocketpilot.runtime.settings import EngineSettings, schema

PACKAGE = Path(__file__).resolve().parents[2] / "vscode-client" / "package.json"


def _manifest() -> tuple[dict, set[str]]:
    pkg = json.loads(PACKAGE.read_text())
    sections = pkg["contributes"]["configuration"]
    props: dict = {}
    for section in sections if isinstance(sections, list) else [sections]:
        props.update(section["properties"])
    return props, set(pkg["pocketpilotClientOnlySettings"])


@pytest.mark.parametrize("s", SCHEMA, ids=lambda s: s.key)
def test_every_server_setting_is_contributed_with_the_schema_facts(s):
    props, _ = _manifest()
    key = f"pocketpilot.{s.key}"
    assert key in props, f"{key} missing from vscode-client/package.json"
    prop = props[key]
    assert prop["type"] == s.json_type, f"{key}: type {prop['type']!r}, schema has {s.json_type!r}"
    assert prop["default"] == s.default and type(prop["default"]) is type(s.default), \
        f"{key}: default {prop['default']!r}, schema has {s.default!r}"
    assert prop.get("enum") == (list(s.choices) if s.choices else None), f"{key}: enum differs from the choices"
    for bound in ("minimum", "maximum"):
        assert prop.get(bound) == getattr(s, bound), f"{key}: {bound} {prop.get(bound)!r}, schema has {getattr(s, bound)!r}"
    text = prop.get("markdownDescription", prop.get("description"))
    assert text == s.description, f"{key}: description differs from the schema's:\n{text!r}\n{s.description!r}"


def test_no_contributed_setting_lacks_a_server_counterpart():
    props, client_only = _manifest()
    server = {s.key for s in SCHEMA}
    assert not client_only & server, f"settings marked client-only but read by the server: {client_only & server}"
    assert all(k.startswith("pocketpilot.") for k in props), list(props)
    unknown = {k.removeprefix("pocketpilot.") for k in props} - server - client_only
    assert not unknown, f"contributed settings the server does not know (mark client-only ones in pocketpilotClientOnlySettings): {unknown}"
    stale = client_only - {k.removeprefix("pocketpilot.") for k in props}
    assert not stale, f"pocketpilotClientOnlySettings lists settings that are not contributed: {stale}"


def test_the_engine_settings_are_the_servers_with_the_same_facts():
    """The server declares only its own settings; the engine's come from the runtime, once."""
    engine = schema(EngineSettings)
    assert SCHEMA[: len(engine)] == engine
    assert [s.name for s in SCHEMA[len(engine):]] == ["artifact", "debounce_ms", "warm_up", "speculate",
                                                    "max_context_document_chars"]
    assert all(s.default == getattr(EngineSettings(), s.name) for s in engine)
