"""Post-processing of raw model output into an insertable completion (no torch import)."""

from __future__ import annotations

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
TAB_WIDTH = 4


def bracket_depth(text: str) -> int:
    """Net count of open minus close brackets ``()[]{}`` in ``text`` (strings are not parsed)."""
    return sum(1 for c in text if c in _OPEN) - sum(1 for c in text if c in _CLOSE)


def first_line(text: str) -> str:
    """The text up to (not including) the first newline."""
    return text.split("\n", 1)[0]


def indentation(line: str) -> str:
    """The leading whitespace of ``line``."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_width(ws: str) -> int:
    """Columns taken by leading whitespace, a tab counting :data:`TAB_WIDTH` columns."""
    return sum(TAB_WIDTH if c == "\t" else 1 for c in ws)


def open_brackets(text: str, language: str | None = None) -> list[str]:
    """Stack of brackets still open at the end of ``text`` (the innermost last).

    Skips single-line string literals (``'...'``, ``"..."``, backquotes) and line comments
    (``#`` for Python and shell-like languages, ``//`` otherwise); a closer with no opener is
    ignored, so a window that starts inside a bracket does no harm. Best effort, not a parser.
    """
    hash_comments = language in (None, "python", "shellscript", "ruby", "perl", "r", "yaml", "toml", "makefile")
    stack: list[str] = []
    for line in text.split("\n"):
        quote = None
        i = 0
        while i < len(line):
            c = line[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = None
            elif c in "'\"`":
                quote = c
            elif (c == "#" and hash_comments) or (c == "/" and line[i : i + 2] == "//" and not hash_comments):
                break
            elif c in _OPEN:
                stack.append(c)
            elif c in _CLOSE and stack and stack[-1] == _CLOSE[c]:
                stack.pop()
            i += 1
    return stack


def cut_unmatched_closers(completion: str, still_open: list[str]) -> str:
    """Cut ``completion`` before the first closing bracket that closes nothing open.

    ``still_open`` is :func:`open_brackets` of the text before the cursor. A model that
    writes ``x])`` where only ``[`` is open would leave a stray ``)``; this keeps ``x]``.
    """
    stack = list(still_open)
    quote = None
    for i, c in enumerate(completion):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"`":
            quote = c
        elif c in _OPEN:
            stack.append(c)
        elif c in _CLOSE:
            if not stack or stack[-1] != _CLOSE[c]:
                return completion[:i].rstrip()
            stack.pop()
        elif c == "\n":
            quote = None
    return completion


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


def block_opener(prefix: str, suffix: str, language: str | None = None) -> str | None:
    """Indentation of the block opener when the cursor starts a block body, else ``None``.

    The cursor starts a block body when its line is blank (before and after the cursor) and
    the previous non-blank line ends with a block opener: ``:`` for Python, ``{`` for other
    languages, either when the language is unknown (``None``).
    """
    head, _, line_prefix = prefix.rpartition("\n")
    if line_prefix.strip() or first_line(suffix).strip():
        return None
    openers = ":" if language == "python" else ("{" if language else ":{")
    for line in reversed(head.split("\n")[-20:]):
        if line.strip():
            return indentation(line) if line.rstrip()[-1] in openers else None
    return None


def block_end(raw: str, line_prefix: str, opener_indent: str) -> int | None:
    """Offset in ``raw`` where a block body ends, or ``None`` while it has not ended.

    ``raw`` is generated text that starts at the cursor, on a line that already holds
    ``line_prefix``. The body ends at the start of the first later line whose first
    non-blank character sits at or left of the opener's indentation. The current line is
    never cut: if it is not indented past the opener, the body is that line alone.
    """
    limit = indent_width(opener_indent)
    lines = raw.split("\n")
    if (line_prefix + lines[0]).strip() and indent_width(indentation(line_prefix + lines[0])) <= limit and len(lines) > 1:
        return len(lines[0])
    offset = len(lines[0]) + 1
    for line in lines[1:]:
        if line.strip() and indent_width(indentation(line)) <= limit:
            return offset
        offset += len(line) + 1
    return None


def trim_repeated_lines(completion: str, suffix: str) -> str:
    """Cut a multi-line completion where it starts repeating the next non-blank line of ``suffix``."""
    following = next((ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()), None)
    if following is None or "\n" not in completion:
        return completion
    lines = completion.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == following:
            return "\n".join(lines[:i]).rstrip()
    return completion


def match_indentation(completion: str, uses_tabs: bool) -> str:
    """Rewrite the leading whitespace of the completion's later lines in the document's style.

    Tabs become :data:`TAB_WIDTH` spaces in a space-indented document, and runs of
    :data:`TAB_WIDTH` spaces become tabs in a tab-indented one.
    """
    lines = completion.split("\n")
    for i in range(1, len(lines)):
        ws = indentation(lines[i])
        width = indent_width(ws)
        new = "\t" * (width // TAB_WIDTH) + " " * (width % TAB_WIDTH) if uses_tabs else " " * width
        lines[i] = new + lines[i][len(ws) :]
    return "\n".join(lines)


def close_brace_block(body: str, still_open: list[str], suffix: str, opener_indent: str) -> str:
    """Append the ``}`` that closes a ``{`` block body unless the suffix already closes it.

    ``still_open`` is :func:`open_brackets` of the text before the cursor; the block is left
    as it is when its ``{`` is closed inside ``body`` or the suffix's next non-blank line
    starts with ``}``.
    """
    if not still_open or still_open[-1] != "{":
        return body
    stack = list(still_open)
    for c in body:
        if c in _OPEN:
            stack.append(c)
        elif c in _CLOSE and stack and stack[-1] == _CLOSE[c]:
            stack.pop()
    if len(stack) < len(still_open):
        return body
    following = next((ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()), "")
    if following.startswith("}"):
        return body
    return body + "\n" + opener_indent + "}"


def finalize(
    raw: str,
    line_prefix: str,
    suffix: str,
    multiline: bool = False,
    *,
    still_open: list[str] | None = None,
    opener_indent: str | None = None,
    uses_tabs: bool = False,
    truncated: bool = False,
) -> str:
    """Turn raw decoded text into the completion to insert.

    Single-line mode (``opener_indent is None`` and not ``multiline``) keeps the first line.
    Block mode (``opener_indent`` given) keeps the block body up to :func:`block_end`, drops an
    unfinished last line when decoding hit the token limit (``truncated``), stops where it
    repeats the suffix and rewrites indentation to the document's style (``uses_tabs``).
    ``multiline`` keeps all the text (used by callers that want raw multi-line output).
    Then closing brackets that close nothing (``still_open``, see :func:`open_brackets`) are
    cut, the overlap with the suffix is trimmed, trailing whitespace is removed, and a
    completion that only repeats the suffix (or is blank) becomes ``""``.
    """
    if opener_indent is not None:
        end = block_end(raw, line_prefix, opener_indent)
        text = raw if end is None else raw[:end]
        if truncated and end is None and "\n" in text.rstrip("\n"):
            text = text.rsplit("\n", 1)[0]
        text = match_indentation(trim_repeated_lines(text.rstrip(), suffix), uses_tabs)
    else:
        text = raw if multiline else first_line(raw)
    text = text.rstrip()
    if still_open is not None:
        text = cut_unmatched_closers(text, still_open)
        if opener_indent is not None and text.strip():
            text = close_brace_block(text, still_open, suffix, opener_indent)
    text = trim_suffix_overlap(text, line_prefix, suffix)
    if not text.strip():
        return ""
    if "\n" not in text and first_line(suffix).strip().startswith(text.strip()):
        return ""  # everything proposed is already there after the cursor
    return text
