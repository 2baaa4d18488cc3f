"""Checkpoints of a run folder (``checkpoint/``, swapped in atomically) and the free-space check."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pocketpilot.errors import PocketPilotError
from pocketpilot.store import disk_error, write_json

#: names of the checkpoint folders inside a run folder: the current one, the one being replaced, a partial write
CHECKPOINT, OLD, PARTIAL = "checkpoint", "checkpoint.old", "checkpoint.partial"


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoint/``; ``checkpoint.old/`` after a crash mid-swap)."""
    for name in (CHECKPOINT, OLD):
        if (run_dir / name / "progress.json").is_file():
            return run_dir / name
    return None


def drop_checkpoints(run_dir: Path) -> None:
    """Delete every checkpoint of a run (to start over; the tokenized corpus is kept)."""
    for name in (CHECKPOINT, OLD, PARTIAL):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def save_checkpoint(accelerator, run_dir: Path, state: dict) -> None:
    """``accelerator.save_state`` into ``checkpoint.partial/``, then swap it in for ``checkpoint/``.

    ``state`` (JSON-able: step, tokens seen, histories) goes into ``progress.json`` beside it.

    Raises:
        PocketPilotError: out of disk space (the previous checkpoint is kept).
    """
    final, tmp, old = run_dir / CHECKPOINT, run_dir / PARTIAL, run_dir / OLD
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    shared = logging.getLogger("accelerate.utils.other")  # "Removed shared tensor" for tied heads: expected
    level = shared.level
    shared.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            write_json(tmp / "progress.json", state)
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, final) from exc
    except PocketPilotError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shared.setLevel(level)
    accelerator.wait_for_everyone()


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
