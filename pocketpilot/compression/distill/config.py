"""Settings of a distillation run, the run key they hash to, and the command line that reproduces them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from pocketpilot.compression.distill.loss import check_loss_args
from pocketpilot.errors import PocketPilotError

#: Layout of run folders and checkpoints; part of the run key, so a new layout starts a new run.
RUN_FORMAT = 1


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (validated on creation).

    Attributes:
        n_layers: student depth (2 .. teacher depth).
        steps: stop after this many optimizer steps in total (resumes included).
        minutes: stop once this much wall time has gone into the training loop in total
            (resumes included; loading and tokenizing not counted). Give ``steps``, ``minutes``
            or both (the first reached ends the run).
        temperature: T of the soft loss; alpha: its weight (see :func:`kd_loss`).
        block_tokens: tokens per training block; batch_size: blocks per step (per process).
        lr: AdamW peak learning rate; warmup_steps: linear warmup, then constant.
        weight_decay, max_grad_norm: AdamW weight decay; gradient-norm clip.
        top_k: if set, the soft loss uses the teacher's top-k logits, cached per block
            (:class:`TeacherTopKCache`); ``None``: full logits every step.
        val_fraction: share of files held out; val_blocks: validation blocks scored (at most).
        max_tokens: cap on training tokens taken from the corpus (``None``: all).
        eval_every, checkpoint_every: validation / checkpoint period in steps (also at the end).
        seed: data order.

    Raises:
        PocketPilotError: no budget, a budget too small, or an out-of-range setting.
    """

    n_layers: int
    steps: int | None = None
    minutes: float | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    block_tokens: int = 256
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    top_k: int | None = None
    val_fraction: float = 0.02
    val_blocks: int = 32
    max_tokens: int | None = None
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.steps is None and self.minutes is None:
            raise PocketPilotError("give a training budget: --steps N or --minutes M")
        if self.steps is not None and self.steps < 1:
            raise PocketPilotError(f"budget too small: --steps {self.steps}; give at least 1 step")
        if self.minutes is not None and not self.minutes > 0:
            raise PocketPilotError(f"budget too small: --minutes {self.minutes}; give a positive number of minutes")
        check_loss_args(self.temperature, self.alpha)
        checks = [
            (self.block_tokens >= 8, f"--block-tokens must be at least 8; got {self.block_tokens}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1; got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0; got {self.lr}"),
            (self.warmup_steps >= 0, f"warmup steps must be >= 0; got {self.warmup_steps}"),
            (self.top_k is None or self.top_k >= 1, f"--top-k must be at least 1; got {self.top_k}"),
            (0 < self.val_fraction <= 0.5, f"the validation fraction must be in (0, 0.5]; got {self.val_fraction}"),
            (self.val_blocks >= 1, f"val_blocks must be at least 1; got {self.val_blocks}"),
            (self.max_tokens is None or self.max_tokens >= self.block_tokens,
             f"max_tokens ({self.max_tokens}) must be at least one block ({self.block_tokens})"),
            (self.eval_every >= 1 and self.checkpoint_every >= 1, "eval_every and checkpoint_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise PocketPilotError(message)

    def run_settings(self) -> dict:
        """The settings that change the result (budget and periods excluded): they key the run folder."""
        skip = {"steps", "minutes", "eval_every", "checkpoint_every"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def run_key(teacher_sha: dict, cfg: DistillConfig, roots: list[str], processes: int, student: str | None = None) -> str:
    """10 hex digits hashing everything that changes a run's result: teacher files, settings, corpus, processes.

    ``student`` (a custom student's tag) is only part of the key when given, so the default
    student keeps the keys of earlier runs.
    """
    key = {"teacher": teacher_sha, "settings": cfg.run_settings(), "roots": roots, "processes": processes,
           "format": RUN_FORMAT}
    if student:
        key["student"] = student
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def command_line(spec: str, cfg: DistillConfig, corpus: Path | None, workspace: Path | None, then: str | None) -> str:
    """The ``pocketpilot distill`` command line that reproduces (and resumes) this run."""
    parts = ["pocketpilot distill", f"--teacher {spec}", f"--layers {cfg.n_layers}"]
    if cfg.steps is not None:
        parts.append(f"--steps {cfg.steps}")
    if cfg.minutes is not None:
        parts.append(f"--minutes {cfg.minutes:g}")
    parts += [f"--temperature {cfg.temperature:g}", f"--alpha {cfg.alpha:g}", f"--block-tokens {cfg.block_tokens}",
              f"--batch-size {cfg.batch_size}", f"--lr {cfg.lr:g}"]
    if corpus is not None:
        parts.append(f"--corpus {corpus}")
    if workspace is not None:
        parts.append(f"--workspace {workspace}")
    if cfg.top_k is not None:
        parts.append(f"--top-k {cfg.top_k}")
    if then:
        parts.append(f"--then {then}")
    return " ".join(parts)
