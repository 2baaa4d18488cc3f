"""Server settings, parsed once from ``initializationOptions`` with cattrs.

The engine's settings and the schema (name, type, default, bounds, description of each) are
declared in :mod:`pocketpilot.runtime.settings`; this module adds the settings only the
server reads and the parser. ``vscode-client/package.json`` must contribute the same settings
with the same facts (``tests/unit/test_vscode_settings.py``); the extension reads its bounds
from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from pocketpilot.runtime.settings import EngineSettings, Setting, schema, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings(EngineSettings):
    """Settings a client may pass in ``initializationOptions`` (camelCase keys): the engine's
    (:class:`EngineSettings`) plus ``artifact``, ``debounceMs``, ``warmUp``, ``speculate`` and
    ``maxContextDocumentChars``. :func:`schema` lists each one's type, default, bounds and description.

    Raises:
        ValueError: a value outside its bounds or of the wrong type (on creation; :meth:`parse`
            never raises).
    """

    artifact: str | None = setting(None, "Artifact id or folder to serve; empty (null) serves the active artifact "
                                         "(the last one `pocketpilot compress` made).")
    debounce_ms: int = setting(0, "Server-side wait (ms) before starting a suggestion, dropped if you type on; "
                                  "VS Code already debounces, so 0 is usual.", minimum=0)
    warm_up: bool = setting(True, "While the editor is idle, compute the prompt of an opened or focused document "
                                  "and of the cursor after a typing pause, so its first suggestion is fast.")
    speculate: bool = setting(True, "While the editor is idle after a suggestion is shown, compute the one that "
                                    "would follow its acceptance, so accepting is answered at once.")
    # scanning a document for snippets is linear in its length (~80 ms per million characters here), and
    # happens again after each change to it: a generated or minified file must not slow every suggestion
    max_context_document_chars: int = setting(500_000, "Other open documents longer than this (characters) are "
                                                       "not searched for snippets, so huge files do not slow "
                                                       "suggestions down.", minimum=0, maximum=100_000_000)

    @classmethod
    def parse(cls, options: object) -> tuple["ServerSettings", list[str]]:
        """Parse ``initializationOptions``; bad entries are skipped (their default is used), never fatal.

        Unknown keys are logged (warning) and ignored.

        Returns:
            ``(settings, problems)``: one line per bad value, naming the setting (camelCase),
            what it must be, the value given and the default used, e.g.
            ``setting 'maxNewTokens' must be an integer >= 1, got 0; using 48``.
        """
        if options is None:
            return cls(), []
        if not isinstance(options, dict):
            return cls(), [f"initializationOptions must be an object, got {type(options).__name__}; using defaults"]
        known = {s.key: s for s in SCHEMA}
        unknown = [k for k in options if k not in known]
        if unknown:
            log.warning("unknown settings ignored: %s (known: %s)", ", ".join(map(repr, unknown)), ", ".join(known))
        given = {k: v for k, v in options.items() if k in known}
        try:
            return _CONVERTER.structure(given, cls), []
        except ClassValidationError as exc:
            failed = {note.name: str(err) for err, note in exc.group_exceptions()[0]}
        bad = [s for s in SCHEMA if s.name in failed]
        problems = [f"setting {s.key!r} {failed[s.name]}, got {given[s.key]!r}; using {_shown(s.default)}" for s in bad]
        rest = {k: v for k, v in given.items() if known[k].name not in failed}
        return _CONVERTER.structure(rest, cls), problems

    def engine_settings(self) -> EngineSettings:
        """The :class:`EngineSettings` these settings ask for (the engine's fields, same values)."""
        return EngineSettings(**{s.name: getattr(self, s.name) for s in schema(EngineSettings)})


#: every server setting, in field order (the engine's first)
SCHEMA: list[Setting] = schema(ServerSettings)


def _shown(default: Any) -> str:
    """A default as the problem line shows it (``None`` is the client's ``null``)."""
    return "null (the default)" if default is None else str(default)


def _strict(s: Setting) -> Callable[[Any, Any], Any]:
    """A cattrs structure hook accepting only values :meth:`Setting.check` accepts (no coercion:
    ``"5"``, ``1.5`` and ``true`` are not integers); an empty string means ``None``."""

    def structure(value: Any, _type: Any) -> Any:
        reason = s.check(value)
        if reason is not None:
            raise ValueError(reason)
        return (value or None) if isinstance(value, str) else value

    return structure


def _make_converter() -> cattrs.Converter:
    """A converter structuring camelCase dicts into :class:`ServerSettings`, one strict hook per
    setting, reporting every failing attribute (detailed validation)."""
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    overrides = {s.name: override(rename=s.key, struct_hook=_strict(s)) for s in SCHEMA}
    conv.register_structure_hook(ServerSettings, make_dict_structure_fn(ServerSettings, conv, **overrides))
    return conv


_CONVERTER = _make_converter()
