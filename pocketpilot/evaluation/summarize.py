"""The ``summarize`` suite: docstrings written by a model, scored against the ones people wrote.

A task is ``{"id", "code", "reference", "lang"}``: the function's source without its docstring,
and the reference summary. :func:`make_summary_tasks` cuts them from the Python standard
library's documented functions (the reference is the docstring's first paragraph, as
CodeSearchNet / CodeXGLUE code-to-text take the summary); ``--tasks FILE`` reads any JSONL of
such rows (:func:`read_summary_tasks`).

Metrics:

- smoothed sentence BLEU-4 as the CodeXGLUE code-to-text evaluator reports it
  (``Code-Text/code-to-text/evaluator/bleu.py``, after Lin and Och, "ORANGE", COLING 2004), the
  mean over tasks, 0-100: see :func:`codexglue_bleu`;
- ROUGE-L F1 (Lin, 2004) from ``rouge-score``, 0-100;
- latency p50 / p95 of writing one docstring (ms).
"""

from __future__ import annotations

import ast
import json
import random
import re
import statistics
import textwrap
from pathlib import Path
from typing import Callable, Iterable

from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU

from pocketpilot.corpus import default_source_dir, source_files
from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.line_completion import percentile
from pocketpilot.evaluation.tasks import read_jsonl_rows
from pocketpilot.runtime.functions import function_from_code, python_functions

def checkpoint_settings() -> dict:
    """The generation settings a ``summarize`` checkpoint entry is valid for (prompt version and limits)."""
    from pocketpilot.runtime.summarize import DOC_MAX_TOKENS, DOC_PROMPT_TOKENS, PROMPT_VERSION  # lazy: torch

    return {"prompt_version": PROMPT_VERSION, "max_new_tokens": DOC_MAX_TOKENS, "max_prompt_tokens": DOC_PROMPT_TOKENS}


# counts n-grams with CodeXGLUE's tokenization (13a, lowercased); the score is computed in codexglue_bleu
_BLEU = BLEU(tokenize="13a", lowercase=True, effective_order=True)
_ROUGE = rouge_scorer.RougeScorer(["rougeL"])


def codexglue_bleu(pred: str, reference: str) -> float:
    """Smoothed sentence BLEU-4 of ``pred`` against ``reference``, 0-100, as CodeXGLUE code-to-text computes it.

    CodeXGLUE's evaluator (``bleu.py``, from the CodeBERT code): both strings lowercased and split
    into words and punctuation (``[\\w]+|[^\\s\\w]``), then NIST mteval-v11a tokenization; clipped
    n-gram counts up to 4; add-one smoothing of the 2- to 4-gram precisions (Lin and Och, 2004);
    brevity penalty ``exp(min(0, 1 - (r + 1) / (c + 1)))`` for reference length r and candidate
    length c (tokens). Here sacrebleu does the counting (its ``13a`` tokenizer is mteval's) and
    :meth:`BLEU.compute_bleu` the score, given the lengths plus one so that its brevity penalty
    is CodeXGLUE's; the only difference left: an empty or wholly wrong candidate scores 0 here
    where CodeXGLUE gives a number below 1e-70.
    """
    split = [" ".join(re.findall(r"[\w]+|[^\s\w]", s.strip().lower())) for s in (pred, reference)]
    stats = _BLEU.sentence_score(split[0], [split[1]])
    return BLEU.compute_bleu(list(stats.counts), list(stats.totals), stats.sys_len + 1, stats.ref_len + 1,
                             smooth_method="add-k", smooth_value=1, effective_order=False).score


def rouge_l(pred: str, reference: str) -> float:
    """ROUGE-L F1 of ``pred`` against ``reference``, 0-100 (``rouge-score``: lowercased words, no stemming)."""
    return 100 * _ROUGE.score(reference, pred)["rougeL"].fmeasure


def reference_summary(docstring: str) -> str:
    """A docstring's summary: its first paragraph, whitespace collapsed (what CodeSearchNet keeps)."""
    return " ".join(re.split(r"\n\s*\n", docstring.strip())[0].split())


def _documented(path: Path, root: Path) -> list[dict]:
    """Tasks from one file: every function with a docstring of at least 3 words and a body beyond it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    rel = path.relative_to(root).as_posix()
    out = []
    for fn in python_functions(text):
        ref = reference_summary(fn.docstring) if fn.docstring else ""
        if len(ref.split()) < 3 or ">>>" in ref or not _has_body(fn.code):
            continue
        out.append({"id": f"{rel}:{fn.start_line + 1}:{fn.name}", "code": textwrap.dedent(fn.code), "reference": ref,
                    "lang": "python"})
    return out


def _has_body(code: str) -> bool:
    """True when the function (its docstring removed) still has a statement."""
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:
        return False
    return bool(tree.body) and bool(getattr(tree.body[0], "body", None))


def make_summary_tasks(root: Path | None = None, n: int = 100, seed: int = 0,
                       files: list[Path] | None = None) -> list[dict]:
    """Cut up to ``n`` summarization tasks from the documented functions under ``root``, deterministically.

    Each draw picks a file, then one of its documented functions not taken yet (see
    :func:`reference_summary`); ``files`` restricts the files (e.g. the held-out split).

    Raises:
        PocketPilotError: ``root`` is missing or holds no documented function.
    """
    root = Path(root) if root else default_source_dir()
    if not root.is_dir():
        raise PocketPilotError(f"source folder not found: {root}")
    files = sorted(files) if files is not None else source_files(root)
    rng = random.Random(seed)
    found: dict[Path, list[dict]] = {}
    tasks: list[dict] = []
    for _ in range(n * 50):
        if len(tasks) >= n or not files:
            break
        path = rng.choice(files)
        if path not in found:
            found[path] = _documented(path, root)
        if not found[path]:
            files = [f for f in files if f != path]
            continue
        tasks.append(found[path].pop(rng.randrange(len(found[path]))))
    if not tasks:
        raise PocketPilotError(f"no documented Python functions under {root}")
    return tasks


def read_summary_tasks(path: Path) -> list[dict]:
    """Read JSONL summarization tasks: each row needs ``code`` and ``reference`` (``id`` and ``lang``,
    default ``python``, are optional).

    Raises:
        PocketPilotError: the file is missing or a row is malformed (names the line number).
    """
    return read_jsonl_rows(path, lambda row: isinstance(row["code"], str) and isinstance(row["reference"], str),
                           "not a summarize task (need JSON with string 'code' and 'reference'; "
                           "with --suite summarize, --tasks takes such rows)", lang="python")


def evaluate_summaries(engine, tasks: list[dict], progress: Callable[[Iterable], Iterable] | None = None,
                       scope=None) -> dict:
    """Write a docstring for each task's code with ``engine`` and score it against the reference.

    Args:
        engine: a :class:`pocketpilot.runtime.CompletionEngine`.
        tasks: rows ``{"id", "code", "reference", "lang"}``.
        progress: optional wrapper such as ``tqdm`` around the task iterator.
        scope: a :class:`.checkpoint.CheckpointScope` keeping each generated docstring (with its
            latency) for reuse, or ``None``.

    Returns:
        ``{"n", "bleu", "rouge_l", "latency_ms_p50", "latency_ms_p95", "cut", "empty", "reused",
        "predictions"}``: mean smoothed BLEU-4 and ROUGE-L F1 (0-100, 2 decimals), latencies in ms,
        how many functions were cut to fit the prompt and how many answers were empty, outputs
        taken from the checkpoint; ``predictions`` lists ``{"id", "pred", "reference", "bleu", "rouge_l", "ms"}``.
    """
    from pocketpilot.runtime.summarize import clean_summary, write_docstring  # lazy: torch

    rows, lat, scores = [], [], []
    cut = reused = 0
    for task in progress(tasks) if progress else tasks:
        item = [task["code"], task.get("lang", "python")]
        got = scope.get(item) if scope is not None else None
        if isinstance(got, dict) and {"raw", "ms", "cut_tokens"} <= got.keys():
            reused += 1  # cleaned again: a better clean_summary needs no new model run
            got = {**got, "text": clean_summary(got["raw"], task.get("lang", "python")) if got["raw"] else ""}
        else:
            d = write_docstring(engine, function_from_code(task["code"], task.get("lang", "python")))
            got = {"text": d.text, "raw": "" if d.cancelled else d.raw, "ms": round(d.ms, 1),
                   "cut_tokens": d.cut_tokens}
            if scope is not None:
                scope.put(item, got)
        cut += got["cut_tokens"] > 0
        lat.append(got["ms"])
        scores.append((codexglue_bleu(got["text"], task["reference"]), rouge_l(got["text"], task["reference"])))
        rows.append({"id": task.get("id"), "pred": got["text"], "reference": task["reference"],
                     "bleu": round(scores[-1][0], 2), "rouge_l": round(scores[-1][1], 2), "ms": got["ms"]})
    n = len(rows)
    return {"n": n, "bleu": round(statistics.fmean(b for b, _ in scores), 2) if n else 0.0,
            "rouge_l": round(statistics.fmean(r for _, r in scores), 2) if n else 0.0,
            "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
            "latency_ms_p95": round(percentile(lat, 95), 1) if lat else None,
            "cut": cut, "empty": sum(not r["pred"] for r in rows), "reused": reused, "predictions": rows}
