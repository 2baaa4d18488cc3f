"""Structured pruning of a decoder-only causal LM: which layers to keep, and FFN width.

Two importance scores, both measured on calibration token ids (no labels, no gradients):

* **Layer importance: Block Influence** (Men et al. 2024, "ShortGPT: Layers in Large Language
  Models are More Redundant Than You Expect")::

      BI_i = 1 - mean over tokens of cos(x_i, x_{i+1})

  where ``x_i`` is the hidden state entering decoder layer ``i`` and ``x_{i+1}`` the one leaving
  it. A layer that barely turns the residual stream (BI near 0) is the cheapest to drop.
  :func:`pick_layers` with ``how="influence"`` keeps the first and last layer and the
  ``n - 2`` middle layers of highest BI; ``how="even"`` keeps evenly spaced layers
  (:func:`pocketpilot.compression.distill.student_layer_map`).

* **FFN channel importance** (structured, per intermediate channel ``c`` of a gated MLP
  ``down(act(gate(x)) * up(x))``)::

      score_c = mean over tokens of |act(gate_c(x)) * up_c(x)| * ||W_down[:, c]||_2

  the expected magnitude of the channel's contribution to the MLP output: the structured form
  of Wanda's |activation| x |weight| score (Sun et al. 2023, "A Simple and Effective Pruning
  Approach for Large Language Models"), as FLAP and LLM-Pruner score whole channels.
  :func:`prune_ffn` keeps the highest-scoring channels of every layer (the same count in every
  layer, so the result is a standard ``transformers`` config and loads with
  ``from_pretrained``), in their original order.
"""

from __future__ import annotations

import torch
from torch import nn

from pocketpilot.compression.distill import decoder_layers_path, student_layer_map
from pocketpilot.errors import PocketPilotError

#: FFN widths are kept at a multiple of this many channels (SIMD/GEMM friendly).
FFN_MULTIPLE = 32


def decoder_layers(model) -> nn.ModuleList:
    """The model's list of decoder layers (``model.model.layers`` for Llama / Qwen2).

    Raises:
        PocketPilotError: no such list.
    """
    return model.get_submodule(decoder_layers_path(model))


def _mlps(model) -> list[nn.Module]:
    mlps = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            raise PocketPilotError(f"layer {i} of {type(model).__name__} has no gated MLP (gate_proj/up_proj/down_proj); "
                                   "FFN pruning supports Llama- and Qwen2-style models")
        mlps.append(mlp)
    return mlps


def _run_calibration(model, calibration: list[torch.Tensor], hooks: list) -> int:
    """Run the calibration batches through ``model`` with ``hooks`` installed, then remove them; tokens seen."""
    count = 0
    try:
        for ids in calibration:
            model(input_ids=ids, use_cache=False)
            count += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return count


@torch.inference_mode()
def block_influence(model, calibration: list[torch.Tensor]) -> list[float]:
    """Block Influence of every decoder layer (ShortGPT; see the module docstring).

    Args:
        model: a float causal LM.
        calibration: token-id tensors ``[1, T]``.

    Returns:
        ``BI_i`` per layer, in layer order (0..2; larger = more important).

    Raises:
        PocketPilotError: no calibration data.
    """
    if not calibration:
        raise PocketPilotError("block influence needs calibration text; none was found")
    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    hooks = []

    def hook(i):
        def fn(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            sums[i] += float(nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum())
        return fn

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(hook(i), with_kwargs=True))
    count = _run_calibration(model, calibration, hooks)
    return [round(1.0 - s / count, 6) for s in sums]


def pick_layers(n_teacher: int, n_keep: int, how: str = "even", influence: list[float] | None = None) -> list[int]:
    """Teacher layer indices a student keeps, in order.

    Args:
        n_teacher: teacher depth.
        n_keep: student depth (2 .. ``n_teacher``).
        how: ``"even"`` (evenly spaced, first and last kept) or ``"influence"`` (first and last
            kept, then the middle layers of highest Block Influence).
        influence: per-layer BI (:func:`block_influence`); required for ``"influence"``.

    Raises:
        PocketPilotError: bad depth, unknown ``how``, or missing influence scores.
    """
    if how == "even":
        return student_layer_map(n_teacher, n_keep)
    if how != "influence":
        raise PocketPilotError(f"unknown layer choice {how!r}; use 'even' or 'influence'")
    if influence is None or len(influence) != n_teacher:
        raise PocketPilotError("layer choice 'influence' needs one Block Influence score per teacher layer")
    student_layer_map(n_teacher, n_keep)  # validates n_keep
    middle = sorted(range(1, n_teacher - 1), key=lambda i: (-influence[i], i))[: n_keep - 2]
    return sorted([0, n_teacher - 1, *middle])


@torch.inference_mode()
def ffn_channel_importance(model, calibration: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-channel importance of every layer's FFN (see the module docstring).

    Returns:
        One float32 tensor ``[intermediate_size]`` per decoder layer (larger = more important).

    Raises:
        PocketPilotError: no calibration data, or a model without gated MLPs.
    """
    if not calibration:
        raise PocketPilotError("FFN pruning needs calibration text; none was found")
    mlps = _mlps(model)
    acc = [torch.zeros(m.down_proj.in_features) for m in mlps]
    hooks = []

    def hook(i):
        def fn(mod, args):
            acc[i] += args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).sum(0)
        return fn

    for i, m in enumerate(mlps):
        hooks.append(m.down_proj.register_forward_pre_hook(hook(i)))
    count = _run_calibration(model, calibration, hooks)
    return [a / count * m.down_proj.weight.detach().float().norm(dim=0) for a, m in zip(acc, mlps)]


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.detach().index_select(dim, idx).clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device)
    new.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        bias = lin.bias.detach()
        new.bias = nn.Parameter((bias.index_select(0, idx) if dim == 0 else bias).clone(),
                                requires_grad=lin.bias.requires_grad)
    return new


def prune_ffn(model, width: int, importance: list[torch.Tensor]) -> dict:
    """Keep the ``width`` most important intermediate channels of every FFN, in place.

    ``gate_proj`` and ``up_proj`` lose output rows, ``down_proj`` input columns; the hidden size
    and so every layer's input and output shape are unchanged. ``config.intermediate_size``
    becomes ``width``.

    Args:
        model: float causal LM with gated MLPs (Llama, Qwen2).
        width: channels kept per layer, ``FFN_MULTIPLE`` .. current width, a multiple of
            :data:`FFN_MULTIPLE` unless it is the current width.
        importance: from :func:`ffn_channel_importance` on this model.

    Returns:
        ``{"width", "was", "params_removed"}`` (counts).

    Raises:
        PocketPilotError: a bad width, or importance scores that do not match the model.
    """
    mlps = _mlps(model)
    was = mlps[0].down_proj.in_features
    if not (FFN_MULTIPLE <= width <= was) or (width != was and width % FFN_MULTIPLE):
        raise PocketPilotError(f"FFN width must be a multiple of {FFN_MULTIPLE} between {FFN_MULTIPLE} and {was}; got {width}")
    if len(importance) != len(mlps) or any(s.numel() != m.down_proj.in_features for s, m in zip(importance, mlps)):
        raise PocketPilotError("FFN importance scores do not match the model's layers; recompute them on this model")
    before = sum(p.numel() for p in model.parameters())
    for mlp, score in zip(mlps, importance):
        idx = torch.sort(torch.topk(score, width).indices).values
        mlp.gate_proj = _slice_linear(mlp.gate_proj, idx, 0)
        mlp.up_proj = _slice_linear(mlp.up_proj, idx, 0)
        mlp.down_proj = _slice_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    model.config.intermediate_size = width
    return {"width": width, "was": was, "params_removed": before - sum(p.numel() for p in model.parameters())}
