"""Training data: a source corpus tokenized into fixed-length blocks, the data order, the teacher's top-k cache.

Files whose relative path hashes below ``val_fraction`` are held out for validation
(:func:`pocketpilot.corpus.corpus_entries` gives the hashes), so the split is the same on every
machine and ``pocketpilot eval --held-out`` can cut its tasks from the same files.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from pocketpilot.corpus import corpus_entries
from pocketpilot.errors import PocketPilotError

#: Cache dtype of top-k teacher logits (stored minus their row maximum, so values are <= 0).
TOPK_CACHE_DTYPE = "float16"

#: Files tokenized per tokenizer call.
_TOKENIZE_BATCH = 64


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

    @classmethod
    def load(cls, path: Path) -> CodeBlocks | None:
        """The blocks saved by :meth:`save` at ``path``, or ``None`` when missing or unreadable (then rebuilt)."""
        if not path.is_file():
            return None
        try:
            return cls(**torch.load(path, weights_only=True))
        except Exception:  # an unreadable cache is rebuilt
            return None

    def save(self, path: Path) -> None:
        """Write the blocks to ``path`` atomically (``torch.save`` to a temporary file, then rename).

        Raises:
            OSError: the disk is full or not writable.
        """
        tmp = path.with_name(path.name + ".tmp")
        torch.save(asdict(self), tmp)
        os.replace(tmp, path)


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
    where = ", ".join(str(r) for r in roots)
    train_paths, val_paths = _split_files(roots, exts, val_fraction, where)
    eos = tokenizer.eos_token_id
    train_ids, n_train = _token_stream(tokenizer, train_paths, eos, max_tokens)
    val_ids, n_val = _token_stream(tokenizer, val_paths, eos, None)
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


def _split_files(roots: list[Path], exts: tuple[str, ...], val_fraction: float,
                 where: str) -> tuple[list[Path], list[Path]]:
    """``(training files, held-out files)``, each in hash order; see :func:`code_blocks`."""
    entries = corpus_entries(roots, exts)
    if not entries:
        raise PocketPilotError(f"the corpus is empty: no {'/'.join(exts)} files under {where} "
                               "(tests, site-packages and __pycache__ are skipped); give a folder with source files")
    if len(entries) < 2:
        raise PocketPilotError(f"the corpus has 1 {'/'.join(exts)} file under {where}; distillation needs at least 2 "
                               "(one is held out for validation)")
    entries.sort()
    val_set = {rel for h, rel, _ in entries if h < val_fraction} or {entries[0][1]}
    return ([p for _, rel, p in entries if rel not in val_set], [p for _, rel, p in entries if rel in val_set])


def _token_stream(tokenizer, paths: list[Path], eos: int | None, cap: int | None) -> tuple[list[int], int]:
    """Token ids of ``paths`` in order, EOS after each file, cut at ``cap`` tokens; and the files read.

    Unreadable or non-UTF-8 files are skipped.
    """
    ids: list[int] = []
    n_files = 0
    for start in range(0, len(paths), _TOKENIZE_BATCH):
        texts = []
        for p in paths[start:start + _TOKENIZE_BATCH]:
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


class Blocks:
    """Map-style dataset over the training blocks ``[N, L]``: item ``i`` is ``{"idx": i, "input_ids": [L]}``."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "input_ids": self.blocks[i]}


class EpochSampler(Sampler):
    """A sampler giving a fresh seeded permutation of ``range(n)`` per epoch.

    The training loop sets ``.epoch`` itself (it has no ``set_epoch``, so accelerate leaves it
    alone); the order is a function of (seed, epoch) only, so a resumed run sees the same batches.
    """

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


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
        keys = [int(i) for i in block_ids.tolist()]
        if not all(key in self.store for key in keys):
            self.misses += len(keys)
            self._fill(teacher, keys, input_ids)
        else:
            self.hits += len(keys)
        values = torch.stack([self.store[key][0] for key in keys]).to(input_ids.device).float()
        indices = torch.stack([self.store[key][1] for key in keys]).to(input_ids.device).long()
        return values, indices

    def summary(self) -> dict:
        """Blocks cached, hits and misses (counted in blocks), for the manifest."""
        return {"blocks": len(self.store), "hits": self.hits, "misses": self.misses}

    def _fill(self, teacher, keys: list[int], input_ids) -> None:
        """Run the teacher on ``input_ids`` ``[B, L]`` and store the top-k of row ``i`` under ``keys[i]``."""
        with torch.no_grad():
            logits = teacher(input_ids=input_ids, use_cache=False).logits
            k = min(self.k, logits.shape[-1])
            values, indices = logits.float().topk(k, dim=-1)
            values = (values - values[..., :1]).to(getattr(torch, TOPK_CACHE_DTYPE)).cpu()
            indices = indices.to(torch.int32).cpu()
        for row, key in enumerate(keys):
            self.store[key] = (values[row].clone(), indices[row].clone())
