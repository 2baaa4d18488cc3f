"""Open documents as the client sent them: no disk reads, LSP's own line breaks, clean text.

pygls's workspace reads a never-opened URI from disk (``file:///dev/stdin`` would read the
server's own stdin) and splits lines with ``str.splitlines``, which also breaks at U+2028,
U+0085, form feeds and more. Here:

- :class:`SafeWorkspace` holds only what ``textDocument/didOpen`` gave it; any other URI
  raises :class:`~pocketpilot.errors.DocumentNotOpenError`.
- :class:`SafeTextDocument` positions count lines as LSP does (``\\n``, ``\\r\\n`` and ``\\r``
  only) and characters in the negotiated position encoding (UTF-16 code units by default,
  UTF-8 bytes or UTF-32 code points); a line index is kept per text so a 5 MB document costs
  one scan per change, not one per position.
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


def line_starts(text: str) -> list[int]:
    """Offsets (code points) where each LSP line of ``text`` starts; ``[0]`` for an empty text."""
    if "\r" not in text:  # the usual case: one C-speed split
        starts, pos = [0], 0
        for part in text.split("\n")[:-1]:
            pos += len(part) + 1
            starts.append(pos)
        return starts
    return [0, *(m.end() for m in LINE_BREAK.finditer(text))]


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
        self._index: tuple[str, list[int]] | None = None

    @property
    def source(self) -> str:
        """The document's text (never read from disk)."""
        return self._source or ""

    @property
    def starts(self) -> list[int]:
        """Offsets where each line starts (see :func:`line_starts`), cached for the current text."""
        text = self.source
        if self._index is None or self._index[0] is not text:
            self._index = (text, line_starts(text))
        return self._index[1]

    @property
    def lines(self) -> Sequence[str]:
        """The lines with their terminators, split only at ``\\n``, ``\\r\\n`` and ``\\r``."""
        text, starts = self.source, self.starts
        return tuple(text[a:b] for a, b in zip(starts, [*starts[1:], len(text)]))

    @property
    def line_count(self) -> int:
        """Lines in the document (a text ending in a line break has an empty last line)."""
        return len(self.starts)

    def line_text(self, line: int) -> str:
        """Line ``line`` (0-based) without its terminator.

        Raises:
            PositionError: no such line.
        """
        starts, text = self.starts, self.source
        if not 0 <= line < len(starts):
            raise PositionError(f"line {line} is outside {self.uri} ({len(starts)} lines; positions are 0-based)")
        end = starts[line + 1] if line + 1 < len(starts) else len(text)
        part = text[starts[line]:end]
        if part.endswith("\r\n"):
            return part[:-2]
        return part[:-1] if part.endswith(("\n", "\r")) else part

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
        return self.starts[position.line] + index

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
        return self.starts[position.line] + (len(line) if index is None else index)

    def position_at(self, offset: int) -> types.Position:
        """The client position of an offset (code points)."""
        offset = max(0, min(offset, len(self.source)))
        line = bisect.bisect_right(self.starts, offset) - 1
        start = self.starts[line]
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
