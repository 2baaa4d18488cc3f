import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.codexglue import (
    code_to_tokens,
    data_dir,
    denormalize,
    evaluate_codexglue,
    load_examples,
    official_scores,
    prompt_from_input,
)

PY_LITS = {"str": ["a", "utf-8", "U+0020", "U+002CU+0020", "name", "index"], "num": ["0", "1", "1.0"], "char": []}
JAVA_LITS = {"str": ["U+0020", "\\n"], "num": ["0", "1L"], "char": ["a", "U+0020"]}

PY_ROWS = [
    {"input": "<s> import os <EOL> path = os . path . join ( root ,", "gt": "'<STR_LIT:name>' )"},
    {"input": "<s> def content ( path_name ) : <EOL> return BytesIO ( content ) <EOL> default", "gt": "= { }"},
] + [{"input": f"<s> x = <NUM_LIT:{i}> <EOL>", "gt": f"y = {i}"} for i in range(8)]
JAVA_ROWS = [
    {"input": "<s> public void reset ( ) {", "gt": "this . x = <NUM_LIT:0> ;"},
    {"input": "<s> char c =", "gt": "'<CHAR_LIT:a>' ;"},
    {"input": "<s> String s =", "gt": "\"<STR_LIT>\" ;"},
]


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A small data folder in the shared layout, pointed at by POCKETPILOT_DATA."""
    line = tmp_path / "data" / "codexglue_line"
    line.mkdir(parents=True)
    (line / "py150_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PY_ROWS))
    (line / "java_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in JAVA_ROWS))
    (line / "py150_literals.json").write_text(json.dumps(PY_LITS))
    (line / "java_literals.json").write_text(json.dumps(JAVA_LITS))
    monkeypatch.setenv("POCKETPILOT_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def _real_data() -> Path:
    try:
        return data_dir()
    except PocketPilotError:
        pytest.skip("shared CodeXGLUE data not present (../shared/data or POCKETPILOT_DATA)")


@pytest.mark.parametrize("text, expected", [
    ("x = <NUM_LIT>", "x = 0"),
    ('f ( "<STR_LIT>" , \'<CHAR_LIT>\' )', "f ( \"\" , '' )"),
    ("open ( p , '<STR_LIT:utf-8>' ) [ <NUM_LIT:100> ]", "open ( p , 'utf-8' ) [ 100 ]"),
    ("c == '<CHAR_LIT:a>'", "c == 'a'"),
    ("sep = '<STR_LIT:U+002CU+0020>'", "sep = 'U+002CU+0020'"),  # the evaluator keeps code points as stored
    ("s = '<STR_LIT:->>'", "s = '->'"),  # non-greedy value: '<STR_LIT:->' then '>'
    ("u'<STR_LIT>' + b\"\"\"<STR_LIT>\"\"\"", "u'' + b\"\"\"\"\"\""),
])
def test_denormalize_matches_the_official_post_process(text, expected):
    assert denormalize(text) == expected


def test_prompt_from_a_real_looking_input():
    inp = ("<s> from io import BytesIO <EOL> def path ( name , mode = '<STR_LIT:r>' ) : <EOL> "
           "return open ( '<STR_LIT>' . format ( name ) , <NUM_LIT:3> , <NUM_LIT> ) <EOL> "
           "sep = '<STR_LIT:U+002CU+0020>' <EOL> \"\"\"<STR_LIT>\"\"\" <EOL> if sys . version_info >")
    assert prompt_from_input(inp) == (
        "from io import BytesIO\n"
        "def path ( name , mode = 'r' ) :\n"
        "return open ( '' . format ( name ) , 3 , 0 )\n"
        "sep = ', '\n"
        '""""""\n'
        "if sys . version_info >")
    # ending in <EOL>: the model starts a new line
    assert prompt_from_input("<s> import os <EOL> ") == "import os\n"
    # Java: no <EOL>; char literals keep their quotes
    assert prompt_from_input("<s> if ( c == '<CHAR_LIT>' || c == '<CHAR_LIT:a>' ) {") == "if ( c == ' ' || c == 'a' ) {"


@pytest.mark.parametrize("code, expected", [
    ('self.assertEqual(x, "a")', 'self . assertEqual ( x , "<STR_LIT:a>" )'),
    ('logging.info("Starting %s" % name)  # log it', 'logging . info ( "<STR_LIT>" % name )'),
    ("open(path, 'rb', 2)", "open ( path , '<STR_LIT>' , <NUM_LIT> )"),
    ("print(' ', u'index', 1.0)", "print ( '<STR_LIT:U+0020>' , u'<STR_LIT:index>' , <NUM_LIT:1.0> )"),
    ("x **= r'\\d+' if a >= b else -1", "x **= r'<STR_LIT>' if a >= b else - <NUM_LIT:1>"),
    ("HistoricalMap):", "HistoricalMap ) :"),  # partial line: tokenize copes or the regex takes over
    ("foo(bar, [1,", "foo ( bar , [ <NUM_LIT:1> ,"),  # unclosed brackets: regex fallback
    ('msg = "unterminated', 'msg = "<STR_LIT>'),
    ("a = 1\n\n    b = 0\n", "a = <NUM_LIT:1> <EOL> b = <NUM_LIT:0>"),
])
def test_python_retokenization_matches_the_dataset_form(code, expected):
    assert code_to_tokens(code, "python", literals=PY_LITS) == expected


@pytest.mark.parametrize("code, expected", [
    ("if (x >= 0 && y != null) {", "if ( x >= <NUM_LIT:0> && y != null ) {"),
    ("Map<String, List<Integer>> m = new HashMap<>();", "Map < String , List < Integer > > m = new HashMap < > ( ) ;"),
    ("c = 'a'; d = 'b'; e = '\\n'; s = \" \"; t = \"hi\"; n = 1L; i += 2; k >>>= 3;",
     "c = '<CHAR_LIT:a>' ; d = '<CHAR_LIT>' ; e = '<STR_LIT:\\n>' ; s = \"<STR_LIT:U+0020>\" ; "
     "t = \"<STR_LIT>\" ; n = <NUM_LIT:1L> ; i += <NUM_LIT> ; k >>>= <NUM_LIT> ;"),
    ("@Override public void run(String... args) { // go", "@ Override public void run ( String ... args ) {"),
    ("list.forEach(x -> System.out.println(x)); /* done */", "list . forEach ( x -> System . out . println ( x ) ) ;"),
])
def test_java_retokenization_matches_the_dataset_form(code, expected):
    assert code_to_tokens(code, "java", literals=JAVA_LITS) == expected


def test_es_em_on_hand_computed_pairs():
    # "foo ( a )" vs "foo ( b )": Indel distance 2 over 18 characters -> 100 * 16/18 = 88.9 -> 89
    assert official_scores("foo ( a )", "foo ( b )") == (89, False)
    # "abc" vs "abd": 100 * 4/6 = 66.7 -> fuzzywuzzy rounds to 67
    assert official_scores("abc", "abd") == (67, False)
    # de-normalized before scoring: the placeholder forms compare as code
    assert official_scores("x = <NUM_LIT:0>", "x = <NUM_LIT>") == (100, True)
    assert official_scores("  f ( '<STR_LIT>' )  ", "f ( '<STR_LIT>' )") == (100, True)
    # EM is split-equality, so spacing inside does not matter but ES sees it
    es, em = official_scores("a  +  b", "a + b")
    assert em and es == 83  # 5 + 7 = 12 chars, 2 insertions -> 100 * 10/12 = 83.3


def test_load_examples_limit_seed_and_aliases(data_root):
    every = load_examples("python")
    assert [e["id"] for e in every] == [f"python/{i}" for i in range(10)]
    assert every[1] == {"id": "python/1", "input": PY_ROWS[1]["input"], "gt": "= { }", "lang": "python"}
    assert load_examples("py150", limit=3) == every[:3]
    assert load_examples("PY", limit=50) == every
    assert load_examples("python", limit=0) == []
    a = load_examples("python", limit=4, seed=7)
    assert a == load_examples("python", limit=4, seed=7, root=data_root / "codexglue_line")
    assert len(a) == 4 and [e["id"] for e in a] == sorted((e["id"] for e in a), key=lambda s: int(s.split("/")[1]))
    assert all(e in every for e in a)
    samples = {tuple(e["id"] for e in load_examples("python", limit=4, seed=s)) for s in range(5)}
    assert len(samples) > 1  # the seed picks the sample
    assert [e["lang"] for e in load_examples("java")] == ["java"] * 3


def test_unknown_language_and_missing_data(data_root, monkeypatch, tmp_path):
    with pytest.raises(PocketPilotError, match="python.*java"):
        load_examples("ruby")
    with pytest.raises(PocketPilotError, match="choose one of"):
        code_to_tokens("x", "cobol", literals=PY_LITS)
    with pytest.raises(PocketPilotError, match="limit"):
        load_examples("python", limit=-1)
    monkeypatch.setenv("POCKETPILOT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(PocketPilotError, match="POCKETPILOT_DATA"):
        data_dir()
    with pytest.raises(PocketPilotError, match="POCKETPILOT_DATA"):
        load_examples("java", root=tmp_path)  # a folder without the files


@dataclass
class _FakeCompletion:
    text: str
    total_ms: float


class _FakeEngine:
    """Answers each prompt from a table and records how it was called."""

    def __init__(self, answers: dict[str, tuple[str, float]]):
        self.answers = answers
        self.calls = []

    def complete(self, prefix, suffix="", allow_block=True, **kw):
        self.calls.append((prefix, suffix, allow_block))
        for end, (text, ms) in self.answers.items():
            if prefix.endswith(end):
                return _FakeCompletion(text, ms)
        return _FakeCompletion("", 1.0)


def test_evaluate_codexglue_end_to_end_with_a_fake_engine(data_root):
    examples = load_examples("python", limit=2) + load_examples("java", limit=1)
    engine = _FakeEngine({
        "join ( root ,": (" 'name')\nnext_line = 1", 10.0),   # exact after re-tokenization
        "default": ("= []", 30.0),                            # "= [ ]" vs "= { }": 100 * 6/10 = 60
        "reset ( ) {": ("this.x = 0;", 20.0),                 # exact
    })
    seen = []

    def progress(it):
        seen.append(len(it))
        return it

    out = evaluate_codexglue(engine, examples, progress=progress)
    assert engine.calls[0] == ("import os\npath = os . path . join ( root ,", "", False)
    assert all(s == "" and ab is False for _, s, ab in engine.calls)
    assert seen == [3]
    assert out["n"] == 3
    assert [(p["id"], p["pred"], p["gt"], p["es"], p["em"]) for p in out["predictions"]] == [
        ("python/0", "'name' )", "'name' )", 100, True),
        ("python/1", "= [ ]", "= { }", 60, False),
        ("java/0", "this . x = 0 ;", "this . x = 0 ;", 100, True),
    ]
    assert out["es"] == 86.67 and out["em"] == 66.67
    assert out["latency_ms_p50"] == 20.0 and out["latency_ms_p95"] == 30.0
    empty = evaluate_codexglue(engine, [])
    assert (empty["n"], empty["es"], empty["em"], empty["latency_ms_p50"]) == (0, 0.0, 0.0, None)


def test_real_splits_load_and_round_trip():
    root = _real_data()
    py, java = load_examples("python", root=root), load_examples("java", root=root)
    assert (len(py), len(java)) == (3819, 3000)
    assert py[0]["gt"] == "HistoricalMap ) :"
    assert load_examples("java", limit=5, seed=3) == load_examples("java", limit=5, seed=3)
    # code written from a gt (placeholders -> plausible code) re-tokenizes back to the same scored text
    for rows, floor in ((py, 1.0), (java, 0.995)):  # Java misses only '<CHAR_LIT>' -> ' ' (a frequent char)
        same = sum(denormalize(code_to_tokens(prompt_from_input(r["gt"]), r["lang"])) == denormalize(r["gt"])
                   for r in rows)
        assert same / len(rows) >= floor


def test_evaluate_codexglue_with_the_tiny_teacher(tiny_teacher, data_root):
    from pocketpilot.runtime import CompletionEngine, load_model_folder

    engine = CompletionEngine(load_model_folder(tiny_teacher))
    out = evaluate_codexglue(engine, load_examples("python", limit=3))
    assert out["n"] == 3 and len(out["predictions"]) == 3
    assert set(out) == {"n", "es", "em", "latency_ms_p50", "latency_ms_p95", "predictions"}
    assert all(set(p) == {"id", "pred", "gt", "es", "em"} for p in out["predictions"])
    assert all(0 <= p["es"] <= 100 and isinstance(p["es"], int) for p in out["predictions"])
    assert 0 <= out["es"] <= 100 and 0 <= out["em"] <= 100 and out["latency_ms_p50"] > 0
