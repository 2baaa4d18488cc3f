"""Find the function under a cursor, and where its docstring or doc comment goes.

Python is parsed with the standard library's :mod:`ast` (a document with a syntax error has no
function to offer); the brace languages with tree-sitter through the tree-sitter project's own
grammar wheels (``tree-sitter-javascript``, ``-typescript``, ``-java``, ``-go``, ``-rust``, ``-c``,
``-cpp``), which ship compiled grammars and work offline. (``tree-sitter-language-pack`` 1.x
downloads its grammars on first use, so it cannot serve an offline editor.)

Covered languages (LSP language ids): ``python``; ``javascript``, ``javascriptreact``,
``typescript``, ``typescriptreact``, ``java``, ``c``, ``cpp`` (a ``/** ... */`` comment above the
function); ``go`` (``//`` lines) and ``rust`` (``///`` lines). :data:`LANGUAGES` lists them.

Where the text goes (:class:`FunctionAt`): Python, as the first statement of the body, after
the signature (replacing an existing docstring); the brace languages, on the lines above the
definition (replacing an existing doc comment: ``/** ... */``, ``///`` lines, or in Go the
``//`` lines that start with the function's name).
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any

#: LSP language id -> tree-sitter grammar: (module of its wheel, the module's language function)
GRAMMARS = {
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "java": ("tree_sitter_java", "language"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
#: every language :func:`find_function` understands (LSP language ids)
LANGUAGES = ("python", *GRAMMARS)

#: tree-sitter node types that are functions with a body, per grammar module
_FUNCTION_NODES = {
    "tree_sitter_javascript": {"function_declaration", "generator_function_declaration", "method_definition",
                               "function_expression", "arrow_function", "function"},
    "tree_sitter_typescript": {"function_declaration", "generator_function_declaration", "method_definition",
                               "function_expression", "arrow_function", "function"},
    "tree_sitter_java": {"method_declaration", "constructor_declaration"},
    "tree_sitter_go": {"function_declaration", "method_declaration"},
    "tree_sitter_rust": {"function_item"},
    "tree_sitter_c": {"function_definition"},
    "tree_sitter_cpp": {"function_definition"},
}
#: function expressions documented where they are bound (``const f = () => ...``); any other
#: (a callback argument) is skipped for the function around it
_EXPRESSIONS = {"function_expression", "arrow_function", "function"}
#: parents a bound function expression or a declaration climbs through to the statement the comment goes above
_WRAPPERS = {"variable_declarator", "lexical_declaration", "variable_declaration", "export_statement",
             "assignment_expression", "expression_statement", "pair", "public_field_definition",
             "field_definition", "template_declaration"}
_BINDINGS = {"variable_declarator", "assignment_expression", "pair", "public_field_definition", "field_definition"}


@dataclass(frozen=True)
class FunctionAt:
    """A function in a document and the place its docstring / doc comment is written.

    Lines are 0-based document lines; columns count code points (Python ``str`` indices).

    Attributes:
        name: the function's name ("" when it has none).
        language: the LSP language id it was parsed as.
        start_line, end_line: first and last line of the definition (decorators, ``export``
            and ``template`` included; inclusive).
        code: the function's source with any existing docstring / doc comment removed (what a
            chat prompt shows the model).
        head: the source before the docstring's place, ending with :attr:`lead` (the prefix of a
            completion prompt).
        tail: the source after it, starting with :attr:`trail` (a fill-in-the-middle suffix).
        body_at: brace languages: offset in :attr:`code` just after the body's ``{`` (``None``
            for Python or an expression body).
        indent: the indentation of the docstring's lines (Python: the body's; else the definition's).
        replace: ``(line, column, line, column)`` of the document text the new text replaces
            (empty for an insertion; an existing docstring or doc comment otherwise).
        lead, trail: text written before and after the formatted docstring in that range.
        docstring: Python: the existing docstring, cleaned (:func:`ast.get_docstring`); else ``None``.
    """

    name: str
    language: str
    start_line: int
    end_line: int
    code: str
    head: str
    tail: str
    body_at: int | None
    indent: str
    replace: tuple[int, int, int, int]
    lead: str
    trail: str
    docstring: str | None = None


class _Text:
    """A document's text with conversions between (line, column) pairs, str offsets and UTF-8 bytes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, line: int, col: int) -> int:
        return self.starts[line] + col

    def point(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:  # last line start <= offset
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo, offset - self.starts[lo]

    def col(self, line: int, byte_col: int) -> int:
        """A UTF-8 byte column (``ast`` and tree-sitter give those) as a code-point column."""
        return len(self.lines[line].encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))

    def line_end(self, line: int) -> int:
        return self.starts[line] + len(self.lines[line])


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _join(before: str, after: str) -> str:
    """``before + after`` without the whitespace-only line a removed docstring leaves behind."""
    last = before.rsplit("\n", 1)[-1]
    if not last.strip() and after.startswith("\n"):
        return before[: len(before) - len(last)] + after[1:]
    return before + after


def find_function(source: str, line: int, character: int, language: str) -> FunctionAt | None:
    """The innermost function whose definition holds the position, or ``None``.

    Args:
        source: the document text.
        line, character: the position (0-based; character in code points).
        language: an LSP language id (:data:`LANGUAGES`).

    Returns:
        A :class:`FunctionAt`, or ``None`` outside any function, for another language, or
        (Python) when the document does not parse.
    """
    text = _Text(source)
    if not 0 <= line < len(text.lines):
        return None
    if language == "python":
        return _python_function(text, line)
    if language in GRAMMARS:
        return _brace_function(text, line, language)
    return None


def function_from_code(code: str, language: str) -> FunctionAt:
    """``code`` (one function's source, as an evaluation task holds it) as a :class:`FunctionAt`.

    The function is the one at the first non-blank line; code that does not parse as one stands
    as it is (a prompt then shows it whole, with the docstring's place after it).
    """
    lines = code.split("\n")
    first = next((i for i, s in enumerate(lines) if s.strip()), 0)
    found = find_function(code, first, len(_indent_of(lines[first])), language)
    if found is not None:
        return found
    end = len(lines) - 1
    indent = _indent_of(lines[first])
    return FunctionAt(name="", language=language, start_line=first, end_line=end, code=code, head=code + "\n" + indent,
                      tail="", body_at=None, indent=indent, replace=(end, len(lines[end]), end, len(lines[end])),
                      lead="\n" + indent, trail="")


# --- Python (ast) ---------------------------------------------------------------------------

def _python_function(text: _Text, line: int) -> FunctionAt | None:
    try:
        tree = ast.parse(text.source)
    except (SyntaxError, ValueError):
        return None
    best = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            if first <= line <= node.end_lineno - 1 and (best is None or first >= best[0]):
                best = (first, node)
    return _python_slot(text, best[1]) if best is not None else None


def python_functions(source: str) -> list[FunctionAt]:
    """Every function and method of a Python module, in source order (``[]`` when it does not parse).

    One parse for the whole file (:func:`find_function` parses once per call).
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    text = _Text(source)
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [_python_slot(text, n) for n in sorted(nodes, key=lambda n: n.lineno)]


def _python_slot(text: _Text, node: ast.FunctionDef | ast.AsyncFunctionDef) -> FunctionAt:
    """The :class:`FunctionAt` of a function node: its docstring goes first in the body."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    end = node.end_lineno - 1
    body0 = node.body[0]
    b_line, b_col = body0.lineno - 1, text.col(body0.lineno - 1, body0.col_offset)
    fs, fe = text.starts[first], text.line_end(end)
    documented = ast.get_docstring(node, clean=False) is not None
    if documented:  # replace the existing docstring
        e_line, e_col = body0.end_lineno - 1, text.col(body0.end_lineno - 1, body0.end_col_offset)
        s, e = text.offset(b_line, b_col), text.offset(e_line, e_col)
        indent, lead, trail = _indent_of(text.lines[b_line]), "", ""
        if b_line == node.lineno - 1:  # `def f(): "doc"; ...` on one line
            indent = _indent_of(text.lines[node.lineno - 1]) + _unit(text.lines[node.lineno - 1])
    elif b_line > node.lineno - 1 and _header_end(text, node, b_line) < b_line:
        slot = _header_end(text, node, b_line) + 1  # the line after the signature
        s = e = text.starts[slot]
        indent = _indent_of(text.lines[b_line])
        lead, trail = indent, "\n"
    else:  # the body starts on the signature's line: `def f(x): return x`
        e = text.offset(b_line, b_col)
        s = e
        while s > text.starts[b_line] and text.source[s - 1] in " \t":
            s -= 1
        indent = _indent_of(text.lines[node.lineno - 1]) + _unit(text.lines[node.lineno - 1])
        lead, trail = "\n" + indent, "\n" + indent
    return FunctionAt(name=node.name, language="python", start_line=first, end_line=end,
                      code=_join(text.source[fs:s], text.source[e:fe]) if documented else text.source[fs:fe],
                      head=text.source[fs:s] + lead, tail=trail + text.source[e:fe], body_at=None, indent=indent,
                      replace=(*text.point(s), *text.point(e)), lead=lead, trail=trail,
                      docstring=ast.get_docstring(node) if documented else None)


def _header_end(text: _Text, node: ast.AST, body_line: int) -> int:
    """The signature's last line: the last line before the body that is not blank or a comment."""
    k = body_line - 1
    while k > node.lineno - 1 and (not text.lines[k].strip() or text.lines[k].lstrip().startswith("#")):
        k -= 1
    return k


def _unit(line: str) -> str:
    """One indentation step for a body under ``line``: a tab where it is tab-indented, else 4 spaces."""
    return "\t" if line.startswith("\t") else "    "


# --- brace languages (tree-sitter) ----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _parser(module: str, fn: str) -> Any:
    """A tree-sitter parser for a grammar wheel.

    Raises:
        MissingDependencyError: the grammar wheel or tree-sitter is not installed.
    """
    from pocketpilot.errors import MissingDependencyError

    try:
        import tree_sitter

        grammar = importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{module} is not installed: pip install tree-sitter "
                                     f"{module.replace('_', '-')}") from None
    return tree_sitter.Parser(tree_sitter.Language(getattr(grammar, fn)()))


def _brace_function(text: _Text, line: int, language: str) -> FunctionAt | None:
    """The innermost function whose lines (from its statement's first line) hold ``line``."""
    module, fn = GRAMMARS[language]
    data = text.source.encode("utf-8")
    kinds = _FUNCTION_NODES[module]
    best = None
    todo = [_parser(module, fn).parse(data).root_node]
    while todo:  # only subtrees whose lines hold ``line``; their children may be functions whose statement does
        for node in todo.pop().children:
            if node.type in kinds and node.child_by_field_name("body") is not None and (
                    node.type not in _EXPRESSIONS or (node.parent is not None and node.parent.type in _BINDINGS)):
                first = _anchor(node).start_point[0]
                if first <= line <= node.end_point[0] and (best is None or first >= _anchor(best).start_point[0]):
                    best = node
            if node.start_point[0] <= line <= node.end_point[0]:
                todo.append(node)
    return _brace_slot(text, data, best, language) if best is not None else None


def _anchor(node: Any) -> Any:
    """The statement a function's doc comment goes above: the node itself, or the declaration,
    ``export`` or ``template`` around it."""
    while node.parent is not None and node.parent.type in _WRAPPERS:
        node = node.parent
    return node


def _brace_slot(text: _Text, data: bytes, node: Any, language: str) -> FunctionAt:
    """The :class:`FunctionAt` of a tree-sitter function node: the comment goes above its statement."""
    anchor = _anchor(node)

    def off(byte: int) -> int:
        return len(data[:byte].decode("utf-8", errors="ignore"))

    name = _name(node, data)
    a_line = anchor.start_point[0]
    end = node.end_point[0]
    fs, fe = text.starts[a_line], text.line_end(end)
    indent = _indent_of(text.lines[a_line])
    comments = _doc_comments(anchor, data, name, language)
    if comments:
        s, e = off(comments[0].start_byte), off(comments[-1].end_byte)
        e -= len(text.source[s:e]) - len(text.source[s:e].rstrip("\n"))  # a line comment may end with its newline
        lead = trail = ""
    else:
        s = e = fs
        lead, trail = indent, "\n"
    body = node.child_by_field_name("body")
    body_at = None
    if body is not None and data[body.start_byte:body.start_byte + 1] == b"{":
        body_at = off(body.start_byte) + 1 - fs
    head_start = text.starts[text.point(s)[0]]
    return FunctionAt(name=name, language=language, start_line=a_line, end_line=end, code=text.source[fs:fe],
                      head=text.source[head_start:s] + lead, tail=trail + text.source[e:fe], body_at=body_at,
                      indent=indent, replace=(*text.point(s), *text.point(e)), lead=lead, trail=trail)


def _name(node: Any, data: bytes) -> str:
    """The function's name: its ``name`` (or C declarator's) field, else the variable it is bound to."""
    target = node.child_by_field_name("name")
    if target is None:
        decl = node.child_by_field_name("declarator")  # C / C++: int add(int a) -> function_declarator
        while decl is not None and decl.child_by_field_name("declarator") is not None:
            decl = decl.child_by_field_name("declarator")
        target = decl
    if target is None and node.parent is not None:
        target = node.parent.child_by_field_name("name") or node.parent.child_by_field_name("left") \
            or node.parent.child_by_field_name("key")
    return data[target.start_byte:target.end_byte].decode("utf-8", errors="replace") if target is not None else ""


def _doc_comments(anchor: Any, data: bytes, name: str, language: str) -> list[Any]:
    """The doc comment right above ``anchor`` (consecutive comment nodes, each ending on the line
    before the next), or ``[]`` when the comment there is not a doc comment."""
    found = []
    prev, line = anchor.prev_sibling, anchor.start_point[0]
    while prev is not None and prev.type == "attribute_item":  # Rust: #[...] between the doc comment and fn
        prev, line = prev.prev_sibling, prev.start_point[0]
    while prev is not None and "comment" in prev.type and prev.end_point[0] in (line - 1, line):
        found.insert(0, prev)
        prev, line = prev.prev_sibling, prev.start_point[0]
    while found:  # keep the comments nearest the function that are all documentation
        texts = [data[c.start_byte:c.end_byte].decode("utf-8", errors="replace") for c in found]
        if texts[0].startswith("/**") and len(found) == 1:
            return found
        if all(t.startswith("///") for t in texts) or (
                language == "go" and name and texts[0].startswith("//") and re.match(rf"//\s*{re.escape(name)}\b", texts[0])):
            return found
        found = found[1:]
    return []
