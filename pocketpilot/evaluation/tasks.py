"""Line-completion tasks cut from real source files.

A task is a JSON object ``{"id", "prefix", "suffix", "gt", "lang"}``: ``prefix`` is the file
up to the cursor, ``gt`` the rest of that line, ``suffix`` everything after that line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from pocketpilot.corpus import LANGS, default_source_dir, source_files
from pocketpilot.errors import PocketPilotError

def make_tasks(root: Path | None = None, n: int = 100, seed: int = 0, min_prefix_chars: int = 200,
               exts: tuple[str, ...] = (".py",), files: list[Path] | None = None) -> list[dict]:
    """Cut ``n`` line-completion tasks from source files under ``root``, deterministically.

    Each task picks a file and a line at random (lines with at least 8 non-blank characters,
    not comments), then a cursor column strictly inside the line's code (after the
    indentation, before the last character), so ``gt`` is never empty.

    Raises:
        PocketPilotError: ``root`` is missing or holds no usable source file.
    """
    root = Path(root) if root else default_source_dir()
    if not root.is_dir():
        raise PocketPilotError(f"source folder not found: {root}")
    files = sorted(files) if files is not None else source_files(root, exts)
    if not files:
        raise PocketPilotError(f"no {'/'.join(exts)} files under {root}")
    rng = random.Random(seed)
    tasks: list[dict] = []
    attempts = 0
    while len(tasks) < n and attempts < n * 50:
        attempts += 1
        path = rng.choice(files)
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        lines = text.split("\n")
        offsets = [0]
        for line in lines[:-1]:
            offsets.append(offsets[-1] + len(line) + 1)
        candidates = [
            i for i, line in enumerate(lines)
            if len(line.strip()) >= 8 and not line.lstrip().startswith(("#", '"""', "'''")) and offsets[i] >= min_prefix_chars
        ]
        if not candidates:
            continue
        i = rng.choice(candidates)
        line = lines[i].rstrip()
        indent = len(line) - len(line.lstrip())
        col = rng.randrange(indent + 1, len(line))
        start = offsets[i]
        tasks.append({
            "id": f"{path.relative_to(root).as_posix()}:{i + 1}:{col}",
            "prefix": text[: start + col],
            "suffix": "\n".join(lines[i + 1 :]),
            "gt": line[col:],
            "lang": LANGS.get(path.suffix, path.suffix.lstrip(".")),
        })
    return tasks


def write_tasks(tasks: list[dict], out: Path) -> None:
    """Write tasks as JSONL."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(t) + "\n")


def read_jsonl_rows(path: Path, valid: Callable[[dict], bool], what: str, lang: str = "") -> list[dict]:
    """Rows of a JSONL task file, blank lines skipped; each gets ``id`` (``FILE:LINE``) and ``lang``
    (``lang``) unless it has them.

    Args:
        valid: True for a usable row (it may raise KeyError / TypeError for a missing or wrong field).
        what: the end of the error for a bad row, e.g. ``"not a task row (need JSON with 'prefix' and 'gt')"``.

    Raises:
        PocketPilotError: the file is missing or a row is malformed (names the line number).
    """
    path = Path(path)
    if not path.is_file():
        raise PocketPilotError(f"task file not found: {path}")
    rows = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = valid(row)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise PocketPilotError(f"{path}:{k}: {what}")
        row.setdefault("id", f"{path.name}:{k}")
        row.setdefault("lang", lang)
        rows.append(row)
    return rows


def read_tasks(path: Path) -> list[dict]:
    """Read JSONL tasks; each row needs ``prefix`` and ``gt`` (``suffix``, ``id``, ``lang`` optional).

    Raises:
        PocketPilotError: the file is missing or a row is malformed (names the line number).
    """
    tasks = read_jsonl_rows(path, lambda row: isinstance(row, dict) and "prefix" in row and "gt" in row,
                            "not a task row (need JSON with 'prefix' and 'gt')")
    for row in tasks:
        row.setdefault("suffix", "")
    return tasks
