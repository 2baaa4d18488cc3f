"""HumanEval functional correctness (pass@1, greedy) and ReCode robustness.

* HumanEval (Chen et al., 2021, "Evaluating Large Language Models Trained on Code",
  arXiv:2107.03374): 164 Python functions given as signature + docstring; the model writes the
  body, which passes if the hidden unit tests pass. Decoding is greedy, so pass@1 is the
  fraction of problems solved (:func:`pass_at_k` has the unbiased estimator for sampling).
* ReCode (Wang et al., 2022, "ReCode: Robustness Evaluation of Code Generation Models",
  arXiv:2212.10264, ACL 2023): the same problems with semantics-preserving perturbations of the
  prompt, in four categories: ``nlaugmenter`` (docstring paraphrases, typos, case changes),
  ``func_name`` (function renames), ``format`` (new lines, tab indent, split lines, docstring to
  comments) and ``natgen`` (dead code, for/while, operand swap, variable renames). The metric is
  pass@1 on the nominal prompts against pass@1 on the perturbed prompts; the robust drop is
  nominal minus perturbed (mean or worst case over the transforms of a category).

``format`` and ``natgen`` perturb ReCode's *partial code* prompts (signature, docstring and the
first half of the canonical solution), so their nominal is ``humaneval_partial.jsonl``; the
other categories perturb the plain HumanEval prompts.

Generated code runs in a separate, resource-limited process (:mod:`.sandbox`), one problem at a
time, isolated where the OS allows it; each result says how (``"sandbox"``: "isolated: ..." or
"not isolated: <reason>"). Data: ``recode/`` in the data folder (:func:`data_dir`).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.data import DATA_ENV
from pocketpilot.evaluation.data import data_dir as _data_dir
from pocketpilot.evaluation.sandbox import SandboxResult, isolation, run_program

#: Standard HumanEval/Codex stop sequences for a function body.
STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
#: ReCode categories whose prompts (and so whose nominal) are the partial-code prompts.
PARTIAL_CATEGORIES = ("format", "natgen")
_PERTURBED_RE = re.compile(r"^(?P<category>[a-z_]+?)__humaneval_(?P<transform>.+)_s0\.jsonl$")
#: a line that starts at column 0 with something other than whitespace: the function has ended
_UNINDENTED_RE = re.compile(r"\n\S")


def data_dir() -> Path:
    """The evaluation data folder (see :func:`pocketpilot.evaluation.data.data_dir`).

    Raises:
        PocketPilotError: it does not exist.
    """
    return _data_dir("recode/")


def _recode_dir() -> Path:
    folder = data_dir() / "recode"
    if not folder.is_dir():
        raise PocketPilotError(f"no recode/ in {folder.parent}; set {DATA_ENV} to the folder that holds recode/")
    return folder


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise PocketPilotError(f"{path} not found; set {DATA_ENV} to the folder that holds recode/")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_problems(path: Path | None = None, limit: int | None = None) -> list[dict]:
    """Read HumanEval-format problems (``task_id``, ``prompt``, ``entry_point``, ``test``, ...).

    Args:
        path: a ``.jsonl`` file; default ``recode/HumanEval.jsonl`` in :func:`data_dir`.
        limit: keep the first ``limit`` problems.

    Raises:
        PocketPilotError: the file or the data folder is missing.
    """
    rows = _read_jsonl(Path(path) if path is not None else _recode_dir() / "HumanEval.jsonl")
    return rows[:limit] if limit is not None else rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al., 2021 (Codex paper, eq. 1): ``1 - C(n-c, k) / C(n, k)``.

    The probability that at least one of ``k`` samples drawn without replacement from ``n``
    generated samples, ``c`` of them correct, is correct; computed as the stable product
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``. With one greedy sample (``n = k = 1``) it is ``c / n``.

    Returns:
        a fraction in ``[0, 1]``.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _stop_index(text: str, at_line_start: bool) -> int | None:
    """Index in ``text`` of the first stop (stop sequence or unindented line), or ``None``."""
    hits = [i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0]
    m = _UNINDENTED_RE.search(("\n" if at_line_start else "") + text)
    if m:
        hits.append(max(0, m.start() - (1 if at_line_start else 0)))
    return min(hits) if hits else None


def truncate_completion(text: str, at_line_start: bool = True) -> str:
    """Cut a generated function body at the first stop sequence or unindented non-empty line.

    ``at_line_start``: the prompt ended with a newline, so a first line at column 0 stops too.
    """
    cut = _stop_index(text, at_line_start)
    return text if cut is None else text[:cut]


def _unindented_criterion(tokenizer, prompt_len: int, at_line_start: bool):
    """A ``StoppingCriteria`` that stops once the new text holds an unindented non-empty line."""
    import torch  # lazy: torch
    from transformers import StoppingCriteria  # lazy: transformers imports torch

    class UnindentedLine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            text = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            hit = _UNINDENTED_RE.search(("\n" if at_line_start else "") + text) is not None
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    return UnindentedLine()


def generate(loaded, prompt: str, max_new_tokens: int = 300) -> tuple[str, dict]:
    """Greedy completion of a function body after ``prompt``.

    Uses ``transformers``' ``model.generate`` (greedy, ``stop_strings`` =
    :data:`STOP_SEQUENCES`, plus a criterion for an unindented non-empty line, EOS). The text
    is cut at the first stop. A prompt longer than the model's context minus
    ``max_new_tokens`` keeps its last tokens.

    Token boundary: tokenizers such as SmolLM2's merge a newline with the next line's
    indentation, so a prompt ending in a bare newline is a token split the model never saw (it
    answers with a chat-style end of code block). When the prompt's tokens are not a prefix of
    the tokens of the prompt followed by an indented line, the trailing whitespace is removed
    before generating (as the bigcode-evaluation-harness does); otherwise (Qwen has one token for
    closing quotes plus newline) the prompt is kept, since stripping it makes such models end the function.

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel` (float or int8).
        prompt: HumanEval-style prompt (signature and docstring, maybe partial code).
        max_new_tokens: most tokens decoded.

    Returns:
        ``(completion, {"new_tokens", "ms"})``: the text that follows ``prompt.rstrip()``, tokens
        decoded (EOS included) and wall time (ms).
    """
    import torch  # lazy: torch
    from transformers import StoppingCriteriaList  # lazy: transformers imports torch

    loaded.require_torch("HumanEval and ReCode generation")
    tok, model = loaded.tokenizer, loaded.model
    stripped = prompt.rstrip()
    tail = "" if _natural_boundary(tok, prompt) else prompt[len(stripped):]
    prompt = prompt[: len(prompt) - len(tail)]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    if n_ctx and ids.shape[1] > n_ctx - max_new_tokens:
        ids = ids[:, -max(1, n_ctx - max_new_tokens):]
    prompt_len = ids.shape[1]
    at_line_start = prompt.endswith("\n")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            stop_strings=STOP_SEQUENCES,
            tokenizer=tok,
            stopping_criteria=StoppingCriteriaList([_unindented_criterion(tok, prompt_len, at_line_start)]),
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
        )
    ms = (time.perf_counter() - t0) * 1000
    new = out[0, prompt_len:]
    text = tok.decode(new, skip_special_tokens=True)
    completion = prompt[len(stripped):] + truncate_completion(text, at_line_start)  # continues prompt.rstrip()
    return completion, {"new_tokens": int(new.shape[0]), "ms": round(ms, 1)}


def _natural_boundary(tokenizer, prompt: str) -> bool:
    """True if ``prompt`` ends on a token boundary the model sees in training: its tokens stay a
    prefix of the tokens of ``prompt`` followed by an indented line."""
    a = tokenizer.encode(prompt, add_special_tokens=False)
    b = tokenizer.encode(prompt + "    pass\n", add_special_tokens=False)
    return b[: len(a)] == a


def check(problem: dict, completion: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run ``problem``'s tests on ``prompt + completion`` in the sandbox.

    The program is ``prompt.rstrip() + completion + "\\n" + test + "\\ncheck(ENTRY_POINT)\\n"``.
    """
    return run_program(build_program(problem, completion), timeout_s=timeout_s, memory_mb=memory_mb)


def as_completion(prompt: str, body: str) -> str:
    """``body`` written after the full ``prompt`` (e.g. a canonical solution), as a completion of ``prompt.rstrip()``."""
    return prompt[len(prompt.rstrip()):] + body


def build_program(problem: dict, completion: str) -> str:
    """``prompt.rstrip() + completion + "\\n" + test + "\\ncheck(ENTRY_POINT)\\n"``: the program :func:`check` runs
    (completions continue the stripped prompt, see :func:`generate`)."""
    return problem["prompt"].rstrip() + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


class EvalCache:
    """Generations by prompt text and sandbox results by program text, shared across problem sets.

    Many ReCode transforms leave some prompts unchanged, and greedy decoding is deterministic,
    so each distinct prompt is generated (and each distinct program run) once.

    Args:
        store: optional persistent generations (a :class:`.checkpoint.CheckpointScope` of one
            model): looked up before generating, extended after, so a stopped run resumes.
    """

    def __init__(self, store=None) -> None:
        self.generations: dict[tuple[str, int], tuple[str, dict]] = {}
        self.checks: dict[str, SandboxResult] = {}  # by the program :func:`build_program` writes
        self.store = store

    def generation(self, loaded, prompt: str, max_new_tokens: int) -> tuple[str, dict, bool]:
        """``(completion, stats, reused)`` for ``prompt``: from memory, the store, or :func:`generate`."""
        key = (prompt, max_new_tokens)
        if key in self.generations:
            return (*self.generations[key], True)
        stored = self.store.get([prompt, max_new_tokens]) if self.store is not None else None
        if isinstance(stored, list) and len(stored) == 2:
            self.generations[key] = (stored[0], stored[1])
            return (*self.generations[key], True)
        completion, stats = self.generations[key] = generate(loaded, prompt, max_new_tokens=max_new_tokens)
        if self.store is not None:
            self.store.put([prompt, max_new_tokens], [completion, stats])
        return completion, stats, False


def _pct(passed: int, n: int) -> float:
    return round(100.0 * passed / n, 2) if n else 0.0


def evaluate_humaneval(loaded, problems: list[dict], progress: Callable[[Iterable], Iterable] | None = None,
                       max_new_tokens: int = 300, timeout_s: float = 10.0, memory_mb: int = 1024,
                       cache: EvalCache | None = None) -> dict:
    """Greedy pass@1 of ``loaded`` on ``problems`` (one at a time).

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel`.
        problems: rows from :func:`load_problems` (or a perturbed set).
        progress: optional wrapper such as ``tqdm`` around the problem iterator.
        max_new_tokens: most tokens per completion.
        timeout_s, memory_mb: sandbox limits per problem (see :func:`.sandbox.run_program`).
        cache: generations and sandbox results to reuse and extend (default: a fresh one).

    Returns:
        ``{"n", "pass@1", "results", "gen_ms_total", "sandbox"}``: pass@1 in percent; ``results`` lists
        ``{"task_id", "status", "new_tokens", "ms", "cached"}`` (``ms``: generation time;
        ``cached``: the completion was reused); ``gen_ms_total``: time spent generating in
        this call (ms; cached completions cost nothing); ``sandbox``: how the code ran
        (:func:`.sandbox.isolation`'s description).
    """
    cache = cache if cache is not None else EvalCache()
    results, passed, gen_ms = [], 0, 0.0
    for prob in progress(problems) if progress else problems:
        completion, stats, cached = cache.generation(loaded, prob["prompt"], max_new_tokens)
        gen_ms += 0.0 if cached else stats["ms"]
        program = build_program(prob, completion)  # prompt, test, entry point and completion
        if program not in cache.checks:
            cache.checks[program] = check(prob, completion, timeout_s=timeout_s, memory_mb=memory_mb)
        res = cache.checks[program]
        passed += res.passed
        results.append({"task_id": prob["task_id"], "status": res.status, "new_tokens": stats["new_tokens"],
                        "ms": stats["ms"], "cached": cached})
    return {"n": len(results), "pass@1": _pct(passed, len(results)), "results": results,
            "gen_ms_total": round(gen_ms, 1), "sandbox": isolation().description}


def recode_sets(folder: Path | None = None) -> dict[str, dict[str, Path]]:
    """The perturbed ReCode files: ``{category: {transform: path}}`` (seed 0)."""
    folder = Path(folder) if folder is not None else _recode_dir()
    sets: dict[str, dict[str, Path]] = {}
    for path in sorted((folder / "perturbed").glob("*.jsonl")):
        m = _PERTURBED_RE.match(path.name)
        if m:
            sets.setdefault(m["category"], {})[m["transform"]] = path
    if not sets:
        raise PocketPilotError(f"no perturbed ReCode files in {folder / 'perturbed'}; "
                               f"set {DATA_ENV} to the folder that holds recode/")
    return sets


def evaluate_recode(loaded, categories: list[str] | None = None, transforms: list[str] | None = None,
                    limit: int | None = None, progress: Callable[[Iterable], Iterable] | None = None,
                    cache: EvalCache | None = None, **kw) -> dict:
    """ReCode robustness (Wang et al., 2022, "ReCode: Robustness Evaluation of Code Generation
    Models", arXiv:2212.10264): greedy pass@1 on nominal and perturbed HumanEval prompts.

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel`.
        categories: ReCode categories (``format``, ``func_name``, ``natgen``, ``nlaugmenter``);
            default all.
        transforms: keep only these transforms (names as in the file names, e.g.
            ``"tab_indent"``, ``"FuncRenameCamelCase"``); default all of the chosen categories.
        limit: evaluate only the first ``limit`` task ids of HumanEval, in every set.
        progress: optional wrapper such as ``tqdm`` around each set's problem iterator.
        cache: generations and sandbox results to reuse and extend (e.g. from a HumanEval run).
        **kw: ``max_new_tokens``, ``timeout_s``, ``memory_mb`` for :func:`evaluate_humaneval`.

    Returns:
        ``{"n", "nominal", "partial_nominal", "perturbed", "categories", "details",
        "generations", "gen_ms_total", "sandbox"}``: ``nominal`` is pass@1 (percent) on ``HumanEval.jsonl``;
        ``partial_nominal`` on ``humaneval_partial.jsonl`` (``None`` unless a
        :data:`PARTIAL_CATEGORIES` category is chosen); ``perturbed`` maps
        ``"category/transform"`` to pass@1; ``categories`` maps each category to
        ``{"nominal", "mean", "worst", "drop_mean", "drop_worst", "sets": {transform: pass@1}}``
        where drops are nominal minus perturbed pass@1 in percentage points (``format`` and
        ``natgen`` against the partial-code nominal); ``details`` holds the
        :func:`evaluate_humaneval` result of each set (``"nominal"``, ``"partial"``,
        ``"category/transform"``); ``generations`` counts distinct prompts generated.

    Raises:
        PocketPilotError: unknown category or transform, or missing data.
    """
    folder = _recode_dir()
    available = recode_sets(folder)
    chosen = _choose_categories(available, categories, transforms)
    nominal_rows = load_problems(folder / "HumanEval.jsonl")
    keep = [r["task_id"] for r in nominal_rows][:limit] if limit is not None else None
    run = _RecodeRun(loaded, keep, progress, cache if cache is not None else EvalCache(), kw)
    nominal = run("nominal", nominal_rows)
    partial = None
    if any(c in PARTIAL_CATEGORIES for c in chosen):
        partial = run("partial", _read_jsonl(folder / "humaneval_partial.jsonl"))
    perturbed, cats = {}, {}
    for cat in chosen:
        sets = {}
        for transform, path in available[cat].items():
            if transforms is None or transform in transforms:
                sets[transform] = perturbed[f"{cat}/{transform}"] = run(f"{cat}/{transform}", _read_jsonl(path))
        if sets:
            cats[cat] = _category_summary(partial if cat in PARTIAL_CATEGORIES else nominal, sets)
    return {
        "n": run.details["nominal"]["n"],
        "nominal": nominal,
        "partial_nominal": partial,
        "perturbed": perturbed,
        "categories": cats,
        "details": run.details,
        "generations": len(run.cache.generations),
        "gen_ms_total": round(sum(d["gen_ms_total"] for d in run.details.values()), 1),
        "sandbox": isolation().description,
    }


def _choose_categories(available: dict[str, dict[str, Path]], categories: list[str] | None,
                       transforms: list[str] | None) -> list[str]:
    """The chosen ReCode categories (all of ``available`` for ``None``), in the order given, once each.

    Raises:
        PocketPilotError: a category is not in ``available``, or a transform in none of the chosen ones.
    """
    chosen = list(available) if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise PocketPilotError(f"unknown ReCode categor{'y' if len(unknown) == 1 else 'ies'} "
                               f"{', '.join(unknown)}; available: {', '.join(sorted(available))}")
    if transforms is not None:
        names = {t for c in chosen for t in available[c]}
        bad = [t for t in transforms if t not in names]
        if bad:
            raise PocketPilotError(f"unknown ReCode transform {', '.join(bad)} for {', '.join(chosen)}; "
                                   f"available: {', '.join(sorted(names))}")
    return chosen


class _RecodeRun:
    """Evaluates ReCode's problem sets on one model, each restricted to the same task ids.

    Args:
        loaded: a :class:`pocketpilot.runtime.LoadedModel`.
        keep: the task ids to evaluate, in order (``None``: all of each set).
        progress: optional wrapper around each set's problem iterator.
        cache: generations and sandbox results shared by all sets.
        kw: ``max_new_tokens``, ``timeout_s``, ``memory_mb`` for :func:`evaluate_humaneval`.
    """

    def __init__(self, loaded, keep: list[str] | None, progress, cache: EvalCache, kw: dict) -> None:
        self.loaded, self.keep, self.progress, self.cache, self.kw = loaded, keep, progress, cache, kw
        self.details: dict[str, dict] = {}  # set name -> evaluate_humaneval's result

    def restrict(self, rows: list[dict]) -> list[dict]:
        """``rows`` with the kept task ids, in their order (those a set lacks are skipped)."""
        if self.keep is None:
            return rows
        by_id = {r["task_id"]: r for r in rows}
        return [by_id[t] for t in self.keep if t in by_id]

    def __call__(self, name: str, rows: list[dict]) -> float:
        """Evaluate the set ``name``; returns its pass@1 (percent)."""
        self.details[name] = evaluate_humaneval(self.loaded, self.restrict(rows), progress=self.progress,
                                                cache=self.cache, **self.kw)
        return self.details[name]["pass@1"]


def _category_summary(base: float, sets: dict[str, float]) -> dict:
    """``{"nominal", "mean", "worst", "drop_mean", "drop_worst", "sets"}`` of one category: pass@1 and
    drops from ``base`` in percentage points."""
    mean, worst = statistics.fmean(sets.values()), min(sets.values())
    return {"nominal": base, "mean": round(mean, 2), "worst": worst,
            "drop_mean": round(base - mean, 2), "drop_worst": round(base - worst, 2), "sets": sets}
