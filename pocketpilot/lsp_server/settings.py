"""Server settings, parsed once from ``initializationOptions``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from pocketpilot.runtime.settings import EngineSettings

log = logging.getLogger(__name__)

#: smallest accepted value of each integer setting
MINIMUM = {"max_new_tokens": 1, "prefix_tokens": 1, "suffix_tokens": 0, "block_max_tokens": 1,
           "context_tokens": 0, "kv_cache_mb": 0, "debounce_ms": 0, "draft_tokens": 0}

#: largest accepted value of the integer settings that have one
MAXIMUM = {"draft_tokens": 15}


@dataclass(frozen=True)
class ServerSettings:
    """Settings a client may pass in ``initializationOptions`` (camelCase keys).

    Attributes:
        artifact: artifact id or folder to serve (``artifact``); ``None`` = the active one.
        max_new_tokens: decode at most this many tokens per one-line completion (``maxNewTokens``).
        prefix_tokens: context window before the cursor, in tokens (``prefixTokens``).
        suffix_tokens: context window after the cursor for FIM models, in tokens (``suffixTokens``).
        multiline: complete a whole block body on a blank line after a block opener (``multiline``).
        block_max_tokens: decode at most this many tokens for a block body (``blockMaxTokens``).
        context_tokens: budget for snippets from other open documents, in tokens; 0 = none
            (``contextTokens``).
        kv_cache_mb: memory for per-document KV caches, MB; 0 turns KV-cache and typed-ahead
            reuse off (``kvCacheMb``).
        draft_tokens: prompt-lookup draft tokens checked per decode step (speculative decoding,
            same output); 0 = off (``draftTokens``).
        debounce_ms: wait this long (ms) before starting a completion and drop it if a newer
            request for the document arrived meanwhile; 0 = no wait, clients debounce
            (``debounceMs``).
    """

    artifact: str | None = None
    max_new_tokens: int = EngineSettings.max_new_tokens
    prefix_tokens: int = EngineSettings.prefix_tokens
    suffix_tokens: int = EngineSettings.suffix_tokens
    multiline: bool = EngineSettings.multiline
    block_max_tokens: int = EngineSettings.block_max_tokens
    context_tokens: int = EngineSettings.context_tokens
    kv_cache_mb: int = EngineSettings.kv_cache_mb
    draft_tokens: int = EngineSettings.draft_tokens
    debounce_ms: int = 0

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
            elif isinstance(f.default, bool):
                if isinstance(value, bool):
                    values[f.name] = value
                else:
                    problems.append(f"setting {key!r} must be true or false, got {value!r}; using {f.default}")
            elif isinstance(value, int) and not isinstance(value, bool) and MINIMUM[f.name] <= value <= MAXIMUM.get(f.name, value):
                values[f.name] = value
            else:
                bound = f" and <= {MAXIMUM[f.name]}" if f.name in MAXIMUM else ""
                problems.append(f"setting {key!r} must be an integer >= {MINIMUM[f.name]}{bound}, got {value!r}; "
                                f"using {f.default}")
        return cls(**values), problems

    def engine_settings(self) -> EngineSettings:
        """The :class:`EngineSettings` these settings ask for."""
        return EngineSettings(max_new_tokens=self.max_new_tokens, prefix_tokens=self.prefix_tokens,
                              suffix_tokens=self.suffix_tokens, multiline=self.multiline,
                              block_max_tokens=self.block_max_tokens, context_tokens=self.context_tokens,
                              kv_cache_mb=self.kv_cache_mb, draft_tokens=self.draft_tokens)
