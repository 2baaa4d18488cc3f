"""Knowledge distillation: a frozen teacher trains a shallower student of the same architecture.

Pre-training-style distillation (the teacher is frozen, as in Distil-CodeGPT, where it beat
in-training KD): the student is the teacher's architecture with fewer decoder layers,
initialised from the teacher's layers evenly spaced (first and last kept), with the teacher's
embeddings, final norm and LM head, and the same tokenizer (students initialised from
pretrained weights did best in Distil-CodeGPT and DistilBERT).

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"; the
soft + hard loss of DistilBERT and Distil-CodeGPT)::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, next token)

Data: ``.py`` files of a local corpus (default: the Python standard library, plus a
workspace folder if given) tokenized into fixed-length blocks; files whose relative path
hashes below ``val_fraction`` are held out for validation.

Training goes through ``accelerate`` (``Accelerator.prepare``, ``backward``,
``save_state``/``load_state``), so the same code runs on CPU, one GPU, or several with
``accelerate launch -m pocketpilot distill ...``. The run folder
(``<home>/runs/<teacher>-distill<N>-<key>/``, the key hashes every setting that changes the
result) holds the tokenized data and the last checkpoint, so running the same command again
resumes where it stopped; the budget (``steps`` / ``minutes``) counts the whole run,
resumes included. The student is written as an ordinary artifact (float32, or quantized
afterwards with ``then="int8"``), atomically, with the same manifest as
:func:`pocketpilot.compression.api.compress` writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from pocketpilot.store import artifacts_dir, atomic_dir, disk_error, home, read_json_or_none, set_active, write_json
from pocketpilot.corpus import corpus_entries
from pocketpilot.errors import PocketPilotError

if TYPE_CHECKING:
    from pocketpilot.compression.build import CompressResult

log = logging.getLogger(__name__)

Progress = Callable[[str, float | None], None]

#: Layout of run folders and checkpoints; part of the run key, so a new layout starts a new run.
RUN_FORMAT = 1

#: Cache dtype of top-k teacher logits (stored minus their row maximum, so values are <= 0).
TOPK_CACHE_DTYPE = "float16"


# --------------------------------------------------------------------------- student


def student_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer index for each student layer: evenly spaced, first and last kept.

    Student layer ``i`` takes teacher layer ``round(i * (n_teacher - 1) / (n_student - 1))``
    (halves rounded up), e.g. 30 -> 10 gives ``[0, 3, 6, 10, 13, 16, 19, 23, 26, 29]``.

    Raises:
        PocketPilotError: ``n_student < 2`` or ``n_student > n_teacher``.
    """
    if n_student < 2 or n_student > n_teacher:
        raise PocketPilotError(
            f"a student needs between 2 and {n_teacher} layers (the teacher has {n_teacher}); got --layers {n_student}"
        )
    d = n_student - 1
    return [(2 * i * (n_teacher - 1) + d) // (2 * d) for i in range(n_student)]


def decoder_layers_path(model) -> str:
    """Dotted path of the model's list of decoder layers (``"model.layers"`` for Llama/Qwen2).

    Raises:
        PocketPilotError: no ``nn.ModuleList`` of ``config.num_hidden_layers`` modules.
    """
    from torch import nn

    n = model.config.num_hidden_layers
    for name, mod in model.named_modules():
        if name and isinstance(mod, nn.ModuleList) and len(mod) == n:
            return name
    raise PocketPilotError(f"cannot find the {n} decoder layers of {type(model).__name__}; "
                           "distillation needs a decoder-only model with a layer list")


def make_student(teacher_model, n_layers: int, layers: list[int] | None = None):
    """A student with the teacher's architecture and ``n_layers`` decoder layers, initialised from it.

    The config is the teacher's with ``num_hidden_layers = n_layers`` (and per-layer lists such as
    ``layer_types`` subset by the layer map). Embeddings, final norm, LM head and every mapped
    layer (:func:`student_layer_map`) are copied (cloned, so training the student never touches
    the teacher); a tied LM head stays tied.

    Args:
        teacher_model: a ``transformers`` causal LM (float weights, not quantized).
        n_layers: student depth, 2 .. teacher depth.
        layers: the teacher layers to copy, in order (``n_layers`` distinct indices; e.g. from
            :func:`pocketpilot.compression.prune.pick_layers`); default :func:`student_layer_map`.

    Returns:
        The student, a model of the teacher's class, float32 like the teacher, in train mode.
        ``student.config.pocketpilot_layer_map`` is not set; use :func:`student_layer_map`.

    Raises:
        PocketPilotError: bad ``n_layers``, or a model without a recognisable layer list.
    """
    import copy

    from accelerate import init_empty_weights

    cfg = teacher_model.config
    n_teacher = cfg.num_hidden_layers
    mapping = student_layer_map(n_teacher, n_layers)
    if layers is not None:
        if len(layers) != n_layers or len(set(layers)) != n_layers or not all(0 <= i < n_teacher for i in layers):
            raise PocketPilotError(f"a student of {n_layers} layers needs {n_layers} distinct teacher layers in "
                                   f"0..{n_teacher - 1}; got {layers}")
        mapping = list(layers)
    prefix = decoder_layers_path(teacher_model) + "."
    config = copy.deepcopy(cfg)
    config.num_hidden_layers = n_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n_teacher:
        config.layer_types = [layer_types[i] for i in mapping]
    with init_empty_weights(include_buffers=False):
        student = type(teacher_model)(config)
    teacher_state = teacher_model.state_dict()
    state = {}
    for key in student.state_dict():
        src = key
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{mapping[int(j)]}.{rest}"
        state[key] = teacher_state[src].detach().clone()
    student.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    leftover = [n for n, t in list(student.named_parameters()) + list(student.named_buffers()) if t.device.type == "meta"]
    if leftover:
        raise PocketPilotError(f"cannot build a student of {type(teacher_model).__name__}: no weights for {leftover[:3]}")
    if getattr(teacher_model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher_model.generation_config)
    student.train()
    return student


# --------------------------------------------------------------------------- data


@dataclass
class CodeBlocks:
    """A tokenized code corpus.

    Attributes:
        train: int64 ``[N, block_tokens]``: training blocks (files concatenated, EOS between files).
        val: int64 ``[M, L]``: validation blocks from the held-out files (``L = block_tokens``, or
            shorter when the held-out files hold less than one block).
        train_files, val_files: number of files in each split.
        train_tokens, val_tokens: tokens in each split (including the remainders dropped from blocks).
        roots: the corpus folders, as given.
    """

    train: Any
    val: Any
    train_files: int
    val_files: int
    train_tokens: int
    val_tokens: int
    roots: list[str]

    def summary(self) -> dict:
        """JSON-able counts (files, tokens, blocks) for the manifest."""
        return {"roots": self.roots, "train_files": self.train_files, "val_files": self.val_files,
                "train_tokens": self.train_tokens, "val_tokens": self.val_tokens,
                "train_blocks": int(self.train.shape[0]), "val_blocks": int(self.val.shape[0]),
                "block_tokens": int(self.train.shape[1])}


def code_blocks(
    tokenizer,
    roots: list[Path],
    block_tokens: int = 256,
    val_fraction: float = 0.02,
    max_tokens: int | None = None,
    exts: tuple[str, ...] = (".py",),
) -> CodeBlocks:
    """Tokenize the source files under ``roots`` into fixed-length blocks, with held-out files.

    Files are listed with :func:`pocketpilot.corpus.source_files` (tests,
    ``site-packages`` and ``__pycache__`` skipped). A file goes to validation when the hash of
    its path relative to its root is below ``val_fraction`` (at least one file, the one with the
    smallest hash, is always held out), so the split is the same on every machine and does not
    change when other files are added. Files are visited in hash order (a fixed shuffle), each
    followed by the EOS token, and the training stream stops after ``max_tokens`` tokens.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        roots: folders to read (each must exist).
        block_tokens: tokens per block.
        val_fraction: share of files held out, in (0, 0.5].
        max_tokens: cap on training tokens (``None``: all files).

    Returns:
        :class:`CodeBlocks`.

    Raises:
        PocketPilotError: a root is missing; no source files; fewer than 2 files (one is held
            out); the training files hold less than one block.
    """
    import torch

    entries = corpus_entries(roots, exts)
    where = ", ".join(str(r) for r in roots)
    if not entries:
        raise PocketPilotError(f"the corpus is empty: no {'/'.join(exts)} files under {where} "
                               "(tests, site-packages and __pycache__ are skipped); give a folder with source files")
    if len(entries) < 2:
        raise PocketPilotError(f"the corpus has 1 {'/'.join(exts)} file under {where}; distillation needs at least 2 "
                               "(one is held out for validation)")
    entries.sort()
    val_set = {rel for h, rel, _ in entries if h < val_fraction} or {entries[0][1]}
    eos = tokenizer.eos_token_id

    def stream(paths: list[Path], cap: int | None) -> tuple[list[int], int]:
        ids: list[int] = []
        n_files = 0
        for start in range(0, len(paths), 64):
            texts = []
            for p in paths[start:start + 64]:
                try:
                    texts.append(p.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):
                    continue
            if not texts:
                continue
            for row in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
                ids.extend(row)
                if eos is not None:
                    ids.append(eos)
                n_files += 1
                if cap is not None and len(ids) >= cap:
                    return ids[:cap], n_files
        return ids, n_files

    train_ids, n_train = stream([p for _, rel, p in entries if rel not in val_set], max_tokens)
    val_ids, n_val = stream([p for _, rel, p in entries if rel in val_set], None)
    n_blocks = len(train_ids) // block_tokens
    if n_blocks == 0:
        raise PocketPilotError(
            f"the corpus is too small: {len(train_ids)} training tokens under {where}, less than one block of "
            f"{block_tokens}; add files or lower --block-tokens"
        )
    train = torch.tensor(train_ids[: n_blocks * block_tokens], dtype=torch.long).view(n_blocks, block_tokens)
    n_val_blocks = len(val_ids) // block_tokens
    if n_val_blocks:
        val = torch.tensor(val_ids[: n_val_blocks * block_tokens], dtype=torch.long).view(n_val_blocks, block_tokens)
    elif len(val_ids) >= 2:
        val = torch.tensor(val_ids, dtype=torch.long).view(1, -1)
    else:
        raise PocketPilotError(f"the held-out files under {where} hold {len(val_ids)} tokens; add files")
    return CodeBlocks(train, val, n_train, n_val, len(train_ids), len(val_ids), [str(r) for r in roots])


# --------------------------------------------------------------------------- loss


class KDLoss(NamedTuple):
    """Parts of the distillation loss (scalars).

    Attributes:
        loss: ``alpha * kd + (1 - alpha) * ce``, differentiable w.r.t. the student.
        kd: ``T^2 * KL(teacher || student)`` at temperature T, nats per token (detached).
        ce: next-token cross-entropy of the student, nats per token (detached).
    """

    loss: Any
    kd: Any
    ce: Any


def _check_loss_args(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise PocketPilotError(f"the temperature must be > 0; got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise PocketPilotError(f"alpha must be in [0, 1]; got {alpha}")


def kd_loss(student_logits, teacher_logits, labels, temperature: float = 2.0, alpha: float = 0.5,
            ignore_index: int = -100) -> KDLoss:
    """Soft (teacher) + hard (next token) distillation loss.

    ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)``

    from Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network" (the
    ``T^2`` keeps the soft term's gradients on the scale of the hard one when T changes), as
    used by DistilBERT and Distil-CodeGPT. The KL is summed over the vocabulary and both terms
    are averaged over the counted positions.

    Args:
        student_logits: float ``[B, L, V]``.
        teacher_logits: float ``[B, L, V]`` (no gradient needed).
        labels: int64 ``[B, L]``: the target token of each position, i.e. already shifted
            (``labels[:, i] = input_ids[:, i + 1]`` for logits of ``input_ids[:, : L]``);
            positions equal to ``ignore_index`` count in neither term.
        temperature: T > 0; alpha: weight of the soft term in [0, 1].

    Returns:
        :class:`KDLoss` (``loss``, ``kd``, ``ce``; nats per token).

    Raises:
        PocketPilotError: T <= 0 or alpha outside [0, 1].
    """
    import torch.nn.functional as F

    _check_loss_args(temperature, alpha)
    s, t, y = _flatten(labels, ignore_index, student_logits, teacher_logits)
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    kd = temperature ** 2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(s, y)
    return KDLoss(alpha * kd + (1 - alpha) * ce, kd.detach(), ce.detach())


def kd_loss_topk(student_logits, teacher_values, teacher_indices, labels, temperature: float = 2.0,
                 alpha: float = 0.5, ignore_index: int = -100) -> KDLoss:
    """:func:`kd_loss` with only the teacher's top-k logits (a cheap, cacheable teacher signal).

    The soft term is the KL between teacher and student distributions both renormalised over
    the teacher's top-k tokens of each position; with ``k = V`` it equals :func:`kd_loss`.

    Args:
        student_logits: float ``[B, L, V]``.
        teacher_values: float ``[B, L, k]``: the teacher's top-k logits (any per-row shift).
        teacher_indices: int64 ``[B, L, k]``: their token ids.
        labels, temperature, alpha, ignore_index: as in :func:`kd_loss`.

    Returns:
        :class:`KDLoss`.
    """
    import torch.nn.functional as F

    _check_loss_args(temperature, alpha)
    s, tv, y, ti = _flatten(labels, ignore_index, student_logits, teacher_values, teacher_indices)
    log_ps = F.log_softmax(s.gather(-1, ti.long()) / temperature, dim=-1)
    log_pt = F.log_softmax(tv / temperature, dim=-1)
    kd = temperature ** 2 * F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(s, y)
    return KDLoss(alpha * kd + (1 - alpha) * ce, kd.detach(), ce.detach())


def _flatten(labels, ignore_index, *tensors):
    """Rows of the counted positions: ``(t0 [N, *] float32, t1 float32, labels [N], t2...)``."""
    mask = labels != ignore_index
    if bool(mask.all()):
        rows = [x.reshape(-1, x.shape[-1]) for x in tensors]
        y = labels.reshape(-1)
    else:
        rows = [x[mask] for x in tensors]
        y = labels[mask]
    out = [r.float() for r in rows[:2]] + [y] + rows[2:]
    return out


class TeacherTopKCache:
    """Teacher top-k logits and token ids per training block, computed once and reused.

    Values are kept minus their row maximum in :data:`TOPK_CACHE_DTYPE` (a softmax does not
    change under a shift) and ids as int32, on CPU: ``6 * k`` bytes per token, e.g. 96 MB for
    500k tokens at k = 32. The values used are rounded the same way whether they come from
    the cache or were just computed, so a resumed run sees the same numbers.
    """

    def __init__(self, k: int):
        self.k = k
        self.store: dict[int, tuple[Any, Any]] = {}
        self.hits = 0
        self.misses = 0

    def __call__(self, teacher, block_ids, input_ids):
        """Top-k of the teacher for a batch.

        Args:
            teacher: the frozen teacher.
            block_ids: int ``[B]``: index of each block in the training set.
            input_ids: int64 ``[B, L]`` on the training device.

        Returns:
            ``(values float32 [B, L, k], indices int64 [B, L, k])`` on ``input_ids.device``.
        """
        import torch

        keys = [int(i) for i in block_ids.tolist()]
        if not all(key in self.store for key in keys):
            self.misses += len(keys)
            with torch.no_grad():
                logits = teacher(input_ids=input_ids, use_cache=False).logits
                k = min(self.k, logits.shape[-1])
                values, indices = logits.float().topk(k, dim=-1)
                values = (values - values[..., :1]).to(getattr(torch, TOPK_CACHE_DTYPE)).cpu()
                indices = indices.to(torch.int32).cpu()
            for row, key in enumerate(keys):
                self.store[key] = (values[row].clone(), indices[row].clone())
        else:
            self.hits += len(keys)
        values = torch.stack([self.store[key][0] for key in keys]).to(input_ids.device).float()
        indices = torch.stack([self.store[key][1] for key in keys]).to(input_ids.device).long()
        return values, indices


# --------------------------------------------------------------------------- settings


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
        _check_loss_args(self.temperature, self.alpha)
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


# --------------------------------------------------------------------------- training


class _Blocks:
    """Map-style dataset over the training blocks: item ``i`` is ``{"idx": i, "input_ids": [L]}``."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "input_ids": self.blocks[i]}


def _epoch_sampler(n: int, seed: int):
    """A sampler giving a fresh seeded permutation of ``range(n)`` per epoch.

    The training loop sets ``.epoch`` itself (it has no ``set_epoch``, so accelerate leaves it
    alone); the order is a function of (seed, epoch) only, so a resumed run sees the same batches.
    """
    import torch
    from torch.utils.data import Sampler

    class EpochSampler(Sampler):
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return n

        def __iter__(self):
            g = torch.Generator().manual_seed(seed * 1_000_003 + self.epoch)
            return iter(torch.randperm(n, generator=g).tolist())

    return EpochSampler()


def _run_key(teacher_sha: dict, cfg: DistillConfig, roots: list[str], processes: int, student: str | None = None) -> str:
    key = {"teacher": teacher_sha, "settings": cfg.run_settings(), "roots": roots, "processes": processes,
           "format": RUN_FORMAT}
    if student:  # a custom student (the default one keeps the keys of earlier runs)
        key["student"] = student
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoint/``; ``checkpoint.old/`` after a crash mid-swap)."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "progress.json").is_file():
            return run_dir / name
    return None


def _save_checkpoint(accelerator, run_dir: Path, state: dict) -> None:
    """``accelerator.save_state`` into ``checkpoint.partial/``, then swap it in for ``checkpoint/``.

    Raises:
        PocketPilotError: out of disk space (the previous checkpoint is kept).
    """
    final, tmp, old = run_dir / "checkpoint", run_dir / "checkpoint.partial", run_dir / "checkpoint.old"
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


def _validate(model, teacher, val, batch_size: int, temperature: float, alpha: float, device) -> dict:
    """Mean ``loss``/``kd``/``ce`` (nats per token) of ``model`` on the validation blocks ``[M, L]``."""
    import torch

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
    """Next-token cross-entropy of the teacher on the validation blocks (nats per token)."""
    import torch
    import torch.nn.functional as F

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


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _command(spec: str, cfg: DistillConfig, corpus: Path | None, workspace: Path | None, then: str | None) -> str:
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
    build_student: Callable[[Any], tuple[Any, dict]] | None = None,
    student_tag: str | None = None,
    artifact_id: str | None = None,
    **settings,
) -> "CompressResult":
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
        :class:`pocketpilot.compression.api.CompressResult`; the manifest's ``recipe`` holds the
        layer map, T, alpha, steps done, tokens seen, train minutes, the train-loss history and
        validation losses (nats per token) before and after, and the teacher's validation CE.

    Raises:
        PocketPilotError: bad settings or budget (before anything is fetched), an empty or too
            small corpus, or too little disk space; nothing half-written is left in ``artifacts/``.
            (A ``minutes`` budget always gets at least one step.)
        UnknownTeacherError, UnknownMethodError, FetchError: as :func:`compress`.
    """
    cfg = DistillConfig(n_layers, **settings)
    progress = progress or (lambda msg, frac: None)
    if build_student is not None and not student_tag:
        raise PocketPilotError("a custom student needs a student_tag naming it (it keys the run folder)")

    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketpilot.compression.api import CompressResult, copy_tokenizer_files, finish_artifact
    from pocketpilot.compression.calibration import calibration_batches
    from pocketpilot.compression.methods import get_method
    from pocketpilot.teachers import fetch_teacher, parse_spec
    from pocketpilot.corpus import default_source_dir

    qmethod = get_method(then) if then and then != "none" else None
    spec = parse_spec(teacher)
    corpus_root = Path(corpus).expanduser().resolve() if corpus is not None else None
    workspace_root = Path(workspace).expanduser().resolve() if workspace is not None else None
    roots = [corpus_root or default_source_dir()] + ([workspace_root] if workspace_root else [])
    for root in roots:
        if not root.is_dir():
            raise PocketPilotError(f"corpus folder not found: {root}")
    teacher_obj = fetch_teacher(spec, progress)

    accelerator = Accelerator()
    main = accelerator.is_main_process
    device = accelerator.device
    if not main:  # one voice per run
        progress = lambda msg, frac: None  # noqa: E731
    progress(f"loading teacher {spec.spec} on {device} ({accelerator.num_processes} process(es))", 0.05)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher_obj.folder, dtype=torch.float32, local_files_only=True)
    teacher_model.eval().requires_grad_(False)
    n_teacher_layers = teacher_model.config.num_hidden_layers
    layer_map = student_layer_map(n_teacher_layers, cfg.n_layers)
    max_pos = getattr(teacher_model.config, "max_position_embeddings", None)
    if max_pos and cfg.block_tokens > max_pos:
        raise PocketPilotError(f"--block-tokens {cfg.block_tokens} exceeds the teacher's context ({max_pos} tokens)")
    tokenizer = AutoTokenizer.from_pretrained(teacher_obj.folder, local_files_only=True)
    n_teacher_params = sum(p.numel() for p in teacher_model.parameters())

    key = _run_key(teacher_obj.source_sha256, cfg, [str(r) for r in roots], accelerator.num_processes, student_tag)
    run_dir = home() / "runs" / f"{teacher_obj.slug}-distill{cfg.n_layers}-{key}"
    if not resume and main:  # start over; the tokenized corpus is kept
        for name in ("checkpoint", "checkpoint.old", "checkpoint.partial"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    accelerator.wait_for_everyone()

    data_file = run_dir / "data.pt"
    data = None
    if data_file.is_file():
        try:
            data = CodeBlocks(**torch.load(data_file, weights_only=True))
        except Exception:  # an unreadable cache is rebuilt
            data = None
    if data is None:
        progress(f"tokenizing the corpus ({', '.join(str(r) for r in roots)})", 0.1)
        data = code_blocks(tokenizer, roots, cfg.block_tokens, cfg.val_fraction, cfg.max_tokens)
    student_details: dict = {}
    if build_student is not None:
        student, student_details = build_student(teacher_model)
        student.train()
        layer_map = student_details.get("layer_map", layer_map)
        if student.config.num_hidden_layers != cfg.n_layers:
            raise PocketPilotError(f"the custom student has {student.config.num_hidden_layers} layers, not {cfg.n_layers}")
    else:
        student = make_student(teacher_model, cfg.n_layers)
    n_student_params = sum(p.numel() for p in student.parameters())
    # checkpoint (weights + two AdamW moments, twice while swapping) + artifact + data, float32
    need = 4 * n_student_params * (2 * 3 + 1) + data.train.numel() * 8
    free = _free_bytes(home())
    if free < need:
        raise PocketPilotError(
            f"not enough disk space under {home()}: distilling needs about {need / 1e6:.0f} MB (checkpoint + artifact), "
            f"{free / 1e6:.0f} MB free; free some space or set POCKETPILOT_HOME to a bigger disk"
        )
    if main and not data_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            tmp = data_file.with_name("data.pt.tmp")
            torch.save(asdict(data), tmp)
            os.replace(tmp, data_file)
            write_json(run_dir / "run.json", {"teacher": spec.spec, "settings": cfg.run_settings(),
                                              "roots": data.roots, "processes": accelerator.num_processes})
        except OSError as exc:
            raise disk_error(exc, run_dir) from exc
    accelerator.wait_for_everyone()

    sampler = _epoch_sampler(len(data.train), cfg.seed)
    loader = DataLoader(_Blocks(data.train), batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    # not prepared (accelerate would step it once per process): one scheduler step per optimizer step
    accelerator.register_for_checkpointing(scheduler)
    teacher_model.to(device)
    n_batches = len(loader)
    if n_batches == 0:
        raise PocketPilotError(
            f"the corpus is too small: {len(data.train)} training blocks of {cfg.block_tokens} tokens, fewer than one "
            f"batch of {cfg.batch_size} per process; add files or lower --batch-size / --block-tokens"
        )
    val = data.val[: cfg.val_blocks]

    state = {"step": 0, "tokens_seen": 0, "train_seconds": 0.0, "history": [], "val": [], "teacher_val_ce": None,
             "resumed_from_step": None}
    ckpt = _find_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        try:
            state = json.loads((ckpt / "progress.json").read_text())
            accelerator.load_state(str(ckpt))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise PocketPilotError(f"cannot resume from {ckpt} ({str(exc).splitlines()[0][:160]}); "
                                   "start over with --no-resume") from None
        state["resumed_from_step"] = state["step"]
        progress(f"resuming {run_dir.name} from step {state['step']}", 0.15)
    if state["teacher_val_ce"] is None:
        state["teacher_val_ce"] = _teacher_ce(teacher_model, val, cfg.batch_size, device)
    if not state["val"]:
        first = _validate(accelerator.unwrap_model(student), teacher_model, val, cfg.batch_size, cfg.temperature,
                          cfg.alpha, device)
        state["val"].append({"step": 0, **first})

    user_progress = progress

    def progress(message: str, fraction: float | None) -> None:  # noqa: F811 - keeps the tqdm bar intact
        with tqdm.external_write_mode(file=sys.stderr):
            user_progress(message, fraction)

    cache = TeacherTopKCache(cfg.top_k) if cfg.top_k else None
    tokens_per_step = cfg.batch_size * cfg.block_tokens * accelerator.num_processes
    max_steps = cfg.steps if cfg.steps is not None else math.inf
    max_seconds = cfg.minutes * 60 if cfg.minutes is not None else math.inf

    def budget_left() -> bool:
        return state["step"] < max_steps and state["train_seconds"] < max_seconds

    start_step, saved_step = state["step"], state["step"]
    prior_seconds = state["train_seconds"]
    t_start = time.perf_counter()
    window: list[float] = []
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"distill {n_teacher_layers}->{cfg.n_layers} layers",
               unit="step", file=sys.stderr, disable=not (show_progress and main), dynamic_ncols=True)
    student.train()
    try:
        while budget_left():
            epoch, offset = divmod(state["step"], n_batches)
            sampler.epoch = epoch
            batches = accelerator.skip_first_batches(loader, offset) if offset else loader
            for batch in batches:
                ids = batch["input_ids"]
                logits = student(input_ids=ids, use_cache=False).logits
                if cache is not None:
                    values, indices = cache(teacher_model, batch["idx"], ids)
                    parts = kd_loss_topk(logits[:, :-1], values[:, :-1], indices[:, :-1], ids[:, 1:],
                                         cfg.temperature, cfg.alpha)
                else:
                    with torch.no_grad(), accelerator.autocast():
                        t_logits = teacher_model(input_ids=ids, use_cache=False).logits
                    parts = kd_loss(logits[:, :-1], t_logits[:, :-1], ids[:, 1:], cfg.temperature, cfg.alpha)
                accelerator.backward(parts.loss)
                if cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss, kd, ce = (float(x) for x in accelerator.reduce(torch.stack([p.detach() for p in parts]), "mean"))
                state["step"] += 1
                state["tokens_seen"] += tokens_per_step
                state["train_seconds"] = prior_seconds + time.perf_counter() - t_start
                state["history"].append({"step": state["step"], "loss": round(loss, 4), "kd": round(kd, 4),
                                         "ce": round(ce, 4)})
                window = (window + [loss])[-20:]
                session_tokens = (state["step"] - start_step) * tokens_per_step
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", kd=f"{kd:.3f}", ce=f"{ce:.3f}",
                                tok_s=f"{session_tokens / max(1e-9, time.perf_counter() - t_start):.0f}")
                done = not budget_left()
                if state["step"] % cfg.eval_every == 0 or done:
                    res = _validate(accelerator.unwrap_model(student), teacher_model, val, cfg.batch_size,
                                    cfg.temperature, cfg.alpha, device)
                    state["val"].append({"step": state["step"], **res})
                    progress(f"step {state['step']}: validation loss {res['loss']:.3f} (kd {res['kd']:.3f}, "
                             f"ce {res['ce']:.3f}; teacher ce {state['teacher_val_ce']:.3f})", None)
                if state["step"] % cfg.checkpoint_every == 0 or done:
                    _save_checkpoint(accelerator, run_dir, state)
                    saved_step = state["step"]
                if done:
                    break
    except KeyboardInterrupt:
        if state["step"] > saved_step:
            _save_checkpoint(accelerator, run_dir, state)
            progress(f"interrupted; checkpoint at step {state['step']} kept in {run_dir}, the same command resumes", None)
        raise
    finally:
        bar.close()

    method = f"distill+{qmethod.name}" if qmethod else "distill"
    artifact_id = artifact_id or f"{teacher_obj.slug}-distill{cfg.n_layers}" + (f"-{qmethod.name}" if qmethod else "")
    final = artifacts_dir() / artifact_id
    manifest = None
    if main:
        progress(f"writing artifact {artifact_id}", 0.9)
        model = accelerator.unwrap_model(student)
        model.eval()
        last = state["history"][-20:]
        recipe = {
            "method": method,
            "description": (f"knowledge distillation into {cfg.n_layers} of the teacher's {n_teacher_layers} layers"
                            + (f", then {qmethod.name}: {qmethod.description}" if qmethod else ", float32 weights")),
            "n_layers": cfg.n_layers,
            "teacher_layers": n_teacher_layers,
            "layer_map": layer_map,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "loss": "alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE(next token); Hinton et al. 2015",
            "top_k": cfg.top_k,
            **({"student": student_details} if student_details else {}),
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
            "corpus": data.summary(),
            "student_params": n_student_params,
            "student_fp32_bytes": 4 * n_student_params,
            "device": str(device),
            "processes": accelerator.num_processes,
            "run_dir": str(run_dir),
            "command": _command(spec.spec, cfg, corpus_root, workspace_root, qmethod.name if qmethod else None),
        }
        if cache is not None:
            recipe["topk_cache"] = {"blocks": len(cache.store), "hits": cache.hits, "misses": cache.misses}
        with atomic_dir(final) as tmp:
            if qmethod is not None:
                calibration = calibration_batches(tokenizer)
                recipe["quantization"] = qmethod.apply(model, tmp, calibration or None)
            else:
                recipe["quantization"] = get_method("none").apply(model, tmp, None)
            copy_tokenizer_files(teacher_obj.folder, tmp)
            manifest = finish_artifact(tmp, artifact_id, teacher_obj, n_teacher_params, recipe, eval_tasks, progress)
        if activate:
            set_active(artifact_id)
    accelerator.wait_for_everyone()
    if manifest is None:
        manifest = read_json_or_none(final / "manifest.json") or {}
    progress(f"artifact {artifact_id} ready (checkpoint kept in {run_dir})", 1.0)
    return CompressResult(artifact_id, final, False, manifest)
