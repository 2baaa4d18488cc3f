"""The distillation run: setup, training steps, validation, checkpoints, and the artifact at the end.

:func:`distill` resolves the teacher and the corpus, then drives a :class:`DistillRun`:
:meth:`~DistillRun.setup` (teacher, tokenized data, student, optimizer, resume),
:meth:`~DistillRun.train` (:meth:`~DistillRun.step` until the budget is spent, with
:meth:`~DistillRun.validate` and :meth:`~DistillRun.save_checkpoint` every so often) and
:meth:`~DistillRun.save` (the student written through
:func:`pocketpilot.compression.build.build_artifact`).

Training goes through ``accelerate`` (``Accelerator.prepare``, ``backward``), so the same
code runs on CPU, one GPU, or several with ``accelerate launch -m pocketpilot distill ...``. The run folder
(``<home>/runs/<teacher>-distill<N>-<key>/``, the key hashes every setting that changes the
result) holds the tokenized data and the last checkpoint, so running the same command again
resumes where it stopped; the budget (``steps`` / ``minutes``) counts the whole run,
resumes included. Checkpoints hold safetensors and JSON only (:mod:`.checkpoint`): resuming
never unpickles anything from the run folder.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocketpilot.compression.build import CompressResult, Written, build_artifact
from pocketpilot.compression.calibration import calibration_batches
from pocketpilot.compression.distill.checkpoint import (
    drop_checkpoints,
    find_checkpoint,
    free_bytes,
    load_checkpoint,
    save_checkpoint,
)
from pocketpilot.compression.distill.config import DistillConfig, command_line, run_key
from pocketpilot.compression.distill.data import (
    Blocks,
    CodeBlocks,
    EpochSampler,
    TeacherTopKCache,
    code_blocks,
)
from pocketpilot.compression.distill.loss import KDLoss, kd_loss, kd_loss_topk
from pocketpilot.compression.distill.student import make_student, student_layer_map
from pocketpilot.compression.methods import QuantMethod, get_method
from pocketpilot.corpus import default_source_dir
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.store import (
    Progress,
    artifacts_dir,
    disk_error,
    home,
    no_progress,
    read_manifest,
    write_json,
)
from pocketpilot.teachers import Teacher, fetch_teacher, parse_spec

#: the loss as recorded in the manifest
LOSS_FORMULA = "alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE(next token); Hinton et al. 2015"

#: a custom student: ``fn(teacher_model) -> (student, JSON-able details)``
BuildStudent = Callable[[Any], tuple[Any, dict]]


def distill(
    teacher: str | None,
    n_layers: int,
    *,
    corpus: str | Path | None = None,
    workspace: str | Path | None = None,
    then: str | None = None,
    resume: bool = True,
    eval_tasks: int = 0,
    activate: bool = True,
    progress: Progress | None = None,
    show_progress: bool = True,
    build_student: BuildStudent | None = None,
    student_tag: str | None = None,
    artifact_id: str | None = None,
    **settings,
) -> CompressResult:
    """Distil a teacher into a shallower student and cache it as an artifact.

    Args:
        teacher: teacher spec (see :mod:`pocketpilot.teachers`); ``None`` = default.
        n_layers: student depth (2 .. teacher depth).
        corpus: folder of source files to train on (default: the Python standard library).
        workspace: an extra folder of source files (added to the corpus).
        then: quantize the student afterwards with this method (e.g. ``"int8"``; ``"none"``: none); the artifact
            id ends in ``-distill<N>-<method>`` and its recipe method is ``"distill+<method>"``.
        resume: continue from the run's checkpoint if there is one; ``False`` deletes it first
            (the tokenized corpus cached in the run folder is kept).
        eval_tasks: score teacher and student on this many stdlib line-completion tasks (0 skips).
        activate: make the artifact the default for ``serve`` / ``complete``.
        progress: callback for progress messages; show_progress: tqdm bar on stderr (loss,
            soft/hard parts, tokens/s).
        build_student: ``fn(teacher_model) -> (student, details)`` building a custom student of
            ``n_layers`` layers (e.g. pruned, as :mod:`pocketpilot.compression.search` does) instead
            of :func:`make_student`; ``details`` (JSON-able, may hold ``layer_map``) goes into the
            recipe. Needs ``student_tag``, a string naming the student, which keys the run folder.
        artifact_id: the artifact's id (default ``<teacher>-distill<N>[-<method>]``).
        **settings: :class:`DistillConfig` fields: ``steps``, ``minutes`` (one is required),
            ``temperature`` (2), ``alpha`` (0.5), ``block_tokens`` (256), ``batch_size`` (4),
            ``lr`` (3e-4), ``warmup_steps``, ``top_k``, ``val_fraction``, ``max_tokens``,
            ``eval_every``, ``checkpoint_every``, ``seed``, ...

    Returns:
        :class:`pocketpilot.compression.build.CompressResult`; the manifest's ``recipe`` holds the
        layer map, T, alpha, steps done, tokens seen, train minutes, the train-loss history and
        validation losses (nats per token) before and after, and the teacher's validation CE.

    Raises:
        PocketPilotError: bad settings or budget (before anything is fetched), an empty or too
            small corpus, or too little disk space; nothing half-written is left in ``artifacts/``.
            (A ``minutes`` budget always gets at least one step.)
        UnknownTeacherError, UnknownMethodError, FetchError: as :func:`compress`.
    """
    cfg = DistillConfig(n_layers, **settings)
    progress = progress or no_progress
    if build_student is not None and not student_tag:
        raise PocketPilotError("a custom student needs a student_tag naming it (it keys the run folder)")
    qmethod = get_method(then) if then and then != "none" else None
    spec = parse_spec(teacher)
    corpus_root, workspace_root = _folder(corpus), _folder(workspace)
    roots = _corpus_roots(corpus_root, workspace_root)
    run = DistillRun(cfg, fetch_teacher(spec, progress), roots, progress=progress, student_tag=student_tag)
    run.setup(resume=resume, build_student=build_student)
    run.train(show_progress)
    command = command_line(spec.spec, cfg, corpus_root, workspace_root, qmethod.name if qmethod else None)
    return run.save(qmethod, command, artifact_id=artifact_id, eval_tasks=eval_tasks, activate=activate)


def _folder(path: str | Path | None) -> Path | None:
    return Path(path).expanduser().resolve() if path is not None else None


def _corpus_roots(corpus: Path | None, workspace: Path | None) -> list[Path]:
    """The corpus folders: ``corpus`` (default: the standard library), then ``workspace`` if given.

    Raises:
        PocketPilotError: a folder does not exist.
    """
    roots = [corpus or default_source_dir()] + ([workspace] if workspace else [])
    for root in roots:
        if not root.is_dir():
            raise PocketPilotError(f"corpus folder not found: {root}")
    return roots


class DistillRun:
    """One distillation run of a fetched teacher into a student, kept in a resumable run folder.

    Call :meth:`setup`, then :meth:`train`, then :meth:`save`. Every process of an
    ``accelerate launch`` runs the same calls; only the main one reports and writes files.

    Attributes:
        cfg: the :class:`DistillConfig`.
        state: JSON-able progress, saved with each checkpoint: ``step``, ``tokens_seen``,
            ``train_seconds`` (s), ``history`` (train loss per step), ``val`` (validation losses),
            ``teacher_val_ce`` (nats per token), ``resumed_from_step``.
        run_dir, data, student, teacher_model, layer_map: set by :meth:`setup`.
    """

    def __init__(self, cfg: DistillConfig, teacher_obj: Teacher, roots: list[Path], *,
                 progress: Progress = no_progress, student_tag: str | None = None):
        self.cfg = cfg
        self.teacher_obj = teacher_obj
        self.roots = roots
        self.progress = progress
        self.student_tag = student_tag
        self.state: dict = {"step": 0, "tokens_seen": 0, "train_seconds": 0.0, "history": [], "val": [],
                            "teacher_val_ce": None, "resumed_from_step": None}
        self.saved_step = 0
        self.cache = TeacherTopKCache(cfg.top_k) if cfg.top_k else None
        self.student_details: dict = {}

    # ------------------------------------------------------------------ setup

    def setup(self, *, resume: bool = True, build_student: BuildStudent | None = None) -> None:
        """Load the teacher, tokenize (or reload) the corpus, build the student and optimizer, resume.

        Raises:
            PocketPilotError: bad depth or block length for this teacher, an empty or too small
                corpus, too little disk space, or an unreadable checkpoint (start over with
                ``resume=False``).
        """
        self._load_teacher()
        self._open_run_dir(resume)
        self._load_data()
        self._make_student(build_student)
        self._check_disk()
        self._save_data()
        self._prepare()
        self._resume(resume)

    def _load_teacher(self) -> None:
        self.accelerator = Accelerator()
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        if not self.main:  # one voice per run
            self.progress = no_progress
        folder = self.teacher_obj.folder
        self.progress(f"loading teacher {self.teacher_obj.spec.spec} on {self.device} "
                      f"({self.accelerator.num_processes} process(es))", 0.05)
        self.teacher_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, trust_remote_code=False)
        self.teacher_model.eval().requires_grad_(False)
        self.n_teacher_layers = self.teacher_model.config.num_hidden_layers
        self.layer_map = student_layer_map(self.n_teacher_layers, self.cfg.n_layers)
        max_pos = getattr(self.teacher_model.config, "max_position_embeddings", None)
        if max_pos and self.cfg.block_tokens > max_pos:
            raise PocketPilotError(f"--block-tokens {self.cfg.block_tokens} exceeds the teacher's context "
                                   f"({max_pos} tokens)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        self.n_teacher_params = sum(p.numel() for p in self.teacher_model.parameters())

    def _open_run_dir(self, resume: bool) -> None:
        key = run_key(self.teacher_obj.source_sha256, self.cfg, [str(r) for r in self.roots],
                      self.accelerator.num_processes, self.student_tag)
        self.run_dir = home() / "runs" / f"{self.teacher_obj.slug}-distill{self.cfg.n_layers}-{key}"
        self.data_file = self.run_dir / "data.pt"
        if not resume and self.main:  # start over; the tokenized corpus is kept
            drop_checkpoints(self.run_dir)
        self.accelerator.wait_for_everyone()

    def _load_data(self) -> None:
        self.data = CodeBlocks.load(self.data_file)
        if self.data is None:
            self.progress(f"tokenizing the corpus ({', '.join(str(r) for r in self.roots)})", 0.1)
            cfg = self.cfg
            self.data = code_blocks(self.tokenizer, self.roots, cfg.block_tokens, cfg.val_fraction, cfg.max_tokens)

    def _make_student(self, build_student: BuildStudent | None) -> None:
        if build_student is None:
            self.student = make_student(self.teacher_model, self.cfg.n_layers)
        else:
            self.student, self.student_details = build_student(self.teacher_model)
            self.student.train()
            self.layer_map = self.student_details.get("layer_map", self.layer_map)
            if self.student.config.num_hidden_layers != self.cfg.n_layers:
                raise PocketPilotError(f"the custom student has {self.student.config.num_hidden_layers} layers, "
                                       f"not {self.cfg.n_layers}")
        self.n_student_params = sum(p.numel() for p in self.student.parameters())

    def _check_disk(self) -> None:
        # checkpoint (weights + two AdamW moments, twice while swapping) + artifact + data, float32
        need = 4 * self.n_student_params * (2 * 3 + 1) + self.data.train.numel() * 8
        free = free_bytes(home())
        if free < need:
            raise PocketPilotError(
                f"not enough disk space under {home()}: distilling needs about {need / 1e6:.0f} MB (checkpoint + "
                f"artifact), {free / 1e6:.0f} MB free; free some space or set POCKETPILOT_HOME to a bigger disk"
            )

    def _save_data(self) -> None:
        if self.main and not self.data_file.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.data.save(self.data_file)
                write_json(self.run_dir / "run.json", {"teacher": self.teacher_obj.spec.spec,
                                                       "settings": self.cfg.run_settings(), "roots": self.data.roots,
                                                       "processes": self.accelerator.num_processes})
            except OSError as exc:
                raise disk_error(exc, self.run_dir) from exc
        self.accelerator.wait_for_everyone()

    def _prepare(self) -> None:
        cfg = self.cfg
        self.sampler = EpochSampler(len(self.data.train), cfg.seed)
        loader = DataLoader(Blocks(self.data.train), batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True)
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        # the scheduler is not prepared (accelerate would step it once per process): one step per optimizer step
        self.student, self.optimizer, self.loader = self.accelerator.prepare(self.student, optimizer, loader)
        self.teacher_model.to(self.device)
        self.n_batches = len(self.loader)
        if self.n_batches == 0:
            raise PocketPilotError(
                f"the corpus is too small: {len(self.data.train)} training blocks of {cfg.block_tokens} tokens, fewer "
                f"than one batch of {cfg.batch_size} per process; add files or lower --batch-size / --block-tokens"
            )
        self.val = self.data.val[: cfg.val_blocks]

    def _resume(self, resume: bool) -> None:
        ckpt = find_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:  # safetensors and JSON only: resuming runs no code from the run folder
            self.state = load_checkpoint(ckpt, self.accelerator, self.student, self.optimizer, self.scheduler)
            self.state["resumed_from_step"] = self.state["step"]
            self.progress(f"resuming {self.run_dir.name} from step {self.state['step']}", 0.15)
        if self.state["teacher_val_ce"] is None:
            self.state["teacher_val_ce"] = _teacher_ce(self.teacher_model, self.val, self.cfg.batch_size, self.device)
        if not self.state["val"]:
            self.state["val"].append({"step": 0, **self._val_loss()})
        self.saved_step = self.state["step"]

    # ------------------------------------------------------------------ training

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step, all processes together."""
        return self.cfg.batch_size * self.cfg.block_tokens * self.accelerator.num_processes

    def budget_left(self) -> bool:
        """Neither the step budget nor the minutes budget (training time of the whole run) is spent."""
        cfg, state = self.cfg, self.state
        return ((cfg.steps is None or state["step"] < cfg.steps)
                and (cfg.minutes is None or state["train_seconds"] < cfg.minutes * 60))

    def train(self, show_progress: bool = True) -> None:
        """Run :meth:`step` until the budget is spent; validate and checkpoint every so often and at the end.

        ``show_progress`` draws a tqdm bar on stderr (main process only). On Ctrl-C the steps
        done since the last checkpoint are checkpointed before ``KeyboardInterrupt`` propagates.

        Raises:
            PocketPilotError: out of disk space writing a checkpoint.
        """
        self.progress = _above_bar(self.progress)
        bar = tqdm(total=self.cfg.steps, initial=self.state["step"], unit="step", file=sys.stderr,
                   desc=f"distill {self.n_teacher_layers}->{self.cfg.n_layers} layers",
                   disable=not (show_progress and self.main), dynamic_ncols=True)
        self._clock = (time.perf_counter(), self.state["train_seconds"], self.state["step"])
        self.student.train()
        try:
            done = False
            while not done and self.budget_left():
                for batch in self._epoch_batches():
                    done = self._after_step(self.step(batch), bar)
                    if done:
                        break
        except KeyboardInterrupt:
            if self.state["step"] > self.saved_step:
                self.save_checkpoint()
                self.progress(f"interrupted; checkpoint at step {self.state['step']} kept in {self.run_dir}, "
                              "the same command resumes", None)
            raise
        finally:
            bar.close()

    def _epoch_batches(self):
        """The batches left in the current epoch (the data order depends on the epoch only)."""
        epoch, offset = divmod(self.state["step"], self.n_batches)
        self.sampler.epoch = epoch
        return self.accelerator.skip_first_batches(self.loader, offset) if offset else self.loader

    def step(self, batch: dict) -> tuple[float, float, float]:
        """One optimizer step on ``{"idx": int [B], "input_ids": int64 [B, L]}``.

        Returns:
            ``(loss, kd, ce)`` of the batch, nats per token, averaged over processes.
        """
        logits = self.student(input_ids=batch["input_ids"], use_cache=False).logits
        parts = self._loss(batch, logits)
        self.accelerator.backward(parts.loss)
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, kd, ce = (float(x) for x in self.accelerator.reduce(torch.stack([p.detach() for p in parts]), "mean"))
        return loss, kd, ce

    def _loss(self, batch: dict, logits) -> KDLoss:
        """:func:`kd_loss` of the student's ``logits`` ``[B, L, V]`` (top-k from the cache when ``top_k`` is set)."""
        ids, cfg = batch["input_ids"], self.cfg
        if self.cache is not None:
            values, indices = self.cache(self.teacher_model, batch["idx"], ids)
            return kd_loss_topk(logits[:, :-1], values[:, :-1], indices[:, :-1], ids[:, 1:], cfg.temperature, cfg.alpha)
        with torch.no_grad(), self.accelerator.autocast():
            t_logits = self.teacher_model(input_ids=ids, use_cache=False).logits
        return kd_loss(logits[:, :-1], t_logits[:, :-1], ids[:, 1:], cfg.temperature, cfg.alpha)

    def _after_step(self, losses: tuple[float, float, float], bar) -> bool:
        """Record a step's losses, validate / checkpoint when due; True when the budget is spent."""
        loss, kd, ce = losses
        t_start, prior_seconds, start_step = self._clock
        state = self.state
        state["step"] += 1
        state["tokens_seen"] += self.tokens_per_step
        state["train_seconds"] = prior_seconds + time.perf_counter() - t_start
        state["history"].append({"step": state["step"], "loss": round(loss, 4), "kd": round(kd, 4), "ce": round(ce, 4)})
        session_tokens = (state["step"] - start_step) * self.tokens_per_step
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", kd=f"{kd:.3f}", ce=f"{ce:.3f}",
                        tok_s=f"{session_tokens / max(1e-9, time.perf_counter() - t_start):.0f}")
        done = not self.budget_left()
        if state["step"] % self.cfg.eval_every == 0 or done:
            self.validate()
        if state["step"] % self.cfg.checkpoint_every == 0 or done:
            self.save_checkpoint()
        return done

    def validate(self) -> dict:
        """Score the student on the validation blocks, record and report it; returns ``{loss, kd, ce}`` (nats/token)."""
        res = self._val_loss()
        self.state["val"].append({"step": self.state["step"], **res})
        self.progress(f"step {self.state['step']}: validation loss {res['loss']:.3f} (kd {res['kd']:.3f}, "
                      f"ce {res['ce']:.3f}; teacher ce {self.state['teacher_val_ce']:.3f})", None)
        return res

    def _val_loss(self) -> dict:
        cfg = self.cfg
        return _val_loss(self.accelerator.unwrap_model(self.student), self.teacher_model, self.val, cfg.batch_size,
                         cfg.temperature, cfg.alpha, self.device)

    def save_checkpoint(self) -> None:
        """Checkpoint weights, optimizer, scheduler and :attr:`state` into the run folder (atomic swap).

        Raises:
            PocketPilotError: out of disk space (the previous checkpoint is kept).
        """
        save_checkpoint(self.accelerator, self.run_dir, self.state, self.student, self.optimizer, self.scheduler)
        self.saved_step = self.state["step"]

    # ------------------------------------------------------------------ artifact

    def save(self, qmethod: QuantMethod | None, command: str, *, artifact_id: str | None = None,
             eval_tasks: int = 0, activate: bool = True) -> CompressResult:
        """Write the student as an artifact through :func:`build_artifact` (main process; never reused).

        Args:
            qmethod: quantize the student with this method; ``None``: float32 weights.
            command: the command line that reproduces the run (recorded in the recipe).
            artifact_id: default ``<teacher>-distill<N>[-<method>]``.
            eval_tasks, activate: as :func:`build_artifact`.

        Returns:
            :class:`CompressResult`. On the other processes of a multi-machine run whose cache is
            not shared, ``manifest`` is ``None``.

        Raises:
            PocketPilotError: out of disk space (nothing half-written is left in ``artifacts/``).
        """
        artifact_id = artifact_id or (f"{self.teacher_obj.slug}-distill{self.cfg.n_layers}"
                                      + (f"-{qmethod.name}" if qmethod else ""))
        result = None
        if self.main:
            self.progress(f"writing artifact {artifact_id}", 0.9)
            model = self.accelerator.unwrap_model(self.student)
            model.eval()
            recipe = self.recipe(qmethod, command)
            result = build_artifact(self.teacher_obj, artifact_id, lambda tmp: self._write(model, tmp, recipe, qmethod),
                                    reuse=False, eval_tasks=eval_tasks, activate=activate, progress=self.progress)
        self.accelerator.wait_for_everyone()
        if result is None:
            final = artifacts_dir() / artifact_id
            try:
                manifest = read_manifest(final)
            except ArtifactError:
                manifest = None
            result = CompressResult(artifact_id, final, False, manifest)
        self.progress(f"training checkpoint kept in {self.run_dir}", 1.0)  # build_artifact said "ready"
        return result

    def _write(self, model, tmp: Path, recipe: dict, qmethod: QuantMethod | None) -> Written:
        """The ``write`` step of :func:`build_artifact`: the student's weights, quantized or float32, into ``tmp``."""
        if qmethod is not None:
            calibration = calibration_batches(self.tokenizer)
            quantization = qmethod.apply(model, tmp, calibration or None)
        else:
            quantization = get_method("none").apply(model, tmp, None)
        return Written({**recipe, "quantization": quantization}, self.n_teacher_params)

    def _description(self, qmethod: QuantMethod | None) -> str:
        then = f", then {qmethod.name}: {qmethod.description}" if qmethod else ", float32 weights"
        return f"knowledge distillation into {self.cfg.n_layers} of the teacher's {self.n_teacher_layers} layers" + then

    def recipe(self, qmethod: QuantMethod | None, command: str) -> dict:
        """The manifest's ``recipe``: method, layer map, loss settings, budget, losses, corpus, run folder."""
        cfg, state = self.cfg, self.state
        last = state["history"][-20:]
        recipe = {
            "method": f"distill+{qmethod.name}" if qmethod else "distill",
            "description": self._description(qmethod),
            "n_layers": cfg.n_layers, "teacher_layers": self.n_teacher_layers, "layer_map": self.layer_map,
            "temperature": cfg.temperature, "alpha": cfg.alpha, "loss": LOSS_FORMULA, "top_k": cfg.top_k,
            **({"student": self.student_details} if self.student_details else {}),
            "settings": cfg.run_settings(),
            "budget": {"steps": cfg.steps, "minutes": cfg.minutes},
            "steps": state["step"],
            "tokens_seen": state["tokens_seen"],
            "train_minutes": round(state["train_seconds"] / 60, 2),
            "resumed_from_step": state["resumed_from_step"],
            "train_loss": round(sum(h["loss"] for h in last) / len(last), 4),
            "train_loss_first": state["history"][0]["loss"] if state["history"] else None,
            "val_before": state["val"][0],
            "val_after": state["val"][-1],
            "teacher_val_ce": state["teacher_val_ce"],
            "val_history": state["val"],
            "train_history": _thin(state["history"], 100),
            "corpus": self.data.summary(),
            "student_params": self.n_student_params,
            "student_fp32_bytes": 4 * self.n_student_params,
            "device": str(self.device),
            "processes": self.accelerator.num_processes,
            "run_dir": str(self.run_dir),
            "command": command,
        }
        if self.cache is not None:
            recipe["topk_cache"] = self.cache.summary()
        return recipe


# --------------------------------------------------------------------------- helpers


def _above_bar(progress: Progress) -> Progress:
    """``progress`` writing above the tqdm bar (keeps the bar intact)."""
    def report(message: str, fraction: float | None = None) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            progress(message, fraction)

    return report


def _val_loss(model, teacher, val, batch_size: int, temperature: float, alpha: float, device) -> dict:
    """Mean ``loss``/``kd``/``ce`` (nats per token) of ``model`` on the validation blocks ``[M, L]``."""
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    n = 0
    with torch.no_grad():
        for chunk in val.split(batch_size):
            ids = chunk.to(device)
            s = model(input_ids=ids, use_cache=False).logits
            t = teacher(input_ids=ids, use_cache=False).logits
            parts = kd_loss(s[:, :-1], t[:, :-1], ids[:, 1:], temperature, alpha)
            tokens = ids[:, 1:].numel()
            for key, value in zip(("loss", "kd", "ce"), parts):
                totals[key] += float(value) * tokens
            n += tokens
    model.train(was_training)
    return {k: round(v / n, 4) for k, v in totals.items()}


def _teacher_ce(teacher, val, batch_size: int, device) -> float:
    """Next-token cross-entropy of the teacher on the validation blocks ``[M, L]`` (nats per token)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for chunk in val.split(batch_size):
            ids = chunk.to(device)
            logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                           reduction="sum"))
            n += ids[:, 1:].numel()
    return round(total / n, 4)


def _thin(rows: list, n: int) -> list:
    """At most ``n`` rows of ``rows``, evenly spaced, the last one kept."""
    if len(rows) <= n:
        return rows
    stride = math.ceil(len(rows) / n)
    return rows[::-1][::stride][::-1]
