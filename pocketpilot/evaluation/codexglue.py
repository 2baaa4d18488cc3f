"""CodeXGLUE line-level code completion (CodeCompletion-line), scored like the official evaluator.

The data (``codexglue_line/`` under the shared data folder, see :func:`data_dir`) is the
PY150 and Java dev splits in the CodeXGLUE format: code pre-tokenized and space-separated,
lines joined by ``<EOL>``, comments and indentation dropped, literals normalized to
``<STR_LIT>``, ``<NUM_LIT>``, ``<CHAR_LIT>`` or, for the frequent ones listed in
``*_literals.json``, ``<STR_LIT:value>`` / ``<NUM_LIT:value>`` / ``<CHAR_LIT:value>`` (spaces and
commas in a value written ``U+0020`` / ``U+002C``; quotes and string prefixes stay outside).

Our models are zero-shot causal LMs that write normal source code, so:

1. **Prompt** (:func:`prompt_from_input`): ``<s>`` dropped, ``<EOL>`` turned into a newline,
   each placeholder replaced by plausible code (``<STR_LIT>`` -> nothing between its quotes,
   ``<NUM_LIT>`` -> ``0``, ``<CHAR_LIT>`` -> a space between its quotes, ``<X_LIT:v>`` -> ``v``
   with ``U+0020`` / ``U+002C`` decoded). The space-separated tokens are kept and indentation
   is not restored: guessing it would invent code the benchmark does not have. No trailing
   space is added after the last token (the engine heals the last token anyway).
2. **Re-tokenization** (:func:`code_to_tokens`): the first line of the completion is turned
   back into the dataset's form the way CodeXGLUE's own preprocessing made it (Python: the
   stdlib ``tokenize`` module; Java: a regex tokenizer standing in for ``javalang``), literals
   included, so a prediction equal to the original line gets EM.
3. **Scoring** (:func:`evaluate_codexglue`): both sides go through :func:`denormalize`, the
   evaluator's ``post_process``; ES is ``fuzz.ratio`` rounded to an integer per example (the
   evaluator's fuzzywuzzy returns ints) and averaged; EM is ``pred.split() == gt.split()``.
"""

from __future__ import annotations

import io
import json
import random
import re
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.data import DATA_ENV
from pocketpilot.evaluation.data import data_dir as _data_dir
from pocketpilot.evaluation.line_completion import summarize
from pocketpilot.evaluation.metrics import edit_similarity, exact_match
from pocketpilot.runtime.postprocess import first_line

SUBDIR = "codexglue_line"
#: canonical language -> (examples file, literals file)
FILES = {"python": ("py150_dev.jsonl", "py150_literals.json"), "java": ("java_dev.jsonl", "java_literals.json")}
ALIASES = {"python": "python", "py": "python", "py150": "python", "java": "java"}
#: characters CodeXGLUE's preprocessing writes as code points inside a literal's value
SPECIAL_CHARS = {" ": "U+0020", ",": "U+002C"}

_LIT_VALUE = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


# ----------------------------------------------------------------------------- data


def data_dir() -> Path:
    """The evaluation data folder (see :func:`pocketpilot.evaluation.data.data_dir`).

    Raises:
        PocketPilotError: it does not exist.
    """
    return _data_dir("codexglue_line/")


def _lang(lang: str) -> str:
    key = ALIASES.get(str(lang).lower())
    if key is None:
        raise PocketPilotError(f"unknown CodeXGLUE language {lang!r}; choose one of: {', '.join(ALIASES)}")
    return key


def _line_dir(root: Path | None) -> Path:
    root = Path(root) if root is not None else data_dir()
    return root / SUBDIR if (root / SUBDIR).is_dir() else root


def _data_file(root: Path | None, name: str) -> Path:
    path = _line_dir(root) / name
    if not path.is_file():
        raise PocketPilotError(f"CodeXGLUE file not found: {path}; set {DATA_ENV} to the folder holding {SUBDIR}/")
    return path


def load_examples(lang: str = "python", limit: int | None = None, seed: int | None = None,
                  root: Path | None = None) -> list[dict]:
    """Examples of one dev split as ``{"id", "input", "gt", "lang"}`` rows, in file order.

    Args:
        lang: ``"python"`` (aliases ``"py"``, ``"py150"``) or ``"java"``.
        limit: keep this many examples (all when ``None`` or larger than the split): the first
            ones, or, with ``seed``, a random sample of that size drawn deterministically.
        seed: seed of the sample; ignored without ``limit``.
        root: the data folder (or its ``codexglue_line/``); default :func:`data_dir`.

    Returns:
        Rows whose ``id`` is ``"<lang>/<line number, from 0>"``.

    Raises:
        PocketPilotError: unknown ``lang``, negative ``limit``, or the data is missing.
    """
    key = _lang(lang)
    if limit is not None and limit < 0:
        raise PocketPilotError(f"limit must be 0 or more, got {limit}")
    path = _data_file(root, FILES[key][0])
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    indices = list(range(len(rows)))
    if limit is not None and limit < len(rows):
        indices = sorted(random.Random(seed).sample(indices, limit)) if seed is not None else indices[:limit]
    return [{"id": f"{key}/{i}", "input": rows[i]["input"], "gt": rows[i]["gt"], "lang": key} for i in indices]


@lru_cache(maxsize=8)
def _literals_at(path: Path) -> dict[str, frozenset[str]]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {k: frozenset(raw.get(k, [])) for k in ("str", "num", "char")}


def load_literals(lang: str, root: Path | None = None) -> dict[str, frozenset[str]]:
    """The frequent literals of a split (``{"str", "num", "char"}`` -> values in dataset form).

    Raises:
        PocketPilotError: unknown ``lang`` or the file is missing.
    """
    return _literals_at(_data_file(root, FILES[_lang(lang)][1]))


# ----------------------------------------------------------------------------- official form


def denormalize(text: str) -> str:
    """CodeXGLUE's ``post_process``: literal placeholders back to (approximate) code.

    ``<NUM_LIT>`` -> ``0``, ``<STR_LIT>`` and ``<CHAR_LIT>`` -> nothing, ``<X_LIT:v>`` -> ``v``
    (``v`` kept as stored, e.g. ``U+0020`` stays). Same semantics as the evaluator: every
    ``<X_LIT:v>`` found (non-greedy up to the first ``>``) is replaced wherever it occurs.
    """
    text = text.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    found = _LIT_VALUE.findall(text)
    for kind, value in dict.fromkeys(found):
        text = text.replace(f"<{kind}_LIT:{value}>", value)
    return text


def _decode_value(value: str) -> str:
    for ch, code in SPECIAL_CHARS.items():
        value = value.replace(code, ch)
    return value


def prompt_from_input(input: str) -> str:  # noqa: A002 - the dataset's field name
    """Turn a CodeXGLUE ``input`` into a code prompt for a causal LM.

    Drops ``<s>`` / ``</s>``, turns ``<EOL>`` into ``\\n`` (an input ending in ``<EOL>`` gives a
    prompt ending in ``\\n``: the model starts a new line), and replaces the literal
    placeholders: ``<STR_LIT>`` -> empty (its quotes are already in the input, so ``"<STR_LIT>"``
    becomes ``""``), ``<CHAR_LIT>`` -> a space (``' '``), ``<NUM_LIT>`` -> ``0``, and
    ``<X_LIT:v>`` -> ``v`` as written with ``U+0020`` / ``U+002C`` decoded to a space / comma
    (``'<STR_LIT:utf-8>'`` -> ``'utf-8'``). Tokens stay space-separated, one source line per line,
    without indentation.
    """
    text = input.replace("</s>", " ")
    text = re.sub(r"^\s*<s>", "", text)
    text = _LIT_VALUE.sub(lambda m: _decode_value(m.group(2)), text)
    text = text.replace("<STR_LIT>", "").replace("<CHAR_LIT>", " ").replace("<NUM_LIT>", "0")
    return "\n".join(" ".join(line.split()) for line in text.split("<EOL>"))


def _normalize_string(token: str, lits: dict[str, frozenset[str]], java: bool) -> str:
    """A string (or Java char) literal in the dataset's form, as CodeXGLUE's preprocessing wrote it.

    The prefix is the leading lowercase letters (``r``, ``b``, ``u``, ``f``, ``rb`` ...; uppercase
    prefixes are not recognised, as in the original), the quotes are kept, and the body becomes
    ``<STR_LIT:body>`` when listed as frequent (spaces / commas written ``U+0020`` / ``U+002C``),
    else ``<STR_LIT>``. In Java a one-character body in single quotes is a ``<CHAR_LIT>``.
    """
    m = re.match(r"[a-z]+", token)
    prefix = m.group(0) if m else ""
    rest = token[len(prefix):]
    open_q = close_q = ""
    body = rest
    for q in ("'''", '"""', "'", '"'):
        if rest.startswith(q):
            open_q, body = q, rest[len(q):]
            if rest.endswith(q) and len(rest) >= 2 * len(q):
                close_q, body = q, body[: -len(q)]
            break
    kind = "CHAR" if java and open_q == "'" and len(body) == 1 else "STR"
    for ch, code in SPECIAL_CHARS.items():
        body = body.replace(ch, code)
    frequent = lits["char" if kind == "CHAR" else "str"]
    inner = f"<{kind}_LIT:{body}>" if body in frequent else f"<{kind}_LIT>"
    return f"{prefix}{open_q}{inner}{close_q}"


def _normalize_number(token: str, lits: dict[str, frozenset[str]]) -> str:
    return f"<NUM_LIT:{token}>" if token in lits["num"] else "<NUM_LIT>"


# ----------------------------------------------------------------------------- tokenizers

_PY_STRING = (r"""(?:[rRbBuUfF]{1,2})?(?:'''[\s\S]*?(?:'''|$)|\"\"\"[\s\S]*?(?:\"\"\"|$)"""
              r"""|'(?:\\.|[^'\\\n])*'?|"(?:\\.|[^"\\\n])*"?)""")
_PY_NUMBER = (r"0[xX][0-9a-fA-F_]+[lL]?|0[oO][0-7_]+|0[bB][01_]+"
              r"|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?[jJlL]?")
_PY_OPS = r"\*\*=|//=|>>=|<<=|\.\.\.|->|:=|\*\*|//|<<|>>|<=|>=|==|!=|<>|[-+*/%&|^@]="
_PY_RE = re.compile(
    rf"(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<str>{_PY_STRING})|(?P<num>{_PY_NUMBER})"
    rf"|(?P<name>[^\W\d]\w*)|(?P<op>{_PY_OPS})|(?P<other>.)", re.S)

# javalang gives ``>>`` / ``>>>`` as separate ``>`` (the data never holds them), but the
# assignment forms ``>>=`` / ``>>>=`` as one token
_JAVA_OPS = (r">>>=|<<=|>>=|\.\.\.|->|::|\+\+|--|&&|\|\||==|!=|<=|>=|[-+*/&|^%]=|<<")
_JAVA_RE = re.compile(
    r"(?P<ws>\s+)|(?P<comment>//[^\n]*|/\*[\s\S]*?(?:\*/|$))"
    r'|(?P<str>"""[\s\S]*?(?:"""|$)|"(?:\\.|[^"\\\n])*"?|\'(?:\\.|[^\'\\\n])*\'?)'
    r"|(?P<num>0[xX][0-9a-fA-F_]+[lL]?|0[bB][01_]+[lL]?"
    r"|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?[fFdDlL]?)"
    rf"|(?P<name>(?:[^\W\d]|\$)(?:\w|\$)*)|(?P<op>{_JAVA_OPS})|(?P<other>.)", re.S)


def _regex_tokens(code: str, pattern: re.Pattern) -> list[tuple[str, str]]:
    """``(kind, text)`` pairs, kind in ``str`` / ``num`` / ``tok`` / ``eol``; comments dropped."""
    out: list[tuple[str, str]] = []
    for m in pattern.finditer(code):
        kind = m.lastgroup
        if kind == "comment":
            continue
        if kind == "ws":
            if "\n" in m.group():
                out.append(("eol", ""))
            continue
        out.append((kind if kind in ("str", "num") else "tok", m.group()))
    return out


def _python_tokens(code: str) -> list[tuple[str, str]]:
    """Python tokens via :mod:`tokenize`; :class:`ValueError` where it cannot tokenize the text."""
    fstart = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings
    fend = getattr(tokenize, "FSTRING_END", None)
    lines = code.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    out: list[tuple[str, str]] = []
    depth, fstring_at = 0, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if fstart is not None and tok.type == fstart:
                if depth == 0:
                    fstring_at = offset(tok.start)
                depth += 1
                continue
            if depth:
                if tok.type == fend:
                    depth -= 1
                    if depth == 0:
                        out.append(("str", code[fstring_at: offset(tok.end)]))
                continue
            if tok.type == tokenize.ERRORTOKEN and tok.string.strip():
                raise ValueError(tok.string)
            if tok.type == tokenize.STRING:
                out.append(("str", tok.string))
            elif tok.type == tokenize.NUMBER:
                out.append(("num", tok.string))
            elif tok.type in (tokenize.NEWLINE, tokenize.NL):
                out.append(("eol", ""))
            elif tok.type in (tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
                              tokenize.ENDMARKER, tokenize.ERRORTOKEN):
                continue
            elif tok.string:
                out.append(("tok", tok.string))
    except (tokenize.TokenError, SyntaxError) as e:  # unclosed bracket or string, bad dedent, ...
        raise ValueError(str(e)) from e
    return out


def code_to_tokens(code: str, lang: str, *, literals: dict[str, Iterable[str]] | None = None) -> str:
    """Re-tokenize source code into the dataset's space-separated form (placeholders included).

    Python uses the stdlib :mod:`tokenize` (as CodeXGLUE's PY150 preprocessing did) and falls
    back to a regex tokenizer where ``tokenize`` fails (a partial line with an unclosed bracket
    or string, Python 2 backquotes ...); Java uses a regex tokenizer mimicking ``javalang``
    (identifiers, numbers, string and char literals, multi-character operators; ``>>`` stays
    two ``>``). Strings and numbers are normalized like the dataset (see
    :func:`denormalize` for the way back): ``self.assertEqual(x, "a")`` ->
    ``self . assertEqual ( x , "<STR_LIT:a>" )``. Comments are dropped; line breaks become
    ``<EOL>`` (Python only, never first or last, never two in a row; Java has none).

    Args:
        code: source code, usually one line.
        lang: ``"python"`` / ``"java"`` (or an alias).
        literals: ``{"str", "num", "char"}`` frequent literals; default the split's
            ``*_literals.json`` (see :func:`load_literals`).

    Raises:
        PocketPilotError: unknown ``lang``, or ``literals`` not given and the data is missing.
    """
    key = _lang(lang)
    if literals is None:
        lits = load_literals(key)
    else:
        lits = {k: frozenset(literals.get(k, ())) for k in ("str", "num", "char")}
    if key == "python":
        try:
            toks = _python_tokens(code)
        except ValueError:
            toks = _regex_tokens(code, _PY_RE)
    else:
        toks = [t for t in _regex_tokens(code, _JAVA_RE) if t[0] != "eol"]
    out: list[str] = []
    for kind, text in toks:
        if kind == "eol":
            if out and out[-1] != "<EOL>":
                out.append("<EOL>")
            continue
        text = " ".join(text.split())
        if not text:
            continue
        if kind == "str":
            out.append(_normalize_string(text, lits, java=key == "java"))
        elif kind == "num":
            out.append(_normalize_number(text, lits))
        else:
            out.append(text)
    while out and out[-1] == "<EOL>":
        out.pop()
    return " ".join(out)


# ----------------------------------------------------------------------------- scoring


def official_scores(pred: str, gt: str) -> tuple[int, bool]:
    """ES (0-100, an integer) and EM of one dataset-form prediction against its ground truth.

    Both are de-normalized first. ES is :func:`edit_similarity` (rapidfuzz ``fuzz.ratio``, the
    Indel ratio that fuzzywuzzy computes with python-Levenshtein) rounded with ``round`` as
    fuzzywuzzy does. ``edit_similarity`` strips both sides while the evaluator strips only the
    prediction: the same score for every dev-set ``gt`` (none has outer whitespace after
    de-normalization) and every prediction from :func:`code_to_tokens` except one ending in a
    bare ``<STR_LIT>`` (an uppercase-prefixed string such as ``R"x"``).
    """
    p, g = denormalize(pred.strip()), denormalize(gt)
    return int(round(edit_similarity(p, g))), exact_match(p, g)


def evaluate_codexglue(engine, examples: list[dict],
                       progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Complete each example with ``engine`` and score it like the CodeXGLUE evaluator.

    Each example's prompt is :func:`prompt_from_input`; the prediction is the first line of
    ``engine.complete(prompt, "", allow_block=False)``, re-tokenized with :func:`code_to_tokens`
    in the example's language, then scored with :func:`official_scores`.

    Args:
        engine: a :class:`pocketpilot.runtime.CompletionEngine` (or anything with that ``complete``
            returning an object with ``.text`` and ``.total_ms``).
        examples: rows from :func:`load_examples`.
        progress: optional wrapper such as ``tqdm`` around the example iterator.

    Returns:
        ``{"n", "es", "em", "latency_ms_p50", "latency_ms_p95", "predictions"}``: ES averaged
        0-100 and EM in percent (both rounded to 2 decimals, as the evaluator prints them),
        latencies in ms; ``predictions`` lists ``{"id", "pred", "gt", "es", "em"}`` where
        ``pred`` and ``gt`` are the de-normalized token strings that were compared.

    Raises:
        PocketPilotError: an example has an unknown ``lang`` or the literal lists are missing.
    """
    rows, lat = [], []
    it = progress(examples) if progress else examples
    for ex in it:
        c = engine.complete(prompt_from_input(ex["input"]), "", allow_block=False)
        pred = code_to_tokens(first_line(c.text), ex.get("lang", "python"))
        es, em = official_scores(pred, ex["gt"])
        rows.append({"id": ex.get("id"), "pred": denormalize(pred), "gt": denormalize(ex["gt"]), "es": es, "em": em})
        lat.append(c.total_ms)
    return summarize(rows, lat)
