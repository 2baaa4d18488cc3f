"""The README's settings table says what the schema says (defaults and bounds), for every server setting."""

import json
import re
from pathlib import Path

from pocketpilot.lsp_server.settings import ServerSettings
from pocketpilot.runtime.settings import schema

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows() -> dict[str, tuple[str, str]]:
    section = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)`( \(VS Code only\))? \|([^|]*)\|([^|]*)\|", line)
        if m and not m.group(2):
            rows[m.group(1)] = (m.group(3).strip(), m.group(4).strip())
    return rows


def test_readme_settings_table_matches_the_schema():
    rows = _rows()
    settings = {s.key: s for s in schema(ServerSettings)}
    assert set(rows) == set(settings), "README settings table and schema name different settings"
    for key, s in settings.items():
        default, bounds = rows[key]
        assert default == json.dumps(s.default), f"README default of {key}: {default}, schema: {s.default!r}"
        want = (f"{s.minimum} .. {s.maximum}" if s.minimum is not None and s.maximum is not None
                else f">= {s.minimum}" if s.minimum is not None else "")
        assert bounds == want, f"README bounds of {key}: {bounds!r}, schema: {want!r}"
