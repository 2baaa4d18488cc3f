"""The distillation loss: soft (teacher) + hard (next token), Hinton, Vinyals & Dean (2015)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.nn.functional as F

from pocketpilot.errors import PocketPilotError


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


def check_loss_args(temperature: float, alpha: float) -> None:
    """Raises PocketPilotError unless ``temperature > 0`` and ``0 <= alpha <= 1``."""
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
    check_loss_args(temperature, alpha)
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

    Raises:
        PocketPilotError: T <= 0 or alpha outside [0, 1].
    """
    check_loss_args(temperature, alpha)
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
    return [r.float() for r in rows[:2]] + [y] + rows[2:]
