"""Checkpoints of a run folder (``checkpoint/``, swapped in atomically) and the free-space check.

A checkpoint holds no pickle, so resuming never runs code from the run folder: tensors are
safetensors and everything else JSON (``accelerate``'s ``save_state`` pickles the scheduler and
RNG state, and loading those would run whatever a crafted ``*.pkl`` holds)::

    checkpoint/
      model.safetensors        the student's weights (tied tensors stored once)
      optimizer.safetensors    the optimizer's per-parameter state (AdamW moments, step counts)
      optimizer.json           format, param groups, non-tensor per-parameter state
      scheduler.json           the LR scheduler's state_dict (its lambdas are code: not stored)
      rng-<process>.safetensors  torch's CPU (and CUDA) random state of each process
      progress.json            step, tokens seen, histories (written last: marks the checkpoint complete)

Any other file in the folder (an older version's ``optimizer.bin`` or ``*.pkl``) is never opened.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from pocketpilot.errors import PocketPilotError
from pocketpilot.store import disk_error, is_disk_full, write_json

#: names of the checkpoint folders inside a run folder: the current one, the one being replaced, a partial write
CHECKPOINT, OLD, PARTIAL = "checkpoint", "checkpoint.old", "checkpoint.partial"
#: ``optimizer.json``'s ``format``: the layout above
CHECKPOINT_FORMAT = "pocketpilot-checkpoint/v2"
MODEL, OPT_TENSORS, OPT_META, SCHEDULER, PROGRESS = ("model.safetensors", "optimizer.safetensors", "optimizer.json",
                                                     "scheduler.json", "progress.json")


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoint/``; ``checkpoint.old/`` after a crash mid-swap)."""
    for name in (CHECKPOINT, OLD):
        if (run_dir / name / PROGRESS).is_file():
            return run_dir / name
    return None


def drop_checkpoints(run_dir: Path) -> None:
    """Delete every checkpoint of a run (to start over; the tokenized corpus is kept)."""
    for name in (CHECKPOINT, OLD, PARTIAL):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def save_checkpoint(accelerator, run_dir: Path, state: dict, model, optimizer, scheduler) -> None:
    """Write a checkpoint into ``checkpoint.partial/``, then swap it in for ``checkpoint/``.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (the main process writes; each process its RNG state).
        run_dir: the run folder.
        state: JSON-able progress (step, tokens seen, histories), written to ``progress.json``.
        model: the student (wrapped or not); optimizer: its torch optimizer (``AcceleratedOptimizer``
            or plain); scheduler: its LR scheduler.

    Raises:
        PocketPilotError: out of disk space (the previous checkpoint is kept).
    """
    final, tmp, old = run_dir / CHECKPOINT, run_dir / PARTIAL, run_dir / OLD
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _save_rng(tmp / f"rng-{accelerator.process_index}.safetensors")
        if main:
            save_model(accelerator.unwrap_model(model), str(tmp / MODEL))
            _save_optimizer(optimizer.state_dict(), tmp)
            write_json(tmp / SCHEDULER, _json_only(scheduler.state_dict(), "the LR scheduler's state"))
        accelerator.wait_for_everyone()
        if main:
            write_json(tmp / PROGRESS, state)
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    except PocketPilotError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # OSError, or safetensors' own error for a full disk
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise disk_error(exc, final) from exc
        raise
    accelerator.wait_for_everyone()


def load_checkpoint(ckpt: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore ``model``, ``optimizer``, ``scheduler`` and this process's RNG from ``ckpt``; return its progress.

    Only safetensors and JSON are read: no file of the folder can run code.

    Raises:
        PocketPilotError: a file is missing or unreadable, or the checkpoint was written by an
            older PocketPilot (pickled state, no longer read); the message says to start over with
            ``--no-resume``.
    """
    def fail(reason: str) -> PocketPilotError:
        return PocketPilotError(f"cannot resume from {ckpt} ({reason}); start over with --no-resume")

    if not (ckpt / OPT_META).is_file():
        if any(ckpt.glob("*.bin")) or any(ckpt.glob("*.pkl")):
            raise fail("written by an older PocketPilot with pickled state, which is never loaded")
        raise fail(f"{OPT_META} is missing")
    try:
        meta = json.loads((ckpt / OPT_META).read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise fail(f"unknown checkpoint format {meta.get('format')!r}")
        state = json.loads((ckpt / PROGRESS).read_text())
        missing, unexpected = load_model(accelerator.unwrap_model(model), str(ckpt / MODEL), strict=False,
                                         device=str(accelerator.device))
        if missing or unexpected:
            raise fail(f"the weights do not match the student (missing {sorted(missing)[:2]}, "
                       f"unexpected {sorted(unexpected)[:2]})")
        optimizer.load_state_dict(_optimizer_state(meta, load_file(ckpt / OPT_TENSORS)))
        scheduler.load_state_dict({**json.loads((ckpt / SCHEDULER).read_text()),
                                   "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
        rng = ckpt / f"rng-{accelerator.process_index}.safetensors"
        if rng.is_file():
            _load_rng(load_file(rng))
    except PocketPilotError:
        raise
    except Exception as exc:  # missing files, bad JSON, safetensors' errors, shape mismatches
        raise fail(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}") from None
    return state


def _save_optimizer(sd: dict, folder: Path) -> None:
    """An optimizer ``state_dict`` as ``optimizer.safetensors`` (tensors) + ``optimizer.json`` (the rest)."""
    tensors, extra = {}, {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(pid), {})[key] = value
    save_file(tensors, str(folder / OPT_TENSORS))
    write_json(folder / OPT_META, _json_only({"format": CHECKPOINT_FORMAT, "param_groups": sd["param_groups"],
                                              "extra_state": extra}, "the optimizer's state"))


def _optimizer_state(meta: dict, tensors: dict) -> dict:
    """The optimizer ``state_dict`` from ``optimizer.json``'s ``meta`` and ``optimizer.safetensors``' tensors."""
    state: dict = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("extra_state", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _json_only(data: dict, what: str) -> dict:
    """``data`` made JSON-able (tuples as lists); raises ``TypeError`` naming ``what`` for anything else."""
    try:
        return json.loads(json.dumps(data, default=_no_code))
    except TypeError as exc:
        raise TypeError(f"{what} holds a value JSON cannot store ({exc})") from None


def _no_code(value):
    if callable(value):
        return None  # scheduler lambdas: code, rebuilt by the run, never stored
    raise TypeError(type(value).__name__)


def _save_rng(path: Path) -> None:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(path))


def _load_rng(tensors: dict) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[f"cuda{i}"] for i in range(len(tensors) - 1) if f"cuda{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
