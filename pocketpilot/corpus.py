"""Source corpora: the files tasks are cut from, the held-out split, and the calibration files.

Imports nothing of PocketPilot's but :mod:`pocketpilot.errors`, so compression, evaluation
and the runtime can all read it. The default corpus is the Python standard library of the
running interpreter.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from pocketpilot.errors import PocketPilotError

#: file suffix -> language name of a source file
LANGS = {".py": "python", ".js": "javascript", ".ts": "typescript", ".java": "java", ".go": "go",
         ".rs": "rust", ".c": "c", ".h": "c", ".cpp": "cpp", ".rb": "ruby", ".lua": "lua"}

#: standard-library files used for activation-aware calibration (present in CPython 3.10-3.14)
CALIBRATION_FILES = ("csv.py", "heapq.py", "pprint.py", "fractions.py", "selectors.py", "tempfile.py",
                     "logging/handlers.py", "http/cookies.py")

#: folders never read as corpus (tests, third-party code, caches, vendored tools)
SKIP_DIRS = frozenset({"site-packages", "test", "tests", "__pycache__", "idlelib", "lib2to3"})


def default_source_dir() -> Path:
    """The Python standard library of the running interpreter (the documented default corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path, exts: tuple[str, ...] = (".py",)) -> list[Path]:
    """Source files under ``root`` with one of ``exts``, sorted, skipping :data:`SKIP_DIRS`."""
    return sorted(
        p for p in root.rglob("*")
        if p.suffix in exts and p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


def path_hash(rel: str) -> float:
    """Deterministic number in [0, 1) from a relative path (the same on every machine)."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:12], 16) / float(1 << 48)


def corpus_entries(roots: list[Path], exts: tuple[str, ...] = (".py",)) -> list[tuple[float, str, Path]]:
    """``(hash, relative path, path)`` of every source file under ``roots`` (see :func:`path_hash`).

    Raises:
        PocketPilotError: a root is missing.
    """
    entries: list[tuple[float, str, Path]] = []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise PocketPilotError(f"corpus folder not found: {root}")
        for path in source_files(root, exts):
            rel = path.relative_to(root).as_posix()
            entries.append((path_hash(rel), rel, path))
    return entries


def held_out_files(roots: list[Path], val_fraction: float = 0.02, exts: tuple[str, ...] = (".py",)) -> list[Path]:
    """The files held out for validation (never trained on by distillation), sorted.

    A file is held out when the hash of its path relative to its root is below
    ``val_fraction``; at least one file (the smallest hash) always is. The split is the same
    on every machine and does not change when other files are added. Evaluate a distilled
    student on tasks cut from these files (``pocketpilot eval --held-out``).

    Raises:
        PocketPilotError: a root is missing or holds no source file.
    """
    entries = sorted(corpus_entries(roots, exts))
    if not entries:
        raise PocketPilotError(f"no {'/'.join(exts)} files under {', '.join(str(r) for r in roots)}")
    held = [p for h, _, p in entries if h < val_fraction] or [entries[0][2]]
    return sorted(held)


def calibration_texts(n: int = 8, root: Path | None = None) -> list[str]:
    """The text of up to ``n`` of :data:`CALIBRATION_FILES` under ``root`` (default: the stdlib).

    Missing or undecodable files are skipped.
    """
    root = root or default_source_dir()
    out = []
    for name in CALIBRATION_FILES[:n]:
        try:
            out.append((root / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return out
