"""The base-protocol parser: bounded, and back in step after any broken frame."""

import json
import random

import pytest

from pocketpilot.lsp_server.framing import MAX_BODY_BYTES, Body, FrameParser, Noise


def frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def events(parser: FrameParser, data: bytes, split: int | None = None) -> list:
    """Feed ``data`` (in pieces of ``split`` bytes) and collect every event; a body that is not
    JSON is rejected, as the transport does."""
    out = []
    pieces = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
    for piece in pieces:
        parser.feed(piece)
        while (e := parser.next()) is not None:
            if isinstance(e, Body):
                try:
                    out.append(json.loads(e.data))
                except ValueError:
                    out.append("bad-json")
                    recovered = parser.reject(e)
                    if recovered is not None:
                        out.append(json.loads(recovered.data))
            else:
                out.append(e)
    return out


def bodies(evs: list) -> list:
    return [e for e in evs if isinstance(e, dict)]


GOOD = [{"id": i, "x": "y" * i} for i in range(3)]
TAIL = b"".join(frame(m) for m in GOOD)


def test_frames_split_anywhere_come_out_whole():
    data = TAIL + b"Content-Length: 9\r\nContent-Type: application/vscode-jsonrpc\r\n\r\n{\"id\": 9}"
    for split in (1, 2, 7, None):
        assert bodies(events(FrameParser(), data, split)) == GOOD + [{"id": 9}]


@pytest.mark.parametrize("bad", [
    b"Content-Length: 100000000000000000000\r\n\r\n{}",  # overflows any int64
    b"Content-Length: 35184372088832\r\n\r\n{}",  # 2^45: would allocate 32 TiB
    b"Content-Length: -1\r\n\r\n{}",
    b"Content-Length: abc\r\n\r\n{}",
    b"Content-Length: 0\r\n\r\n",
    b"Content-Length: 12",  # a header that never ends...
    b"X-Other: 1\r\n\r\n{}",  # no Content-Length
    b"garbage before any header",
    b'{"jsonrpc": "2.0", "id": 1, "method": "x"}',  # a body without a header
    b"\xff\xfe\x00binary",
    b"Content-Length: 5\r\n" + b'{"jsonrpc": "2.0"}',  # no blank line: the next frame's header must not be eaten
])
def test_a_broken_frame_is_noise_and_the_next_frame_is_read(bad):
    evs = events(FrameParser(), bad + TAIL)
    assert bodies(evs) == GOOD
    assert any(isinstance(e, Noise) for e in evs) or "bad-json" in evs


def test_a_huge_content_length_allocates_nothing():
    parser = FrameParser()
    parser.feed(b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
    event = parser.next()
    assert isinstance(event, Noise) and "over the limit" in event.reason
    assert not parser.waiting_for_body and parser.pending < 100


def test_a_short_content_length_does_not_leave_the_parser_deaf():
    whole = frame({"jsonrpc": "2.0", "id": 7, "method": "m"})
    head, body = whole.split(b"\r\n\r\n", 1)
    short = b"Content-Length: %d\r\n\r\n" % (len(body) - 3) + body
    assert bodies(events(FrameParser(), short + TAIL)) == GOOD


def test_a_long_content_length_gives_back_the_frame_it_swallowed():
    whole = frame({"id": 7})
    head, body = whole.split(b"\r\n\r\n", 1)
    long = b"Content-Length: %d\r\n\r\n" % (len(body) + 5) + body
    evs = events(FrameParser(), long + TAIL)
    assert "bad-json" in evs and bodies(evs) == [{"id": 7}] + GOOD
    truncated = b"Content-Length: 40\r\n\r\n" + b'{"id": 7, "a": "' + TAIL  # broken JSON, a header inside
    assert bodies(events(FrameParser(), truncated)) == GOOD  # read again from the header inside the body


def test_a_body_that_never_comes_is_given_up_when_the_stream_goes_quiet():
    parser = FrameParser()
    whole = frame({"id": 7})
    head, body = whole.split(b"\r\n\r\n", 1)
    evs = events(parser, b"Content-Length: %d\r\n\r\n" % (len(body) + 500) + body + frame({"id": 8}))
    assert bodies(evs) == [] and parser.waiting_for_body
    noise = parser.stalled()
    assert isinstance(noise, Noise)
    assert bodies(events(parser, b"")) == [{"id": 8}]
    assert parser.stalled() is None  # nothing awaited now


def test_a_header_cut_across_reads_is_found_after_noise():
    data = b"noise noise Content-Len" + b"gth: 9\r\n\r\n{\"id\": 1}"
    for split in (1, 5, 23, None):
        assert bodies(events(FrameParser(), data, split)) == [{"id": 1}]


def test_random_garbage_between_frames_never_loses_a_later_well_formed_frame():
    rng = random.Random(3)
    for _ in range(200):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        garbage = garbage.replace(b"Content-Length:", b"")  # garbage, not a header
        evs = events(FrameParser(), frame({"id": 0}) + garbage + b"\r\n\r\n" + TAIL, rng.choice([1, 3, None]))
        got = bodies(evs)
        assert got[-3:] == GOOD, (garbage, evs)
