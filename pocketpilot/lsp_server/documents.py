"""Open documents as the client sent them: no disk reads, LSP's own line breaks, clean text.

pygls's workspace reads a never-opened URI from disk (``file:///dev/stdin`` would read the
server's own stdin) and splits lines with ``str.splitlines``, which also breaks at U+2028,
U+0085, form feeds and more. Here:

- :class:`SafeWorkspace` holds only what ``textDocument/didOpen`` gave it; any other URI
  raises :class:`~pocketpilot.errors.DocumentNotOpenError`.
- :class:`SafeTextDocument` positions count lines as LSP does (``\\n``, ``\\r\\n`` and ``\\r``
  only) and characters in the negotiated position encoding (UTF-16 code units by default,
  UTF-8 bytes or UTF-32 code points); a :class:`LineIndex` per text costs a 5 MB document a
  few milliseconds per change, not a Python loop over its lines per position.
- Lone surrogates (``"\\ud83d"`` in the JSON: not text, and the tokenizer rejects them) are
  replaced by U+FFFD when text enters a document; both are one unit in UTF-16 and UTF-32, so
  positions stay the client's.
"""

from __future__ import annotations

import bisect
import re
from typing import Sequence
from urllib.parse import unquote

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

from pocketpilot.errors import DocumentNotOpenError, PositionError

#: LSP's line terminators (and nothing else: not U+2028, U+0085 or form feeds)
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (a Python ``str`` holds a surrogate
    only when it is unpaired: JSON's escaped pairs decode to one code point)."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


class LineIndex:
    """Where the LSP lines of one text start, found in C-speed scans.

    The text is cut into chunks of about :data:`CHUNK` characters (never between ``\r`` and
    ``\n``) and the line breaks of each are counted with ``str.count``: a few milliseconds for
    a 5 MB text. A line's start is then found from its chunk's start, within one chunk.

    Args:
        text: the document's text.
    """

    #: characters per chunk
    CHUNK = 1 << 16

    def __init__(self, text: str) -> None:
        self.text = text
        self._cr = "\r" in text
        bounds, counts, pos, total = [0], [0], 0, 0
        while pos < len(text):
            end = min(len(text), pos + self.CHUNK)
            if self._cr and end < len(text) and text[end - 1] == "\r" and text[end] == "\n":
                end += 1
            total += self._breaks(pos, end)
            bounds.append(end)
            counts.append(total)
            pos = end
        self._bounds, self._counts = bounds, counts  # _counts[i]: line breaks in text[:_bounds[i]]
        self.line_count = total + 1  # a text ending in a line break has an empty last line

    def _breaks(self, start: int, end: int) -> int:
        """Line breaks in ``text[start:end]`` (``\r\n`` counts once)."""
        text = self.text
        if not self._cr:
            return text.count("\n", start, end)
        return text.count("\n", start, end) + text.count("\r", start, end) - text.count("\r\n", start, end)

    def _next_break_end(self, pos: int) -> int:
        """Offset just after the first line break at or after ``pos`` (``len(text)`` if none)."""
        if not self._cr:
            found = self.text.find("\n", pos)
            return len(self.text) if found < 0 else found + 1
        m = LINE_BREAK.search(self.text, pos)
        return len(self.text) if m is None else m.end()

    def line_start(self, line: int) -> int:
        """Offset where line ``line`` starts (0 <= line < :attr:`line_count`)."""
        if line <= 0:
            return 0
        i = bisect.bisect_left(self._counts, line) - 1  # the chunk holding the line'th break
        pos, seen = self._bounds[i], self._counts[i]
        while seen < line:
            pos, seen = self._next_break_end(pos), seen + 1
        return pos

    def line_end(self, line: int) -> int:
        """Offset where line ``line``'s text ends (before its terminator)."""
        start = self.line_start(line)
        end = self._next_break_end(start)
        if end - 2 >= start and self.text.startswith("\r\n", end - 2):
            return end - 2
        return end - 1 if end > start and self.text[end - 1] in "\r\n" else end

    def line_of(self, offset: int) -> int:
        """The line holding ``offset`` (0 <= offset <= len(text))."""
        i = bisect.bisect_right(self._bounds, offset) - 1
        inside_crlf = self._cr and 0 < offset < len(self.text) and self.text.startswith("\r\n", offset - 1)
        return self._counts[i] + self._breaks(self._bounds[i], offset) - inside_crlf


def units(text: str, encoding: str) -> int:
    """Length of ``text`` in the client's position units: ``utf-16`` code units, ``utf-8`` bytes
    or ``utf-32`` code points."""
    if encoding == types.PositionEncodingKind.Utf32:
        return len(text)
    if encoding == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8", "surrogatepass"))
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for c in text if c > "\uffff")  # astral characters take two UTF-16 units


def index_of_units(line: str, character: int, encoding: str) -> int | None:
    """Code-point index in ``line`` of ``character`` client units, or ``None`` when it lies past
    the line's end or inside one character (half a UTF-16 surrogate pair, inside a UTF-8 sequence)."""
    if encoding == types.PositionEncodingKind.Utf32 or line.isascii():
        return character if character <= len(line) else None
    count = 0
    for i, c in enumerate(line):
        if count == character:
            return i
        if count > character:
            return None
        count += units(c, encoding)
    return len(line) if count == character else None


class SafeTextDocument(TextDocument):
    """An open document: its text as the client sent it (never read from disk), lines as LSP
    counts them, positions in the client's encoding.

    Args:
        uri: the document's URI.
        source: its text (lone surrogates are replaced by U+FFFD).
        version: the client's version number.
        language_id: LSP language id (``"python"`` ...).
        encoding: the negotiated position encoding (``"utf-16"``, ``"utf-8"`` or ``"utf-32"``).

    Attributes:
        last_change_end: offset (code points) just after the text the last change inserted, or
            ``None`` when the last change replaced the whole document.
    """

    def __init__(self, uri: str, source: str | None = None, version: int | None = None,
                 language_id: str | None = None, encoding: str = types.PositionEncodingKind.Utf16,
                 sync_kind: types.TextDocumentSyncKind = types.TextDocumentSyncKind.Incremental) -> None:
        super().__init__(uri, source=clean_text(source or ""), version=version, language_id=language_id,
                         sync_kind=sync_kind)
        self.encoding = encoding
        self.last_change_end: int | None = None
        self._index: LineIndex | None = None

    @property
    def source(self) -> str:
        """The document's text (never read from disk)."""
        return self._source or ""

    @property
    def index(self) -> LineIndex:
        """The :class:`LineIndex` of the current text (built once per text)."""
        if self._index is None or self._index.text is not self.source:
            self._index = LineIndex(self.source)
        return self._index

    @property
    def lines(self) -> Sequence[str]:
        """The lines with their terminators, split only at ``\n``, ``\r\n`` and ``\r`` (a copy of
        the whole text: for pygls's API; positions use :attr:`index`)."""
        text = self.source
        ends = [m.end() for m in LINE_BREAK.finditer(text)]
        return tuple(text[a:b] for a, b in zip([0, *ends], [*ends, len(text)]))

    @property
    def line_count(self) -> int:
        """Lines in the document (a text ending in a line break has an empty last line)."""
        return self.index.line_count

    def line_start(self, line: int) -> int:
        """Offset (code points) where line ``line`` starts.

        Raises:
            PositionError: no such line.
        """
        self._check_line(line)
        return self.index.line_start(line)

    def line_text(self, line: int) -> str:
        """Line ``line`` (0-based) without its terminator.

        Raises:
            PositionError: no such line.
        """
        self._check_line(line)
        return self.source[self.index.line_start(line):self.index.line_end(line)]

    def _check_line(self, line: int) -> None:
        if not 0 <= line < self.line_count:
            raise PositionError(f"line {line} is outside {self.uri} ({self.line_count} lines; positions are 0-based)")

    def offset_at_position(self, position: types.Position) -> int:
        """Offset (code points) of a client position.

        Raises:
            PositionError: the line is past the document's last, the character past the line's
                end, or the position falls inside one character.
        """
        line = self.line_text(position.line)
        index = index_of_units(line, position.character, self.encoding)
        if index is None:
            raise PositionError(f"character {position.character} is outside line {position.line} of {self.uri} "
                                f"({units(line, self.encoding)} {self.encoding} units)")
        return self.index.line_start(position.line) + index

    def clamped_offset(self, position: types.Position) -> int:
        """Offset of a position clamped as LSP asks for edits: a character past the line's end
        means the line's end, a line past the last one the document's end."""
        if position.line >= self.line_count:
            return len(self.source)
        line = self.line_text(position.line)
        index = index_of_units(line, position.character, self.encoding)
        while index is None and position.character < units(line, self.encoding):  # inside a character: before it
            position = types.Position(line=position.line, character=position.character - 1)
            index = index_of_units(line, position.character, self.encoding)
        return self.index.line_start(position.line) + (len(line) if index is None else index)

    def position_at(self, offset: int) -> types.Position:
        """The client position of an offset (code points)."""
        offset = max(0, min(offset, len(self.source)))
        line = self.index.line_of(offset)
        start = self.index.line_start(line)
        return types.Position(line=line, character=units(self.source[start:offset], self.encoding))

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        """Apply a ranged change (clamped as LSP asks, see :meth:`clamped_offset`).

        Raises:
            PositionError: the range's start lies after its end.
        """
        start, end = self.clamped_offset(change.range.start), self.clamped_offset(change.range.end)
        if start > end:
            raise PositionError(f"change range of {self.uri} starts after it ends "
                                f"({change.range.start.line}:{change.range.start.character} > "
                                f"{change.range.end.line}:{change.range.end.character})")
        text = clean_text(change.text)
        self._source = self.source[:start] + text + self.source[end:]
        self.last_change_end = start + len(text)

    def _apply_full_change(self, change: types.TextDocumentContentChangeEvent) -> None:
        self._source = clean_text(change.text)
        self.last_change_end = None


class SafeWorkspace(Workspace):
    """pygls's :class:`Workspace` holding only opened documents (:class:`SafeTextDocument`).

    :meth:`get_text_document` of a URI that was never opened raises
    :class:`~pocketpilot.errors.DocumentNotOpenError` instead of reading the file.
    """

    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> SafeTextDocument:
        return SafeTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                                encoding=str(self.position_encoding or types.PositionEncodingKind.Utf16),
                                sync_kind=self._sync_kind)

    def get_text_document(self, doc_uri: str) -> SafeTextDocument:
        """The open document at ``doc_uri``.

        Raises:
            DocumentNotOpenError: the client never opened it (or closed it).
        """
        doc = self.text_documents.get(unquote(doc_uri))
        if doc is None:
            raise DocumentNotOpenError(f"document not open: {doc_uri} (send textDocument/didOpen first)")
        return doc

    def update_text_document(self, text_doc: types.VersionedTextDocumentIdentifier,
                             change: types.TextDocumentContentChangeEvent) -> None:
        """Apply one change to an open document.

        Raises:
            DocumentNotOpenError: the document is not open.
            PositionError: the change's range starts after it ends.
        """
        doc = self.get_text_document(text_doc.uri)
        doc.apply_change(change)
        doc.version = text_doc.version


def open_document(workspace: Workspace, uri: str) -> SafeTextDocument:
    """The open document at ``uri`` as a :class:`SafeTextDocument` (a plain pygls document, as
    in-process tests put them, is viewed as one).

    Raises:
        DocumentNotOpenError: the client never opened it.
    """
    doc = workspace.text_documents.get(unquote(uri))
    if doc is None:
        raise DocumentNotOpenError(f"document not open: {uri} (send textDocument/didOpen first)")
    if isinstance(doc, SafeTextDocument):
        return doc
    view = SafeTextDocument(doc.uri, source=doc._source or "", version=doc.version, language_id=doc.language_id,
                            encoding=str(workspace.position_encoding or types.PositionEncodingKind.Utf16))
    return view
