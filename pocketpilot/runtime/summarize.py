"""Code summarization: a one-to-three-sentence docstring / doc comment for a function, from the
same cached artifact that completes code, offline.

The prompt follows the teacher's own conventions (:func:`build_prompt`):

- ``chat``: the tokenizer has a chat template (Qwen2.5-Coder-Instruct, SmolLM2-Instruct): one
  user message asks for the docstring of the function shown in a fenced block;
- ``fim``: no chat template but fill-in-the-middle tokens: the docstring's place is the middle,
  the function around it prefix and suffix;
- ``prefix``: neither: the code up to the docstring's place, then its opener (Python: the
  signature and ``\"\"\"``; brace languages: the signature up to ``{`` and ``/*``).

Decoding is greedy through the engine's :class:`pocketpilot.runtime.backends.Backend` (the same
forward pass, KV cache and stop tokens as completions), at most ``max_new_tokens`` tokens, and
stops at the end of the docstring: its closing quote or comment, a blank line, a closing code
fence, or the third sentence. ``should_stop`` is polled between prefill chunks and after each
token, as for completions. A function longer than the context window allows is cut (its end
dropped, with a log line); the model never gets an over-long prompt. The text is then cleaned
(:func:`clean_summary`) and written in the language's style (:func:`format_docstring`).

The quantization study behind the project reports the same post-training recipe carries over
to code summarization (Wei et al., "Towards greener yet powerful code generation via
quantization", FSE 2023); ``pocketpilot eval --suite summarize`` measures it here.
"""

from __future__ import annotations

import ast
import logging
import re
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
import torch

from pocketpilot.runtime.engine import PREFILL_CHUNK, CompletionEngine
from pocketpilot.runtime.functions import FunctionAt

log = logging.getLogger(__name__)

#: most tokens decoded for one docstring (three sentences fit)
DOC_MAX_TOKENS = 96
#: most prompt tokens for one docstring, below the model's context window: the function's
#: first ~1500 tokens say what it does, and a longer prefill would take many seconds on a laptop CPU
DOC_PROMPT_TOKENS = 1536
#: sentences a docstring keeps
MAX_SENTENCES = 3
#: bumped whenever a prompt changes, so evaluation checkpoints do not reuse outputs of an older prompt
PROMPT_VERSION = 2
#: docstring line width, indentation included (characters)
WIDTH = 88

#: the word a chat prompt calls each language by
_NAMES = {"python": "Python", "javascript": "JavaScript", "javascriptreact": "JavaScript",
          "typescript": "TypeScript", "typescriptreact": "TypeScript", "java": "Java", "go": "Go",
          "rust": "Rust", "c": "C", "cpp": "C++"}
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass
class Docstring:
    """A generated docstring and what it cost.

    Attributes:
        text: the summary: one paragraph of one to three sentences, plain text ("" when
            nothing usable came out, or when cancelled).
        raw: the decoded model output.
        prompt: how the prompt was made: ``"chat"``, ``"fim"`` or ``"prefix"``, or ``"chat, then fim"``
            (``"chat, then prefix"``) when the chat answer held no docstring and the completion prompt was asked.
        prompt_tokens: tokens prefilled (tokens).
        new_tokens: tokens decoded (tokens).
        ms: wall time of prefill and decoding (ms).
        cancelled: ``should_stop`` returned True.
        cut_tokens: tokens of the function left out to fit the context window, the most of any prompt asked (0: none).
    """

    text: str
    raw: str
    prompt: str
    prompt_tokens: int
    new_tokens: int
    ms: float
    cancelled: bool = False
    cut_tokens: int = 0


@dataclass
class _Prompt:
    ids: list[int]
    kind: str
    closer: str | None  # the text that ends the docstring in a completion prompt ('\"\"\"', '*/')
    cut_tokens: int


def _encode(engine: CompletionEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def context_window(engine: CompletionEngine) -> int:
    """Tokens the model can attend to: the config's ``max_position_embeddings``, and for a llama.cpp
    artifact at most its context size (tokens)."""
    window = int(getattr(engine.model.config, "max_position_embeddings", 0) or 2048)
    n_ctx = getattr(getattr(engine.backend, "context", None), "n_ctx", None)
    return min(window, int(n_ctx)) if n_ctx else window


def write_docstring(engine: CompletionEngine, fn: FunctionAt, *, should_stop: Callable[[], bool] | None = None,
                    max_new_tokens: int = DOC_MAX_TOKENS, max_prompt_tokens: int = DOC_PROMPT_TOKENS) -> Docstring:
    """Write a docstring for ``fn`` with ``engine``'s model (greedy; see the module docstring).

    Args:
        engine: the completion engine (its backend, tokenizer and stop tokens are used; its
            per-document caches are not touched). Call from the thread that runs the engine.
        fn: the function (:func:`pocketpilot.runtime.functions.find_function` or
            :func:`~pocketpilot.runtime.functions.function_from_code`).
        should_stop: polled between prefill chunks and after each token; True cancels.
        max_new_tokens: most tokens decoded (tokens).
        max_prompt_tokens: most prompt tokens (tokens); the context window minus
            ``max_new_tokens`` bounds it too.

    Returns:
        A :class:`Docstring`; its ``text`` is plain (format it with :func:`format_docstring`).
    """
    t0 = time.perf_counter()
    budget = min(max_prompt_tokens, context_window(engine) - max_new_tokens)
    prompt = build_prompt(engine, fn, budget)
    if prompt.cut_tokens:
        log.info("docstring for %s: the function is cut by %d tokens to fit a %d-token prompt (context window %d)",
                 fn.name or "the function", prompt.cut_tokens, budget, context_window(engine))
    raw, new_tokens, cancelled = _generate(engine, prompt, max_new_tokens, should_stop)
    text = "" if cancelled else clean_summary(raw, fn.language)
    kind, prompt_tokens, cut = prompt.kind, len(prompt.ids), prompt.cut_tokens
    if not text and not cancelled and prompt.kind == "chat":
        # small instruct models often answer with the function itself (SmolLM2-135M: 38 of 50
        # stdlib functions); the completion prompt that opens the docstring is asked next
        prompt = build_prompt(engine, fn, budget, chat=False)
        raw, more, cancelled = _generate(engine, prompt, max_new_tokens, should_stop)
        text = "" if cancelled else clean_summary(raw, fn.language)
        kind, prompt_tokens, new_tokens = f"chat, then {prompt.kind}", prompt_tokens + len(prompt.ids), new_tokens + more
        cut = max(cut, prompt.cut_tokens)
    return Docstring(text=text, raw=raw, prompt=kind, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                     ms=(time.perf_counter() - t0) * 1e3, cancelled=cancelled, cut_tokens=cut)


def build_prompt(engine: CompletionEngine, fn: FunctionAt, budget: int, chat: bool = True) -> _Prompt:
    """The prompt's token ids (at most ``budget`` tokens), its kind and its closer; the function's
    text is cut at its end (chat, fim) or start (prefix) until the prompt fits. ``chat=False``
    skips the chat template (the completion prompt, FIM or prefix, that opens the docstring)."""
    tok = engine.tokenizer
    lang = _NAMES.get(fn.language, fn.language)
    python = fn.language == "python"
    if chat and getattr(tok, "chat_template", None):
        def build(code: str) -> list[int]:
            ask = (f"Write a docstring of one to three sentences for this {lang} function: what it does, "
                   f"not how. Answer with the docstring text only.\n\n```{fn.language}\n{textwrap.dedent(code)}\n```")
            text = tok.apply_chat_template([{"role": "user", "content": ask}], tokenize=False, add_generation_prompt=True)
            return _encode(engine, text)

        ids, cut = _fit(engine, build, fn.code, budget, keep="start")
        return _Prompt(ids, "chat", None, cut)
    opener, closer = ('"""', '"""') if python else ("/**\n" + fn.indent + " * ", "*/")
    if engine.fim is not None:
        fp, fs, fm = engine.fim
        end = ('"""' if python else "\n" + fn.indent + " */") + fn.tail

        def build(suffix: str) -> list[int]:
            return [fp, *_encode(engine, fn.head + opener), fs, *_encode(engine, suffix), fm]

        ids, cut = _fit(engine, build, end, budget, keep="start")
        return _Prompt(ids, "fim", closer, cut)
    if python or fn.body_at is None:
        head = fn.head + opener if python else fn.code + "\n" + fn.indent + "/* "
    else:  # after the signature: a comment opened inside the body
        head = fn.code[: fn.body_at] + "\n" + fn.indent + "    /* "

    def build(text: str) -> list[int]:
        return _encode(engine, text)

    ids, cut = _fit(engine, build, head, budget, keep="end")
    return _Prompt(ids, "prefix", closer, cut)


def _fit(engine: CompletionEngine, build: Callable[[str], list[int]], text: str, budget: int,
         keep: str) -> tuple[list[int], int]:
    """``build(text)`` with ``text`` cut (keeping its ``"start"`` or ``"end"``) until it has at most
    ``budget`` tokens; returns the ids and how many of ``text``'s tokens were dropped (tokens).

    Raises:
        ValueError: not even an empty ``text`` fits (a budget below the prompt's fixed part).
    """
    ids = build(text)
    if len(ids) <= budget:
        return ids, 0
    own = _encode(engine, text)
    room = len(own) - (len(ids) - budget)
    while True:
        if room <= 0:
            ids = build("")
            if len(ids) > budget:
                raise ValueError(f"a docstring prompt needs more than {budget} tokens even without the function")
            return ids, len(own)
        part = own[:room] if keep == "start" else own[len(own) - room:]
        ids = build(engine.tokenizer.decode(part))
        if len(ids) <= budget:
            return ids, len(own) - room
        room -= max(1, len(ids) - budget)


@torch.inference_mode()
def _generate(engine: CompletionEngine, prompt: _Prompt, limit: int,
              should_stop: Callable[[], bool] | None) -> tuple[str, int, bool]:
    """Greedy decoding of ``prompt`` through the engine's backend: ``(text, new tokens, cancelled)``."""
    stop = should_stop or (lambda: False)
    backend, cache = engine.backend, engine.backend.new_cache()
    logits = None
    for pos in range(0, len(prompt.ids), PREFILL_CHUNK):
        if stop():
            return "", 0, True
        logits, cache = backend.forward(prompt.ids[pos:pos + PREFILL_CHUNK], cache, keep=1)
    generated: list[int] = []
    text = ""
    while len(generated) < limit:
        tok = int(torch.argmax(logits[-1]))
        if tok in engine.stop_ids:
            break
        generated.append(tok)
        text = engine.tokenizer.decode(generated, skip_special_tokens=True)
        if finished(text, prompt.closer):
            break
        if stop():
            return text, len(generated), True
        logits, cache = backend.forward([tok], cache, keep=1)
    return text, len(generated), False


def finished(text: str, closer: str | None) -> bool:
    """True when decoded ``text`` holds a whole docstring: ``closer`` (a completion prompt's closing
    quote or comment), a closed code fence or quoted docstring, a blank line after a paragraph
    that is not a lead-in ("Here is the docstring:"), or :data:`MAX_SENTENCES` sentences followed
    by more text (neither of the last two inside an open code fence)."""
    if closer is not None and closer in text:
        return True
    body = text.lstrip()
    if not re.search(r"\w", body):
        return False
    if body.count("```") >= 2 or re.search(r'("""|\'\'\')\s*\S.*?\1', body, re.S):
        return True
    if "```" in body:
        return False  # inside a fence: its end, or the docstring in it, ends the answer
    blank = re.search(r"\n[ \t]*\n", body)
    if blank and re.search(r"\w", body[: blank.start()]) and not body[: blank.start()].rstrip().endswith(":"):
        return True
    body = body.rstrip()
    ends = list(_SENTENCE_END.finditer(body))
    return len(ends) >= MAX_SENTENCES and ends[MAX_SENTENCES - 1].end() < len(body)


#: an answer that starts as code (the function echoed back), per language; brace languages share one
_ECHOED_CODE = {"python": re.compile(r"\s*(async\s+def|def|class)\s+\w+\s*[(:]")}
_BRACE_ECHO = re.compile(r"\s*(export\s+|public\s+|private\s+|static\s+|func\s+|fn\s+|function\s+)*[\w<>\[\]*&:, ]*\w+\s*\([^)]*\)\s*(->\s*[^{]+)?\{")


def clean_summary(raw: str, language: str) -> str:
    """The summary in a model's answer, as one plain paragraph of at most :data:`MAX_SENTENCES` sentences.

    Takes a docstring out of a function the model rewrote in a code fence or echoed back without
    one (an echoed function without a docstring gives ""), drops fences, quote
    and comment markers, a lead-in line ("Here is the docstring:"), ``Args:``-style sections and
    everything after the first paragraph; starts with a capital and ends with a full stop.
    Returns "" when no words are left.
    """
    text = _from_fence(raw, language)
    if _ECHOED_CODE.get(language, _BRACE_ECHO).match(text):
        # the model wrote the function out again instead of a summary: its docstring, if it has one
        doc = re.search(r'("""|\'\'\')(.*?)(\1|$)', text, re.S) if language == "python" else re.search(r"/\*\*(.*?)(\*/|$)", text, re.S)
        text = doc.group(2 if language == "python" else 1) if doc else ""
    text = re.sub(r'^\s*[rRuU]?("""|\'\'\')', "", text)
    text = text.split('"""')[0].split("'''")[0].split("*/")[0]
    lines = [re.sub(r"^\s*(/\*\*?|\*(?!\*)|///?|#)\s?", "", line) for line in text.strip().split("\n")]
    while len(lines) > 1 and lines[0].rstrip().endswith(":") and (
            not lines[1].strip() or re.search(r"(?i)\b(here|docstring|summary|sure)\b", lines[0])):
        lines = lines[1:]  # "Here is a docstring for the function:"
    para = re.split(r"\n\s*\n|\n\s*(?:(?:Args|Arguments|Parameters|Returns|Raises|Examples?)\s*:|@param|@return)",
                    "\n".join(lines).strip())[0]
    para = re.sub(r"^\s*(docstring|summary|description)\s*:\s*", "", " ".join(para.split()), flags=re.I)
    ends = list(_SENTENCE_END.finditer(para))
    if len(ends) >= MAX_SENTENCES:
        para = para[: ends[MAX_SENTENCES - 1].end()]
    para = para.strip().strip("`").strip()
    if not re.search(r"\w", para):
        return ""
    para = para[0].upper() + para[1:]
    return para if para[-1] in ".!?" else para + "."


def _from_fence(raw: str, language: str) -> str:
    """The answer without code fences; when a fence holds the function with a docstring, that docstring."""
    fences = re.findall(r"```[\w+-]*\n(.*?)(?:```|$)", raw, re.S)
    if not fences:
        return raw
    for code in fences:
        if language == "python":
            try:
                tree = ast.parse(textwrap.dedent(code))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)) and ast.get_docstring(node):
                    return ast.get_docstring(node)  # type: ignore[return-value]
        else:
            doc = re.search(r"/\*\*(.*?)\*/", code, re.S)
            if doc:
                return doc.group(1)
    outside = re.sub(r"```[\w+-]*\n.*?(?:```|$)", "\n\n", raw, flags=re.S).strip()
    return outside or fences[0]


def format_docstring(text: str, language: str, indent: str) -> str:
    """``text`` as the language writes a docstring, every line but the first indented with ``indent``.

    Python: ``\"\"\"text\"\"\"`` on one line when it fits :data:`WIDTH`, else wrapped with the closing
    quotes on their own line (PEP 257); ``/** ... */`` (JavaScript, TypeScript, Java, C, C++);
    ``//`` lines (Go); ``///`` lines (Rust). Text that would end the docstring early is escaped.
    """
    room = max(40, WIDTH - len(indent.expandtabs(4)))
    if language == "python":
        body = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        if len(body) + 6 <= room:
            return f'"""{body}"""'
        lines = textwrap.wrap(body, room - 3) or [""]
        return '"""' + ("\n" + indent).join([lines[0], *lines[1:], '"""'])
    if language in ("go", "rust"):
        mark = "//" if language == "go" else "///"
        lines = textwrap.wrap(text, room - len(mark) - 1) or [""]
        return ("\n" + indent).join(f"{mark} {line}" for line in lines)
    lines = textwrap.wrap(text.replace("*/", "* /"), room - 3) or [""]
    return ("\n" + indent).join(["/**", *(f" * {line}" for line in lines), " */"])


__all__ = ["DOC_MAX_TOKENS", "DOC_PROMPT_TOKENS", "Docstring", "PROMPT_VERSION", "clean_summary", "context_window",
           "finished", "format_docstring", "write_docstring"]
