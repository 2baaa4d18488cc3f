"""Context from other open documents: the chunks most similar to the code at the cursor.

Copilot-style "neighbouring tabs": each other open document is cut into windows of lines,
each window is scored by the Jaccard similarity of its identifier set with the identifiers
just before the cursor, and the best windows go into the prompt as comments. No torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HASH_COMMENT = {"python", "shellscript", "ruby", "perl", "r", "yaml", "toml", "makefile", "dockerfile",
                 "powershell", "elixir", "julia", "nim", "coffeescript"}
_DASH_COMMENT = {"sql", "lua", "haskell", "ada"}


def identifiers(text: str) -> set[str]:
    """The set of identifiers (``[A-Za-z_][A-Za-z0-9_]*``) in ``text``."""
    return set(_IDENT.findall(text))


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity ``|a & b| / |a | b|`` (0.0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def comment_prefix(language: str | None) -> str:
    """Line-comment marker for an LSP language id: ``#``, ``--`` or ``//`` (the default)."""
    if language in _HASH_COMMENT:
        return "#"
    if language in _DASH_COMMENT:
        return "--"
    return "//"


@dataclass(frozen=True)
class Snippet:
    """A window of lines from another document.

    Attributes:
        path: the document's display path (file name or URI).
        first_line: 0-based index of the window's first line.
        text: the window's lines joined by newlines.
        score: Jaccard similarity with the query, 0..1.
    """

    path: str
    first_line: int
    text: str
    score: float

    def render(self, language: str | None) -> str:
        """The snippet as comment lines, as Copilot-style prompts put it before the prefix."""
        c = comment_prefix(language)
        body = "\n".join(f"{c} {line}".rstrip() for line in self.text.split("\n"))
        return f"{c} Compare this snippet from {self.path}:\n{body}\n"


def best_snippets(
    query: str,
    documents: Iterable[tuple[str, str]],
    *,
    window_lines: int = 20,
    stride: int = 10,
    max_snippets: int = 3,
    min_score: float = 0.05,
) -> list[Snippet]:
    """The windows of ``documents`` most similar to ``query``, best first.

    Args:
        query: the code just before the cursor (e.g. its last 20 lines).
        documents: ``(path, text)`` of the other open documents.
        window_lines: lines per window.
        stride: lines between window starts.
        max_snippets: at most this many windows, at most one per document.
        min_score: windows less similar than this (Jaccard) are never used.
    """
    wanted = identifiers(query)
    if not wanted:
        return []
    best: list[Snippet] = []
    for path, text in documents:
        lines = text.split("\n")
        top: Snippet | None = None
        for start in range(0, max(1, len(lines) - window_lines + stride), stride):
            chunk = "\n".join(lines[start : start + window_lines]).strip("\n")
            if not chunk.strip():
                continue
            score = jaccard(wanted, identifiers(chunk))
            if score >= min_score and (top is None or score > top.score):
                top = Snippet(path, start, chunk, score)
        if top is not None:
            best.append(top)
    best.sort(key=lambda s: (-s.score, s.path, s.first_line))
    return best[:max_snippets]
