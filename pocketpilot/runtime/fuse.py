"""Fewer, larger matmuls per decoder layer, and no activation-aware scale pass where the algebra allows.

At load time, in each decoder layer of a quantized Llama/Qwen2-style model:

- **folding**: the AWQ input scale ``s`` shared by the projections that read one RMSNorm's output
  (``q/k/v`` after ``input_layernorm``, ``gate/up`` after ``post_attention_layernorm``) is folded
  into that norm's weight (``norm.weight / s``: exact, the norm's output is only read by them),
  and ``down_proj``'s scale into ``up_proj``'s per-row int8 scales (``down`` reads
  ``act(gate) * up`` channel by channel, so dividing ``up``'s output row ``j`` by ``s[j]`` is
  the same product); the projections then skip their ``x / s`` pass;
- **fusion**: ``q/k/v`` become one int8 (or int4) matmul and ``gate/up`` another
  (:class:`FusedLinear`); the former modules become :class:`FusedSlice` views of its output, so
  the model's own forward code runs unchanged.

Per decode step that is 4 matmul kernels a layer instead of 7, with the bf16 casts around them.
Groups whose members differ (type, input scale, an LM head's rescoring) are left as they are,
so artifacts calibrated with separate scales per projection still load, unfused.
"""

from __future__ import annotations

import torch
from torch import nn

from pocketpilot.runtime.int4 import Int4Linear
from pocketpilot.runtime.qlinear import Int8Linear

#: sibling projections that read the same input, and the norm (a sibling of their parent) that makes it
FUSE_GROUPS = ((("q_proj", "k_proj", "v_proj"), "self_attn", "input_layernorm"),
               (("gate_proj", "up_proj"), "mlp", "post_attention_layernorm"))


def shared_input_groups(model: nn.Module) -> list[list[str]]:
    """Module paths of each group of :data:`FUSE_GROUPS` present in ``model`` (e.g. one layer's q, k, v)."""
    out = []
    for path, mod in model.named_modules():
        for names, parent, _norm in FUSE_GROUPS:
            if path.rsplit(".", 1)[-1] == parent and all(isinstance(getattr(mod, n, None), nn.Module) for n in names):
                out.append([f"{path}.{n}" for n in names])
    return out


class FusedLinear(nn.Module):
    """Several projections of one input as one quantized matmul; :class:`FusedSlice` modules read its output.

    The output of the last input seen is kept until a different input tensor arrives, so the
    slices of one input cost one matmul.
    """

    def __init__(self, inner: nn.Module, sizes: list[int]) -> None:
        super().__init__()
        self.inner = inner
        self.sizes = sizes
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """``inner(x)`` ``[..., sum(sizes)]``, computed once per input tensor."""
        if x is not self._x:
            self._x, self._y = x, self.inner(x)
        return self._y

    def release(self) -> None:
        """Drop the kept input and output (after the last slice has read them)."""
        self._x = self._y = None


class FusedSlice(nn.Module):
    """Output columns ``[start, end)`` of a :class:`FusedLinear`: what one former projection computed."""

    def __init__(self, fused: FusedLinear, start: int, end: int, last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a child module: the layer holds it once
        self.start, self.end, self.last = start, end, last
        self.in_features, self.out_features = fused.inner.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fused.output(x)[..., self.start:self.end]
        if self.last:
            self.fused.release()
        return y


def _same_scale(mods: list[nn.Module]) -> bool:
    scales = [m.input_scale for m in mods]
    if any(s is None for s in scales):
        return all(s is None for s in scales)
    return all(torch.equal(scales[0], s) for s in scales[1:])


def _fold_into_norm(norm: nn.Module, mods: list[nn.Module]) -> bool:
    """Divide ``norm.weight`` by the members' shared input scale and drop the scale; False if not possible."""
    s = mods[0].input_scale
    if s is None:
        return True
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != s.shape or getattr(norm, "bias", None) is not None:
        return False
    norm.weight.data = (weight.data.float() / s).to(weight.dtype)
    for m in mods:
        m.input_scale = None
    return True


def _fold_down_into_up(mlp: nn.Module) -> None:
    """``down_proj``'s input scale into ``up_proj``'s per-row int8 scales (int8 only: exact in float32)."""
    up, down = getattr(mlp, "up_proj", None), getattr(mlp, "down_proj", None)
    if not (isinstance(up, Int8Linear) and isinstance(down, (Int8Linear, Int4Linear))) or down.input_scale is None:
        return
    if up.bias is not None or up.out_features != down.in_features:
        return
    up.weight_scale = up.weight_scale / down.input_scale
    up._scale_cache.clear()
    down.input_scale = None


def _concat(mods: list[nn.Module]) -> nn.Module:
    """One module computing all of ``mods`` (same type, input and input scale) side by side."""
    first = mods[0]
    bias = None if all(m.bias is None for m in mods) else torch.cat(
        [m.bias.float() if m.bias is not None else torch.zeros(m.out_features) for m in mods])
    n = sum(m.out_features for m in mods)
    if isinstance(first, Int8Linear):
        new = Int8Linear(first.in_features, n, bias=bias is not None)
        new.weight_int8 = torch.cat([m.weight_int8 for m in mods])
        new.weight_scale = torch.cat([m.weight_scale for m in mods])
    else:
        new = Int4Linear(first.in_features, n, first.group_size, bias=bias is not None)
        new.weight_nibbles = torch.cat([m.weight_nibbles for m in mods])
        new.scales_zeros = torch.cat([m.scales_zeros for m in mods], dim=1)
    new.input_scale = None if first.input_scale is None else first.input_scale.clone()
    if bias is not None:
        new.bias = bias
    return new


def _fusable(mods: list[nn.Module]) -> bool:
    kinds = {type(m) for m in mods}
    if kinds not in ({Int8Linear}, {Int4Linear}):
        return False
    if any(getattr(m, "rescore_topk", 0) for m in mods) or len({m.in_features for m in mods}) != 1:
        return False
    if kinds == {Int4Linear} and (len({m.group_size for m in mods}) != 1 or any(m._packed is not None for m in mods)):
        return False  # int4 fuses before packing, from the on-disk nibbles
    return _same_scale(mods)


def fuse_projections(model: nn.Module) -> dict[str, int]:
    """Fold input scales and fuse projections in place (see the module docstring).

    Call after the weights are loaded and before int4 modules are packed.

    Returns:
        ``{"fused": groups fused, "folded": input scales folded away}``.
    """
    fused = folded = 0
    for layer in _decoder_layers(model):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            had = getattr(getattr(mlp, "down_proj", None), "input_scale", None) is not None
            _fold_down_into_up(mlp)
            folded += had and mlp.down_proj.input_scale is None
        for names, parent_name, norm_name in FUSE_GROUPS:
            parent, norm = getattr(layer, parent_name, None), getattr(layer, norm_name, None)
            mods = [getattr(parent, n, None) for n in names] if parent is not None else []
            if not mods or any(m is None for m in mods) or not _fusable(mods):
                continue
            had = mods[0].input_scale is not None
            if norm is not None and _fold_into_norm(norm, mods):
                folded += had
            group = FusedLinear(_concat(mods), [m.out_features for m in mods])
            start = 0
            for i, (name, m) in enumerate(zip(names, mods)):
                setattr(parent, name, FusedSlice(group, start, start + m.out_features, last=i == len(mods) - 1))
                start += m.out_features
            parent.add_module(f"fused_{'_'.join(n.split('_')[0] for n in names)}", group)
            fused += 1
    return {"fused": fused, "folded": folded}


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []
