"""Code summarization: finding the function, writing and formatting its docstring, the code action,
and the ``summarize`` suite's tasks and metrics."""

import ast
import asyncio
import json
import logging
import math
import re
import sys
import threading
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.workspace import Workspace

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.summarize import (
    codexglue_bleu,
    evaluate_summaries,
    make_summary_tasks,
    read_summary_tasks,
    rouge_l,
)
from pocketpilot.lsp_server import code_actions
from pocketpilot.lsp_server.server import PocketPilotServer
from pocketpilot.runtime.functions import find_function, function_from_code
from pocketpilot.runtime.summarize import clean_summary, finished, format_docstring, write_docstring

URI = "file:///w/a.py"
JS_URI = "file:///w/a.js"
PY = '''import os


@cache
def add(a, b):
    # the sum
    return a + b


class Box:
    def get(self, key):
        """Old words."""
        return self.items[key]


def one(x): return x
'''
JS = '''/** Old. */
export function add(a, b) {
  return a + b;
}

const twice = (x) => {
  return x * 2;
};
items.map((y) => y + 1);
'''


def apply(source: str, fn, text: str) -> str:
    """The document after the edit :func:`code_actions.docstring_edit` makes for ``text``."""
    lines = source.split("\n")
    l0, c0, l1, c1 = fn.replace
    start = sum(len(s) + 1 for s in lines[:l0]) + c0
    end = sum(len(s) + 1 for s in lines[:l1]) + c1
    return source[:start] + fn.lead + format_docstring(text, fn.language, fn.indent) + fn.trail + source[end:]


# --- finding the function and placing the docstring -----------------------------------------

def test_python_docstring_goes_after_the_signature_and_replaces_an_old_one():
    fn = find_function(PY, 5, 0, "python")  # on the comment inside add
    assert (fn.name, fn.start_line, fn.end_line) == ("add", 3, 6)
    assert fn.head == "@cache\ndef add(a, b):\n    " and fn.tail.startswith("\n    # the sum")
    out = apply(PY, fn, "Add two numbers.")
    assert '@cache\ndef add(a, b):\n    """Add two numbers."""\n    # the sum\n    return a + b\n' in out
    assert ast.get_docstring(next(n for n in ast.walk(ast.parse(out)) if getattr(n, "name", "") == "add")) \
        == "Add two numbers."

    get = find_function(PY, 12, 4, "python")
    assert get.name == "get" and get.docstring == "Old words." and '"""' not in get.code
    out = apply(PY, get, "Return the item stored under key.")
    assert '    def get(self, key):\n        """Return the item stored under key."""\n        return self' in out
    assert "Old words" not in out

    one = find_function(PY, 15, 3, "python")  # body on the signature's line
    out = apply(PY, one, "Return x.")
    assert 'def one(x):\n    """Return x."""\n    return x\n' in out
    ast.parse(out)


def test_no_function_at_a_position_outside_any_or_in_an_unparsable_document():
    assert find_function(PY, 0, 3, "python") is None  # `import os`
    assert find_function(PY, 8, 0, "python") is None  # `class Box:` line, not in a method
    assert find_function(PY, 99, 0, "python") is None
    assert find_function("def f(:\n    pass\n", 1, 4, "python") is None
    assert find_function(JS, 8, 12, "javascript") is None  # an anonymous callback is not documented
    assert find_function("x = 1\n", 0, 0, "cobol") is None


def test_brace_languages_get_a_doc_comment_above_the_definition():
    fn = find_function(JS, 2, 4, "javascript")
    assert (fn.name, fn.replace) == ("add", (0, 0, 0, 11))  # the old /** */ is replaced
    assert apply(JS, fn, "Add a and b.").startswith("/**\n * Add a and b.\n */\nexport function add(a, b) {")
    arrow = find_function(JS, 6, 2, "javascript")
    assert arrow.name == "twice" and arrow.code.startswith("const twice") and arrow.code[:arrow.body_at].endswith("{")
    assert "/**\n * Double x.\n */\nconst twice = (x) => {" in apply(JS, arrow, "Double x.")

    java = "class A {\n  // keep me\n  public int add(int a, int b) {\n    return a + b;\n  }\n}\n"
    fn = find_function(java, 3, 4, "java")
    assert apply(java, fn, "Add.") == ("class A {\n  // keep me\n  /**\n   * Add.\n   */\n  public int add(int a, int b) {"
                                       "\n    return a + b;\n  }\n}\n")
    go = "package m\n\n// Add returns\n// a sum.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n"
    fn = find_function(go, 5, 1, "go")
    assert apply(go, fn, "Add returns the sum of a and b.") == (
        "package m\n\n// Add returns the sum of a and b.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n")
    rust = "/// Old.\n#[inline]\nfn add(a: i32) -> i32 {\n    a\n}\n"
    fn = find_function(rust, 3, 2, "rust")
    assert apply(rust, fn, "Return a.") == "/// Return a.\n#[inline]\nfn add(a: i32) -> i32 {\n    a\n}\n"
    c = "static int add(int a, int b)\n{\n  return a + b;\n}\n"
    assert find_function(c, 2, 2, "c").name == "add"
    cpp = "template <typename T>\nT add(T a, T b) {\n  return a + b;\n}\n"
    fn = find_function(cpp, 0, 3, "cpp")
    assert (fn.name, fn.replace) == ("add", (0, 0, 0, 0))  # above the template line
    ts = "export const add = (a: number, b: number): number => {\n  return a + b;\n};\n"
    assert find_function(ts, 1, 2, "typescript").name == "add"


def test_non_ascii_text_keeps_columns_in_code_points():
    src = 'def f(s="é"):  return s\n'
    out = apply(src, find_function(src, 0, 0, "python"), "Return s.")
    assert out == 'def f(s="é"):\n    """Return s."""\n    return s\n'


# --- formatting and cleaning --------------------------------------------------------------

def test_format_docstring_per_language_with_the_indentation():
    assert format_docstring("Add a and b.", "python", "    ") == '"""Add a and b."""'
    long = " ".join(["word"] * 30) + "."
    out = format_docstring(long, "python", "    ")
    lines = out.split("\n")
    assert lines[0].startswith('"""word') and lines[-1] == '    """' and all(len(s) <= 88 for s in lines)
    assert ast.literal_eval(out.replace("\n    ", "\n")).split() == long.split()
    assert ast.literal_eval(format_docstring('Use """ or \\n.', "python", "")) == 'Use """ or \\n.'
    assert format_docstring("Close */ early.", "java", "  ") == "/**\n   * Close * / early.\n   */"
    assert format_docstring("Do it.", "go", "\t") == "// Do it."
    assert format_docstring("Do it.", "rust", "") == "/// Do it."


def test_clean_summary_takes_the_docstring_out_of_chatty_answers():
    fenced = 'Here is the function:\n```python\ndef add(a, b):\n    """Add a and b.\n\n    Args: ...\n    """\n```'
    assert clean_summary(fenced, "python") == "Add a and b."
    assert clean_summary("Here is a docstring:\n\nreturns the sum of a and b", "python") == "Returns the sum of a and b."
    assert clean_summary('"""Compute x.\n\nArgs:\n    x: a number."""', "python") == "Compute x."
    assert clean_summary("One. Two. Three. Four.", "python") == "One. Two. Three."
    assert clean_summary("/**\n * Adds.\n * @param a first\n */", "javascript") == "Adds."
    assert clean_summary("```js\n/** Sum it. */\nfunction f() {}\n```", "javascript") == "Sum it."
    assert clean_summary('"""   """', "python") == ""
    assert clean_summary("Sure! Here's a docstring for it:\nReturns a + b", "python") == "Returns a + b."
    assert clean_summary('Here is the docstring:\n\n```python\ndef add(a, b):\n    """\n    Return the sum.\n    """',
                         "python") == "Return the sum."


def test_decoding_stops_at_the_end_of_the_docstring():
    assert finished('Add a and b."""', '"""') and not finished("Add a and b", '"""')
    assert finished("Add two numbers.\n\nArgs", None)
    assert finished('"""Add."""\n', None)
    assert finished("One. Two. Three. And", None) and not finished("One. Two. Three.", None)
    assert not finished("\n\n", None)
    assert finished("x = 1)\n   \n", None)  # a blank line after words, whitespace tokens included
    assert not finished("Here is the docstring:\n\n", None)  # a lead-in: the docstring comes next
    assert not finished("Here it is:\n\n```python\ndef add(a, b):\n\n", None)  # inside an open fence
    assert finished("Here it is:\n```python\ndef add(a, b):\n    return a\n```", None)
    assert finished('```python\ndef add(a, b):\n    """Add them."""', None)


# --- generation with a tiny model ------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_teacher):
    from pocketpilot.runtime.engine import CompletionEngine
    from pocketpilot.runtime.loader import load_model_folder

    return CompletionEngine(load_model_folder(tiny_teacher))


def test_write_docstring_is_bounded_and_prompts_after_the_signature(engine):
    fn = find_function(PY, 5, 0, "python")
    doc = write_docstring(engine, fn, max_new_tokens=6)
    assert doc.prompt == "prefix" and doc.new_tokens <= 6 and not doc.cancelled
    assert doc.prompt_tokens == len(engine.tokenizer.encode(fn.head + '"""', add_special_tokens=False))
    again = write_docstring(engine, fn, max_new_tokens=6)
    assert (again.raw, again.text) == (doc.raw, doc.text)  # greedy
    js = write_docstring(engine, find_function(JS, 2, 2, "javascript"), max_new_tokens=6)
    assert js.prompt == "prefix" and js.prompt_tokens > 0 and js.new_tokens <= 6


def test_cancelled_before_the_first_token(engine):
    doc = write_docstring(engine, find_function(PY, 5, 0, "python"), should_stop=lambda: True)
    assert doc.cancelled and doc.text == "" and doc.new_tokens == 0


def test_a_function_too_long_for_the_window_is_cut_with_a_log_line(engine, caplog):
    long = "def big(x):\n" + "".join(f"    y{i} = x + {i}\n" for i in range(300)) + "    return x\n"
    fn = function_from_code(long, "python")
    engine.tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    try:
        with caplog.at_level(logging.INFO, logger="pocketpilot.runtime.summarize"):
            doc = write_docstring(engine, fn, max_new_tokens=8)
    finally:
        engine.tokenizer.chat_template = None
    window = engine.model.config.max_position_embeddings  # 512 for the tiny model
    assert doc.prompt.startswith("chat") and doc.cut_tokens > 0 and doc.prompt_tokens <= 2 * (window - 8)
    assert "cut by" in caplog.text and "big" in caplog.text
    fits = write_docstring(engine, function_from_code("def f(x):\n    return x\n", "python"), max_new_tokens=4)
    assert fits.cut_tokens == 0


def test_a_chat_answer_without_a_docstring_falls_back_to_the_completion_prompt(engine, monkeypatch):
    from pocketpilot.runtime import summarize

    answers = iter([("def f(x):\n    return x", 5, False), ('Return x unchanged."""', 4, False)])
    kinds = []

    def fake_generate(engine_, prompt, limit, should_stop):
        kinds.append(prompt.kind)
        return next(answers)

    monkeypatch.setattr(summarize, "_generate", fake_generate)
    monkeypatch.setattr(engine.tokenizer, "chat_template", "{{ messages[0]['content'] }}", raising=False)
    doc = write_docstring(engine, function_from_code("def f(x):\n    return x\n", "python"))
    assert kinds == ["chat", "prefix"] and doc.prompt == "chat, then prefix"
    assert doc.text == "Return x unchanged." and doc.new_tokens == 9


def test_fim_prompt_puts_the_function_after_the_docstring(tmp_path):
    from tiny import make_tiny_teacher

    from pocketpilot.runtime.engine import CompletionEngine
    from pocketpilot.runtime.loader import load_model_folder
    from pocketpilot.runtime.summarize import build_prompt

    eng = CompletionEngine(load_model_folder(make_tiny_teacher(tmp_path / "fim", fim=True, steps=0)))
    fn = find_function(PY, 5, 0, "python")
    p = build_prompt(eng, fn, budget=400)
    fp, fs, fm = eng.fim
    assert p.kind == "fim" and p.ids[0] == fp and p.ids[-1] == fm
    assert eng.tokenizer.decode(p.ids[1:p.ids.index(fs)]) == fn.head + '"""'
    assert eng.tokenizer.decode(p.ids[p.ids.index(fs) + 1:-1]).startswith('"""\n    # the sum')


# --- the code action -------------------------------------------------------------------------

RESOLVE_CAPS = types.ClientCapabilities(
    text_document=types.TextDocumentClientCapabilities(code_action=types.CodeActionClientCapabilities(
        resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"]))),
    workspace=types.WorkspaceClientCapabilities(workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)))


@pytest.fixture
def ls(engine):
    server = PocketPilotServer()
    server.protocol._workspace = Workspace(None)
    server.protocol.client_capabilities = RESOLVE_CAPS
    server.workspace.put_text_document(types.TextDocumentItem(uri=URI, language_id="python", version=1, text=PY))
    server.workspace.put_text_document(types.TextDocumentItem(uri=JS_URI, language_id="javascript", version=3, text=JS))
    server.engine = engine
    return server


def _params(uri: str, line: int, character: int, trigger=types.CodeActionTriggerKind.Invoked, only=None):
    pos = types.Position(line=line, character=character)
    return types.CodeActionParams(text_document=types.TextDocumentIdentifier(uri=uri), range=types.Range(start=pos, end=pos),
                                  context=types.CodeActionContext(diagnostics=[], trigger_kind=trigger, only=only))


def _block(ls) -> threading.Event:
    """Occupy the inference thread until the returned event is set."""
    release = threading.Event()
    ls.infer.submit(release.wait)
    return release


async def test_action_is_offered_lazily_and_resolves_to_a_versioned_edit(ls):
    actions = await code_actions.offer(ls, _params(URI, 5, 4, trigger=types.CodeActionTriggerKind.Automatic))
    assert [a.title for a in actions] == [code_actions.TITLE] and actions[0].edit is None  # no model run yet
    action = await code_actions.resolve(ls, types.CodeAction(title=actions[0].title, kind=actions[0].kind,
                                                             data=json.loads(json.dumps(actions[0].data))))
    change = action.edit.document_changes[0]
    assert change.text_document.version == 1 and change.text_document.uri == URI
    [edit] = change.edits
    assert edit.range.start == edit.range.end == types.Position(line=5, character=0)
    assert re.fullmatch(r'    """[^\n]+"""\n', edit.new_text), edit.new_text
    js = await code_actions.offer(ls, _params(JS_URI, 2, 2))
    done = await code_actions.resolve(ls, js[0])
    [edit] = done.edit.document_changes[0].edits
    assert done.edit.document_changes[0].text_document.version == 3
    assert edit.range == types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=11))
    assert edit.new_text.startswith("/**\n * ") and edit.new_text.endswith("\n */")


async def test_no_action_outside_a_function_or_for_another_kind(ls):
    assert await code_actions.offer(ls, _params(URI, 0, 2)) == []
    assert await code_actions.offer(ls, _params(URI, 5, 4, only=[types.CodeActionKind.QuickFix])) == []
    assert len(await code_actions.offer(ls, _params(URI, 5, 4, only=[types.CodeActionKind.Refactor]))) == 1
    assert await code_actions.offer(ls, _params("file:///w/unopened.py", 0, 0)) == []
    ls.engine = None
    assert await code_actions.offer(ls, _params(URI, 5, 4)) == []


async def test_stale_document_version_yields_no_edit(ls):
    [action] = await code_actions.offer(ls, _params(URI, 5, 4))
    doc = ls.workspace.get_text_document(URI)
    doc.version = 2  # the user typed after the action was offered
    assert (await code_actions.resolve(ls, action)).edit is None
    doc.version = 1
    release = _block(ls)  # the document changes while the docstring request waits for the model
    task = asyncio.ensure_future(code_actions.resolve(ls, action))
    await asyncio.sleep(0.05)
    doc.version = 5
    release.set()
    assert (await asyncio.wait_for(task, 30)).edit is None


async def test_cancel_stops_the_generation_and_frees_the_worker(ls):
    [action] = await code_actions.offer(ls, _params(URI, 5, 4))
    release = _block(ls)
    task = asyncio.ensure_future(code_actions.resolve(ls, action))
    await asyncio.sleep(0.05)
    task.cancel()  # what $/cancelRequest does to the handler
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    ready = asyncio.get_running_loop().run_in_executor(ls.infer, lambda: "free")
    assert await asyncio.wait_for(ready, 5) == "free"


async def test_without_resolve_support_the_edit_comes_only_when_asked(ls):
    ls.protocol.client_capabilities = types.ClientCapabilities()
    assert await code_actions.offer(ls, _params(URI, 5, 4, trigger=types.CodeActionTriggerKind.Automatic)) == []
    [action] = await code_actions.offer(ls, _params(URI, 5, 4))
    assert list(action.edit.changes) == [URI]  # no documentChanges support: plain changes


# --- the summarize suite ---------------------------------------------------------------------

def _codexglue_reference(ref: str, hyp: str) -> float:
    """CodeXGLUE code-to-text's bleu.py for one pair, transcribed: splitPuncts + lower, mteval-v11a
    normalization, clipped counts, add-one smoothing above unigrams, brevity penalty with +1."""
    def words(s):
        s = " ".join(re.findall(r"[\w]+|[^\s\w]", s.strip().lower()))
        s = f" {s} ".lower()
        for pat, rep in ((r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "), (r"([^0-9])([\.,])", r"\1 \2 "),
                         (r"([\.,])([^0-9])", r" \1 \2"), (r"([0-9])(-)", r"\1 \2 ")):
            s = re.sub(pat, rep, s)
        return s.split()

    def grams(w):
        out = {}
        for k in range(1, 5):
            for i in range(len(w) - k + 1):
                out[tuple(w[i:i + k])] = out.get(tuple(w[i:i + k]), 0) + 1
        return out

    r, h = words(ref), words(hyp)
    rc, hc = grams(r), grams(h)
    log_bleu = 0.0
    for k in range(4):
        guess = max(len(h) - k, 0)
        correct = sum(min(c, rc.get(g, 0)) for g, c in hc.items() if len(g) == k + 1)
        add = 1 if k > 0 else 0
        log_bleu += math.log(correct + add + sys.float_info.min) - math.log(guess + add + sys.float_info.min)
    log_bleu = log_bleu / 4 + min(0, 1 - (len(r) + 1) / (len(h) + 1))
    return 100 * math.exp(log_bleu)


@pytest.mark.parametrize("hyp,ref", [
    ("Return the sum of a and b.", "Return the sum of a and b."),
    ("Return the sum.", "Return the sum of two numbers, a and b."),
    ("Computes the SHA-256 digest of data, in hex.", "Return the hex SHA-256 digest of `data`."),
    ("Open the file and read it line by line until the end", "Read a file."),
    ("Don't do it twice: x's value", "don't repeat x's value"),
])
def test_bleu_is_codexglue_smoothed_sentence_bleu(hyp, ref):
    assert codexglue_bleu(hyp, ref) == pytest.approx(_codexglue_reference(ref, hyp), abs=1e-9)


def test_bleu_and_rouge_bounds():
    assert codexglue_bleu("Return the sum of a and b.", "return the sum of a and b .") == pytest.approx(100)
    assert codexglue_bleu("", "Return x.") == 0.0 and codexglue_bleu("zzz", "Return x.") == 0.0
    assert rouge_l("Return the sum.", "Return the sum.") == pytest.approx(100)
    assert rouge_l("Return the sum.", "Return the sum of a and b.") == pytest.approx(100 * 2 * (3 / 7) / (1 + 3 / 7))  # P = 1, R = 3/7
    assert rouge_l("nothing alike", "Return x.") == 0.0


def test_tasks_are_documented_functions_with_the_docstring_removed(tmp_path):
    (tmp_path / "m.py").write_text('def f(x):\n    """Double the value.\n\n    More text."""\n    return 2 * x\n\n\n'
                                   'def g():\n    """Too short."""\n    return 1\n\n\n'
                                   'class C:\n    def h(self, y):\n        """Return y plus one, always."""\n'
                                   '        return y + 1\n\n    def only_doc(self):\n        """Just a docstring here."""\n')
    tasks = make_summary_tasks(tmp_path, n=10, seed=3)
    assert {t["id"] for t in tasks} == {"m.py:1:f", "m.py:14:h"}
    by_id = {t["id"]: t for t in tasks}
    assert by_id["m.py:1:f"] == {"id": "m.py:1:f", "code": "def f(x):\n    return 2 * x", "reference": "Double the value.",
                                 "lang": "python"}
    assert by_id["m.py:14:h"]["code"] == "def h(self, y):\n    return y + 1"  # dedented method
    assert make_summary_tasks(tmp_path, n=10, seed=3) == tasks
    with pytest.raises(PocketPilotError, match="no documented"):
        make_summary_tasks(tmp_path, n=5, files=[])


def test_stdlib_tasks_are_deterministic_and_parse():
    from pocketpilot.corpus import default_source_dir, held_out_files

    root = default_source_dir()
    held = held_out_files([root])
    tasks = make_summary_tasks(root, n=12, seed=0, files=held)
    assert len(tasks) == 12 and tasks == make_summary_tasks(root, n=12, seed=0, files=held)
    names = {p.relative_to(root).as_posix() for p in held}
    for t in tasks:
        assert t["id"].rsplit(":", 2)[0] in names
        tree = ast.parse(t["code"])
        assert ast.get_docstring(tree.body[0]) is None and len(t["reference"].split()) >= 3


def test_read_summary_tasks_checks_rows(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text(json.dumps({"code": "function f() {}", "reference": "Do f.", "lang": "javascript"}) + "\n\n"
                    + json.dumps({"id": "x", "code": "def g(): pass", "reference": "Do g."}) + "\n")
    assert [(t["id"], t["lang"]) for t in read_summary_tasks(good)] == [("t.jsonl:1", "javascript"), ("x", "python")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prefix": "x", "gt": "y"}) + "\n")
    with pytest.raises(PocketPilotError, match=r"bad.jsonl:1: not a summarize task"):
        read_summary_tasks(bad)
    with pytest.raises(PocketPilotError, match="not found"):
        read_summary_tasks(tmp_path / "missing.jsonl")


def test_evaluate_summaries_scores_and_reuses_the_checkpoint(engine, tmp_path):
    from pocketpilot.evaluation.checkpoint import Checkpoint

    tasks = [{"id": "a", "code": "def add(a, b):\n    return a + b", "reference": "Add a and b.", "lang": "python"},
             {"id": "b", "code": "function f(x) {\n  return x;\n}", "reference": "Return x.", "lang": "javascript"}]
    ckpt = Checkpoint(tmp_path / "c.jsonl")
    res = evaluate_summaries(engine, tasks, scope=ckpt.scope("m", "summarize"))
    assert res["n"] == 2 and res["reused"] == 0 and res["latency_ms_p50"] > 0
    for row, task in zip(res["predictions"], tasks):
        assert row["bleu"] == pytest.approx(codexglue_bleu(row["pred"], task["reference"]), abs=0.01)
    assert res["bleu"] == pytest.approx(sum(codexglue_bleu(r["pred"], r["reference"]) for r in res["predictions"]) / 2,
                                        abs=0.01)
    again = evaluate_summaries(engine, tasks, scope=Checkpoint(tmp_path / "c.jsonl").scope("m", "summarize"))
    assert again["reused"] == 2 and again["predictions"] == res["predictions"]


def test_runner_and_report_include_the_suite(tmp_path, monkeypatch):
    from pocketpilot.evaluation.report import markdown
    from pocketpilot.evaluation.runner import SUITES, parse_suites, ratios

    assert "summarize" in SUITES and parse_suites("summarize") == ["summarize"]
    models = {"t": {"summarize": {"n": 2, "bleu": 20.0, "rouge_l": 40.0, "latency_ms_p50": 100.0,
                                  "latency_ms_p95": 150.0, "cut": 1, "empty": 0}},
              "q": {"summarize": {"n": 2, "bleu": 19.0, "rouge_l": 42.0, "latency_ms_p50": 50.0,
                                  "latency_ms_p95": 70.0, "cut": 1, "empty": 1}}}
    r = ratios(models)
    assert r["q"]["summarize.bleu"] == 0.95 and r["q"]["summarize.latency_ms_p50"] == 0.5
    md = markdown({"config": {"suites": ["summarize"], "seed": 0, "summarize": "2 given tasks"}, "models": models,
                   "ratios": r})
    assert "| q | 19.00 | 42.00 | 50 | 70 | 1 | 1 |" in md and "summarize.rouge_l" in md
    assert "- summarize: 2 given tasks" in md


def test_cli_reads_summarize_tasks_with_the_suite(tmp_path, engine, capsys):
    from pocketpilot.cli import main

    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"id": "a", "code": "def add(a, b):\n    return a + b", "reference": "Add a and b."}) + "\n")
    out = tmp_path / "r.json"
    assert main(["eval", str(engine.loaded.folder), "--suite", "summarize", "--tasks", str(f), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    entry = next(iter(res["models"].values()))["summarize"]
    assert entry["n"] == 1 and res["config"]["summarize"] == "1 given tasks"
    assert "Code summarization" in capsys.readouterr().out


def test_summarize_tasks_file_of_the_wrong_kind_is_a_one_line_error(tmp_path, capsys):
    from pocketpilot.cli import main

    f = tmp_path / "lines.jsonl"
    f.write_text(json.dumps({"prefix": "x = ", "gt": "1"}) + "\n")
    assert main(["eval", "nothing", "--suite", "summarize", "--tasks", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "lines.jsonl:1: not a summarize task" in err and "\n" not in err


def test_docs_name_the_command():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "--suite summarize" in readme and "vim.lsp.buf.code_action" in readme


def test_an_echoed_function_is_not_taken_for_a_summary():
    from pocketpilot.runtime.summarize import clean_summary

    # a small instruct model often writes the function back instead of describing it
    assert clean_summary('def tabs(self): return self.tk.splitlist(self.tk.call(self._w, "tabs"))', "python") == ""
    assert clean_summary('def f(x):\n    """Return x doubled."""\n    return 2 * x', "python") == "Return x doubled."
    assert clean_summary("int add(int a, int b) { return a + b; }", "c") == ""
    assert clean_summary("Definitely returns the sum.", "python") == "Definitely returns the sum."
