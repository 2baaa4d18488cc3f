"""Open documents: LSP's own line breaks, client position units, no disk reads, clean text."""

import pytest
from lsprotocol import types

from pocketpilot.errors import DocumentNotOpenError, PositionError
from pocketpilot.lsp_server.documents import LineIndex, SafeTextDocument, SafeWorkspace, clean_text

P = types.Position


def doc(text: str, encoding: str = "utf-16") -> SafeTextDocument:
    return SafeTextDocument("file:///w/a.py", text, version=1, language_id="python", encoding=encoding)


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"])
def test_only_lf_crlf_and_cr_break_lines(sep):
    """str.splitlines breaks at these too; LSP does not, so positions after them stay on the line."""
    text = f"a = 1{sep}b = 2\nc"
    d = doc(text)
    assert d.line_count == 2 and d.line_text(0) == f"a = 1{sep}b = 2"
    end = P(line=0, character=len(f"a = 1{sep}b = 2"))  # a valid end-of-line position after the separator
    assert text[: d.offset_at_position(end)] == f"a = 1{sep}b = 2"
    assert d.offset_at_position(P(line=1, character=1)) == len(text)
    assert d.position_at(len(text)) == P(line=1, character=1)


def test_crlf_and_cr_count_as_one_break_each():
    text = "a\r\nbb\rccc\n"
    index = LineIndex(text)
    assert [index.line_start(i) for i in range(index.line_count)] == [0, 3, 6, 10]
    assert [index.line_of(o) for o in (0, 2, 3, 6, 9, 10)] == [0, 0, 1, 2, 2, 3]
    d = doc(text)
    assert [d.line_text(i) for i in range(4)] == ["a", "bb", "ccc", ""]
    assert d.offset_at_position(P(line=1, character=2)) == 5
    with pytest.raises(PositionError, match="outside line 0"):
        d.offset_at_position(P(line=0, character=2))  # between \r and \n is not a position
    assert d.lines == ("a\r\n", "bb\r", "ccc\n", "")


def test_positions_count_utf16_units_by_default_and_the_negotiated_encoding_otherwise():
    text = "s = '😀é'\n"
    assert doc(text).offset_at_position(P(line=0, character=7)) == 6  # the emoji is 2 UTF-16 units
    assert doc(text, "utf-32").offset_at_position(P(line=0, character=6)) == 6
    assert doc(text, "utf-8").offset_at_position(P(line=0, character=9)) == 6  # 4 bytes
    with pytest.raises(PositionError):
        doc(text).offset_at_position(P(line=0, character=6))  # inside the surrogate pair
    assert doc(text).position_at(6) == P(line=0, character=7)


def test_positions_outside_the_document_raise_one_line_errors():
    d = doc("def add(a, b):\n    return\n")
    assert d.offset_at_position(P(line=2, character=0)) == len(d.source)
    for bad in (P(line=3, character=0), P(line=2, character=1), P(line=1, character=11)):
        with pytest.raises(PositionError, match="outside") as err:
            d.offset_at_position(bad)
        assert "\n" not in str(err.value)


def test_lone_surrogates_are_replaced_when_text_enters_and_positions_keep():
    d = doc("x = '\ud83d'\ny")
    assert d.source == "x = '\ufffd'\ny" and clean_text("ok 😀") == "ok 😀"
    d.source.encode("utf-8")  # the tokenizer and any encoder can take it
    assert d.offset_at_position(P(line=1, character=1)) == len(d.source)
    d.apply_change(types.TextDocumentContentChangePartial(
        range=types.Range(start=P(line=1, character=0), end=P(line=1, character=1)), text="\udc00z"))
    assert d.source.endswith("\ufffdz") and d.last_change_end == len(d.source)


def test_ranged_changes_use_lsp_lines_and_clamp_as_lsp_asks():
    d = doc("a\x0cb\nc\n")
    d.apply_change(types.TextDocumentContentChangePartial(
        range=types.Range(start=P(line=0, character=3), end=P(line=1, character=0)), text="!"))
    assert d.source == "a\x0cb!c\n"  # the form feed stayed on line 0; the change replaced "\n"
    d.apply_change(types.TextDocumentContentChangePartial(  # past the line's end / the last line: clamped
        range=types.Range(start=P(line=0, character=99), end=P(line=50, character=0)), text=""))
    assert d.source == "a\x0cb!c"
    with pytest.raises(PositionError, match="starts after it ends"):
        d.apply_change(types.TextDocumentContentChangePartial(
            range=types.Range(start=P(line=0, character=3), end=P(line=0, character=1)), text="x"))
    assert d.source == "a\x0cb!c"
    d.apply_change(types.TextDocumentContentChangeWholeDocument(text="new"))
    assert d.source == "new" and d.last_change_end is None


def test_a_never_opened_document_is_never_read_from_disk(tmp_path):
    secret = tmp_path / "secret.py"
    secret.write_text("password = 1\n")
    ws = SafeWorkspace(None)
    for uri in (secret.as_uri(), "file:///dev/stdin", "file:///dev/zero"):
        with pytest.raises(DocumentNotOpenError, match="document not open"):
            ws.get_text_document(uri)
    ws.put_text_document(types.TextDocumentItem(uri=secret.as_uri(), language_id="python", version=1, text="x"))
    assert ws.get_text_document(secret.as_uri()).source == "x"
    ws.remove_text_document(secret.as_uri())
    with pytest.raises(DocumentNotOpenError):
        ws.update_text_document(types.VersionedTextDocumentIdentifier(uri=secret.as_uri(), version=2),
                                types.TextDocumentContentChangeWholeDocument(text="y"))


def test_a_big_document_costs_one_index_per_text_and_chunk_edges_are_exact(monkeypatch):
    d = doc("x = 1\n" * 200_000)
    index = d.index
    assert d.index is index and d.offset_at_position(P(line=199_999, character=5)) == len(d.source) - 1
    d.apply_change(types.TextDocumentContentChangePartial(
        range=types.Range(start=P(line=0, character=0), end=P(line=0, character=0)), text="#"))
    assert d.index is not index and d.line_text(0) == "#x = 1"
    monkeypatch.setattr(LineIndex, "CHUNK", 4)  # chunks end inside lines, after \r, before \n
    text = "ab\r\ncd\re\n\r\nf\u2028g\r"
    small = LineIndex(text)
    want = [0, *(m.end() for m in __import__("re").finditer("\r\n|\r|\n", text))]
    assert [small.line_start(i) for i in range(small.line_count)] == want
    assert [small.line_of(o) for o in range(len(text) + 1)] == [sum(1 for w in want[1:] if w <= o)
                                                                 for o in range(len(text) + 1)]
    assert [text[small.line_start(i):small.line_end(i)] for i in range(small.line_count)] == \
        ["ab", "cd", "e", "", "f\u2028g", ""]
