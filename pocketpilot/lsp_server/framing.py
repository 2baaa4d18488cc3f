"""The LSP base protocol's framing, parsed defensively (no I/O here).

A frame is a header block (``Content-Length: N`` and optionally ``Content-Type``, each line
ended by ``\\r\\n``, the block by an empty line) and then N bytes of JSON. A broken or hostile
client can send anything, so :class:`FrameParser`:

- bounds the header block (:data:`MAX_HEADER_BYTES`) and the body (:data:`MAX_BODY_BYTES`): a
  huge, negative, overflowing or non-numeric ``Content-Length`` is reported as noise, never
  allocated;
- resynchronises after noise on the next ``Content-Length:`` header, wherever it starts (after
  a frame whose ``Content-Length`` was a few bytes short, the rest of its body is skipped and
  the next frame is read);
- splits a body whose JSON turned out broken because it holds the start of a later frame (a
  ``Content-Length`` a few bytes too long) into the message and the bytes it swallowed
  (:meth:`FrameParser.reject`), and gives up waiting
  for a body that will not come when the stream went quiet with a later header in it
  (:meth:`FrameParser.stalled`).

The reader loop that feeds it and decodes the bodies is :mod:`pocketpilot.lsp_server.protocol`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

#: largest message body accepted (bytes): a 5 MB document as JSON is at most ~30 MB (every
#: character escaped); larger frames are skipped
MAX_BODY_BYTES = 64 * 1024 * 1024
#: longest header block accepted (bytes)
MAX_HEADER_BYTES = 8 * 1024
#: the header every frame starts with; resynchronisation looks for it
MARKER = b"Content-Length:"

_END = b"\r\n\r\n"
_DECODER = json.JSONDecoder()
_LENGTH = re.compile(rb"[0-9]{1,20}")
_NAME = re.compile(rb"[A-Za-z0-9-]{1,64}")  # a header name is a token


@dataclass(frozen=True)
class Body:
    """One frame's body (bytes, not yet decoded)."""

    data: bytes


@dataclass(frozen=True)
class Noise:
    """Bytes that were not a frame, and why (one line, for the log)."""

    reason: str


class FrameParser:
    """Incremental, bounded parser of the LSP base protocol (sans I/O).

    Feed it bytes with :meth:`feed` and take :class:`Body` / :class:`Noise` events from
    :meth:`next` until it returns ``None`` (more bytes needed).

    Args:
        max_body: largest ``Content-Length`` accepted (bytes).
        max_header: longest header block accepted (bytes).
    """

    def __init__(self, max_body: int = MAX_BODY_BYTES, max_header: int = MAX_HEADER_BYTES) -> None:
        self.max_body = max_body
        self.max_header = max_header
        self._buf = bytearray()
        self._pos = 0  # start of the unread bytes in _buf
        self._body_len: int | None = None  # set while waiting for a body
        self._resync = False  # dropping bytes until the next MARKER

    @property
    def pending(self) -> int:
        """Bytes received and not yet returned (bytes)."""
        return len(self._buf) - self._pos

    @property
    def waiting_for_body(self) -> bool:
        """True while a header was read and its body has not fully arrived."""
        return self._body_len is not None

    def feed(self, data: bytes) -> None:
        """Append bytes read from the stream."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> Body | Noise | None:
        """The next event, or ``None`` when more bytes are needed."""
        while True:
            if self._resync and not self._skip_to_marker():
                return None
            if self._body_len is not None:
                return self._take_body()
            event = self._take_header()
            if event is not True:
                return event

    def _take_header(self) -> Noise | None | bool:
        """Parse a header block; True when a body is now awaited, else a :class:`Noise` or ``None``."""
        end = self._buf.find(_END, self._pos, self._pos + self.max_header + len(_END))
        if end < 0:
            if self.pending > self.max_header:
                return self._noise(f"no end of header within {self.max_header} bytes")
            if self.pending >= 8 and not self._buf[self._pos:self._pos + 8].lower().startswith(b"content-"):
                return self._noise("bytes before a header")
            return None
        header = bytes(self._buf[self._pos:end])
        length, problem = self._content_length(header)
        if problem is not None:
            return self._noise(problem)
        self._pos = end + len(_END)
        self._body_len = length
        return True

    def _content_length(self, header: bytes) -> tuple[int, str | None]:
        """The ``Content-Length`` of a header block, or a reason it has none usable."""
        length = None
        for line in header.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep or not _NAME.fullmatch(name):
                return 0, f"header line {_show(line)} is not 'Name: value'"
            if name.strip().lower() == b"content-length":
                value = value.strip()
                if not _LENGTH.fullmatch(value):
                    return 0, f"Content-Length {_show(value)} is not a byte count"
                length = int(value)
        if length is None:
            return 0, "header without Content-Length"
        if length == 0:
            return 0, "Content-Length 0 (an empty message)"
        if length > self.max_body:
            return 0, f"Content-Length {length} is over the limit of {self.max_body} bytes"
        return length, None

    def _take_body(self) -> Body | None:
        assert self._body_len is not None
        if self.pending < self._body_len:
            return None
        start, self._pos = self._pos, self._pos + self._body_len
        self._body_len = None
        return Body(bytes(self._buf[start:self._pos]))

    def _noise(self, reason: str) -> Noise:
        """Report noise at the read position and resynchronise past it."""
        self._pos += 1  # never match the same header again
        self._resync = True
        return Noise(reason)

    def _skip_to_marker(self) -> bool:
        """Drop bytes up to the next :data:`MARKER`; True when one is at the read position."""
        found = self._buf.find(MARKER, self._pos)
        if found < 0:
            self._pos = max(self._pos, len(self._buf) - (len(MARKER) - 1))  # a marker may be cut across reads
            return False
        self._pos = found
        self._resync = False
        return True

    def reject(self, body: Body) -> Body | None:
        """Recover from a just-returned ``body`` that is not JSON because its ``Content-Length``
        was too long and it swallowed the start of the next frame.

        When it starts with a complete JSON value, the bytes after the value are given back to
        be read again and the value is returned (as a :class:`Body`); otherwise the part from a
        later frame's header on, if any, is given back and ``None`` returned.
        """
        try:
            text = body.data.decode("utf-8")
            start = len(text) - len(text.lstrip())
            _, end = _DECODER.raw_decode(text, start)
        except (UnicodeDecodeError, ValueError, RecursionError):
            at = body.data.find(MARKER, 1)
            if at >= 0:
                self._buf[self._pos:self._pos] = body.data[at:]
            return None
        cut = len(text[:end].encode("utf-8"))
        if not body.data[cut:].strip():
            return None  # the value is all there is: it was valid after all
        self._buf[self._pos:self._pos] = body.data[cut:]
        return Body(body.data[:cut])

    def stalled(self) -> Noise | None:
        """Called when no bytes came for a while: a body still awaited whose bytes so far hold a
        later frame's header was cut short by the client; drop it and read from that header."""
        if self._body_len is None:
            return None
        at = self._buf.find(MARKER, self._pos)
        if at < 0:
            return None
        skipped, self._pos, self._body_len = at - self._pos, at, None
        return Noise(f"a frame's body never came in full; skipped {skipped} bytes to the next header")


def _show(raw: bytes, limit: int = 40) -> str:
    """Bytes as a short printable quote for a log line."""
    text = raw[:limit].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(raw) > limit else ""))
