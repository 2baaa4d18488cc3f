"""Server settings, parsed once from ``initializationOptions``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from pocketpilot.runtime.settings import EngineSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """Settings a client may pass in ``initializationOptions`` (camelCase keys).

    Attributes:
        artifact: artifact id or folder to serve (``artifact``); ``None`` = the active one.
        max_new_tokens: decode at most this many tokens per completion (``maxNewTokens``).
        prefix_tokens: context window before the cursor, in tokens (``prefixTokens``).
        suffix_tokens: context window after the cursor for FIM models, in tokens (``suffixTokens``).
    """

    artifact: str | None = None
    max_new_tokens: int = EngineSettings.max_new_tokens
    prefix_tokens: int = EngineSettings.prefix_tokens
    suffix_tokens: int = EngineSettings.suffix_tokens

    @staticmethod
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(w.title() for w in rest)

    @classmethod
    def parse(cls, options: object) -> tuple["ServerSettings", list[str]]:
        """Parse ``initializationOptions``; bad or unknown entries are skipped, never fatal.

        Returns ``(settings, problems)``: ``problems`` are one-line messages for the log.
        """
        values: dict = {}
        problems: list[str] = []
        if options is None:
            return cls(), problems
        if not isinstance(options, dict):
            return cls(), [f"initializationOptions must be an object, got {type(options).__name__}; using defaults"]
        known = {cls.camel(f.name): f for f in fields(cls)}
        for key, value in options.items():
            f = known.get(key)
            if f is None:
                problems.append(f"unknown setting {key!r} ignored (known: {', '.join(known)})")
            elif f.name == "artifact":
                if value is None or isinstance(value, str):
                    values[f.name] = value or None
                else:
                    problems.append("setting 'artifact' must be a string; using the active artifact")
            elif isinstance(value, int) and not isinstance(value, bool) and value >= (0 if f.name == "suffix_tokens" else 1):
                values[f.name] = value
            else:
                problems.append(f"setting {key!r} must be a positive integer, got {value!r}; using {f.default}")
        return cls(**values), problems

    def engine_settings(self) -> EngineSettings:
        """The :class:`EngineSettings` these settings ask for."""
        return EngineSettings(max_new_tokens=self.max_new_tokens, prefix_tokens=self.prefix_tokens,
                              suffix_tokens=self.suffix_tokens)
