"""Post-processing of raw model output into an insertable completion."""

from __future__ import annotations

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def bracket_depth(text: str) -> int:
    """Net count of open minus close brackets ``()[]{}`` in ``text`` (strings are not parsed)."""
    return sum(1 for c in text if c in _OPEN) - sum(1 for c in text if c in _CLOSE)


def first_line(text: str) -> str:
    """The text up to (not including) the first newline."""
    return text.split("\n", 1)[0]


def trim_suffix_overlap(completion: str, line_prefix: str, suffix: str) -> str:
    """Drop the end of ``completion`` where it repeats the start of ``suffix``.

    If the model writes ``x)`` while the cursor sits before ``)``, inserting it would give
    ``x))``. The longest overlap between the end of the completion's last line and the start
    of the suffix's first line is removed, unless that would leave the line's brackets
    (``line_prefix + completion + suffix line``) less balanced than keeping it.

    Args:
        completion: the text the model proposes to insert at the cursor.
        line_prefix: the current line up to the cursor.
        suffix: the document text after the cursor.
    """
    rest = first_line(suffix).rstrip()
    if not rest or not completion:
        return completion
    for k in range(min(len(rest), len(completion)), 0, -1):
        if completion.endswith(rest[:k]):
            trimmed = completion[:-k]
            kept_balance = abs(bracket_depth(line_prefix + completion + rest))
            trimmed_balance = abs(bracket_depth(line_prefix + trimmed + rest))
            return trimmed if trimmed_balance <= kept_balance else completion
    return completion


def finalize(raw: str, line_prefix: str, suffix: str, multiline: bool = False) -> str:
    """Turn raw decoded text into the completion to insert.

    Single-line mode keeps the first line; trailing whitespace is removed; a completion that
    only repeats the suffix (or is blank) becomes ``""``.
    """
    text = raw if multiline else first_line(raw)
    text = text.rstrip()
    text = trim_suffix_overlap(text, line_prefix, suffix)
    if not text.strip():
        return ""
    if first_line(suffix).strip().startswith(text.strip()):
        return ""  # everything proposed is already there after the cursor
    return text
