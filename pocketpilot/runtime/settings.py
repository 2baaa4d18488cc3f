"""The settings schema and the engine's settings (no torch import, so the server can parse
settings before loading a model).

Every setting is declared once, as a dataclass field made by :func:`setting`: its name, type,
default, bounds and user-facing description. :func:`schema` lists those facts as
:class:`Setting` records; the server's parser (:mod:`pocketpilot.lsp_server.settings`), the
engine's validation below, and the test that checks ``vscode-client/package.json`` all read
them. The engine settings live here; the server adds only its own (``artifact``,
``debounce_ms``), because ``runtime`` never imports ``lsp_server``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

#: key of a field's :class:`Setting` facts in ``dataclasses.Field.metadata``
META_KEY = "pocketpilot.setting"


@dataclass(frozen=True)
class Setting:
    """Everything known about one setting, declared once (see :func:`setting`).

    Attributes:
        name: Python field name (snake_case).
        key: client key (camelCase): ``initializationOptions`` and ``pocketpilot.<key>`` in VS Code.
        type: the Python type: ``int``, ``bool``, ``str`` (one of ``choices``) or ``str | None``.
        default: value used when the setting is absent or bad.
        minimum: smallest accepted value (integers only); ``None`` = no lower bound.
        maximum: largest accepted value (integers only); ``None`` = no upper bound.
        description: one or two user-facing sentences, with units (Markdown).
        choices: the accepted values of a ``str`` setting (JSON schema ``enum``); ``None`` otherwise.
        unkeyed: a value at which the setting leaves every suggestion as it was before the setting
            existed (or ``ANY`` when no value changes a suggestion's text); such values are left out of
            :meth:`EngineSettings.output_key`, so stored evaluation outputs stay valid when a setting
            is added. ``None``: always part of the key.
    """

    name: str
    key: str
    type: Any
    default: Any
    minimum: int | None
    maximum: int | None
    description: str
    choices: tuple[str, ...] | None = None
    unkeyed: Any = None

    @property
    def json_type(self) -> str | list[str]:
        """The JSON-schema ``type`` of the setting, as written in ``package.json``.

        Raises:
            TypeError: the setting has a type the schema cannot describe (a declaration bug).
        """
        if self.type is bool:
            return "boolean"
        if self.type is int:
            return "integer"
        if self.type is str and self.choices:
            return "string"
        if self.type == (str | None):
            return ["string", "null"]
        raise TypeError(f"setting {self.name}: type {self.type!r} has no JSON-schema type; use int, bool, str with choices or str | None")

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable (e.g. ``"must be an integer >= 1"``), or ``None`` if it is."""
        if self.type is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.type is int:
            low = self.minimum if self.minimum is not None else float("-inf")
            high = self.maximum if self.maximum is not None else float("inf")
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            return None if ok else "must be an integer" + self.bounds_text()
        if self.choices:
            return None if value in self.choices else "must be one of " + ", ".join(map(repr, self.choices))
        return None if value is None or isinstance(value, str) else "must be a string or null"

    def bounds_text(self) -> str:
        """The bounds as words: ``" >= 0 and <= 15"``, ``" >= 1"`` or ``""``."""
        parts = ([f">= {self.minimum}"] if self.minimum is not None else []) + (
            [f"<= {self.maximum}"] if self.maximum is not None else [])
        return (" " + " and ".join(parts)) if parts else ""


def camel(name: str) -> str:
    """``max_new_tokens`` -> ``maxNewTokens`` (the client's key for a field)."""
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


#: :attr:`Setting.unkeyed` of a setting whose value never changes a suggestion's text
ANY = "any value"


def setting(default: Any, description: str, *, minimum: int | None = None, maximum: int | None = None,
            choices: tuple[str, ...] | None = None, unkeyed: Any = None) -> Any:
    """A dataclass field declaring one setting: its default, bounds (integers) or choices (strings),
    description and, for a setting added after outputs were stored, :attr:`Setting.unkeyed`.

    The name, key and type come from the field itself when :func:`schema` reads the class.
    """
    facts = {"default": default, "minimum": minimum, "maximum": maximum, "description": description,
             "choices": choices, "unkeyed": unkeyed}
    return dataclasses.field(default=default, metadata={META_KEY: facts})


def schema(cls: type) -> list[Setting]:
    """The :class:`Setting` records of a settings dataclass, in field order.

    Raises:
        TypeError: a field of ``cls`` was not declared with :func:`setting`.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if META_KEY not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting(); declare it there")
        out.append(Setting(name=f.name, key=camel(f.name), type=hints[f.name], **f.metadata[META_KEY]))
    return out


class _Validated:
    """Mixin: ``__post_init__`` checks every field against its :class:`Setting` (type and bounds)."""

    def __post_init__(self) -> None:
        """Raises: ValueError naming the setting, its bounds and the value given."""
        for s in schema(type(self)):
            value = getattr(self, s.name)
            reason = s.check(value)
            if reason is not None:
                raise ValueError(f"{s.name} {reason}, got {value!r}")


@dataclass(frozen=True)
class EngineSettings(_Validated):
    """Decoding and context settings; each field's unit, bounds and meaning are in its
    :func:`setting` declaration (:func:`schema` lists them).

    Raises:
        ValueError: a value outside its bounds or of the wrong type (on creation).
    """

    max_new_tokens: int = setting(48, "Decode at most this many tokens per suggestion.", minimum=1)
    prefix_tokens: int = setting(512, "Context before the cursor sent to the model, in tokens.", minimum=1)
    suffix_tokens: int = setting(128, "Context after the cursor, in tokens (fill-in-the-middle models only).",
                                 minimum=0)
    multiline: bool = setting(True, "On a blank line after a block opener (`:` in Python, `{` elsewhere), "
                                    "suggest the whole block body; otherwise one line.")
    block_max_tokens: int = setting(96, "Decode at most this many tokens for a block suggestion.", minimum=1)
    context_tokens: int = setting(256, "Budget, in tokens, for snippets from other open editors that resemble "
                                       "the code at the cursor; 0 turns them off.", minimum=0)
    # MB = 10^6 bytes; the least recently used documents' caches are dropped first
    kv_cache_mb: int = setting(256, "Memory (MB) for the per-document key/value caches that make suggestions "
                                    "while typing fast; 0 turns reuse off.", minimum=0)
    # prompt-lookup drafts verified per decode step; greedy output is the same either way
    draft_tokens: int = setting(8, "Speculative decoding: tokens guessed from earlier code and checked by the "
                                   "model in one step; same suggestions, fewer steps. 0 turns it off.",
                                minimum=0, maximum=15)
    # the FIM prompt's layout; psm is the default because it is the only one that keeps Qwen2.5-Coder's
    # ES (spm and moved suffix keys measured in docs/results.md, "FIM layouts while typing")
    fim_layout: str = setting("psm", "Fill-in-the-middle prompt order: `psm` (prefix, suffix, middle: the suffix "
                                     "is recomputed after each keystroke), `psm-shift` (faster: the suffix's cached "
                                     "keys are moved instead, as llama.cpp's cache reuse does, but suggestions get "
                                     "worse) or `spm` (suffix first; only for models trained on it).",
                              choices=("psm", "psm-shift", "spm"), unkeyed="psm")
    max_latency_ms: int = setting(0, "Time budget per suggestion (ms): decoding stops when it is spent and only the "
                                     "complete lines so far are shown. 0 = no limit.", minimum=0, unkeyed=0)
    threads: int = setting(0, "CPU threads for the model; 0 = adapt at each request to the cores other programs "
                              "leave free (never more than this process may use).", minimum=0, unkeyed=ANY)

    def output_key(self) -> dict:
        """The settings that can change a suggestion's text, as a JSON-able dict (what stored
        evaluation outputs are keyed by): every field except those at their :attr:`Setting.unkeyed` value."""
        facts = {s.name: s for s in schema(type(self))}
        return {k: v for k, v in dataclasses.asdict(self).items()
                if facts[k].unkeyed is None or (facts[k].unkeyed != ANY and facts[k].unkeyed != v)}

    @property
    def keystroke_tokens(self) -> int:
        """Prompt tokens a model run after one keystroke prefills when the document's keys/values
        are reused (tokens): the typed token and ``<fim_middle>``, plus, in the psm layout, the
        suffix and ``<fim_suffix>`` behind the typed text (psm-shift moves them instead). What the
        recipe chooser budgets."""
        return 2 if self.fim_layout in ("spm", "psm-shift") else self.suffix_tokens + 3
