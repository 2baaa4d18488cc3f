"""Group-wise 4-bit weight-only linears, served by torch's CPU int4 kernel.

A weight ``[N, K]`` is cut into groups of ``G`` input columns; each group stores 4-bit codes
``q`` in 0..15 with a float scale ``s`` and zero ``z`` (asymmetric min/max), and dequantizes as
``w = (q - 8) * s + z``: the "tinygemm" layout of gpt-fast and torchao's ``Int4WeightOnlyConfig``,
whose CPU path is torch's ``aten._weight_int4pack_mm_for_cpu``. On disk the codes are plain
nibbles (two per byte, the even column in the low nibble) with bf16 scales and zeros, so an
artifact does not depend on the kernel's packing; they are packed for the kernel once, at load.
Activations enter the kernel in bf16 (its float32 path is an unvectorized fallback: 72-129 ms
against 1.7-2.3 ms for one row of a 1536 x 8960 layer on a Zen 4 core, torch 2.13). A prefill
chunk goes through the kernel whole or in pieces of :data:`SMALL_M` rows, whichever
:func:`pocketpilot.runtime.kernels.choose` measured faster for the shape (on a Zen 4 core 128 rows
at once took 128 ms and 8 x 16 rows 89 ms; on a Zen 3 core both took about 46 ms). Whether int4
beats int8 or float32 on a given CPU is for the speed probe to measure.

Needs: ``K`` divisible by ``G`` and ``N`` divisible by 16 (the kernel's tile); see :func:`supports`.
"""

from __future__ import annotations

import torch
from torch import nn

from pocketpilot.runtime import kernels

#: rows per kernel call on the ``"int4-kernel-16"`` prefill path (decode inputs have fewer)
SMALL_M = 16
#: prefill paths timed per weight shape by :func:`kernels.choose`: all rows in one call, or 16 at a time
PREFILL_PATHS = ("int4-kernel", "int4-kernel-16")
#: activation dtype of the kernel (see the module docstring)
KERNEL_DTYPE = torch.bfloat16
#: the kernel's packing parameter (4 measured fastest of 1, 2, 4, 8 for one row)
INNER_K_TILES = 4
#: group sizes the ``int4`` method measures when it builds, largest first (fewest bytes)
GROUP_SIZES = (128, 64, 32)
#: least-squares refits of each group's scale and zero after the min/max start (see :func:`quantize_groupwise`)
REFINE_STEPS = 3


def supports(out_features: int, in_features: int, group_size: int) -> bool:
    """The int4 kernel can serve a ``[out_features, in_features]`` weight with ``group_size`` groups."""
    return out_features % 16 == 0 and in_features % group_size == 0 and in_features % 2 == 0


def quantize_groupwise(weight: torch.Tensor, group_size: int, refine: int = REFINE_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes and bf16 scales / zeros of ``weight`` ``[N, K]`` (asymmetric, per group of ``group_size`` columns).

    Starts from the group's min/max grid, then ``refine`` times fits the scale and offset to the
    chosen codes by least squares (the closed-form fit of ``w ~ s * q + lo``) and re-rounds the
    codes, as llama.cpp's k-quant search and HQQ refine theirs; each step can only lower the
    group's weight error. On Qwen2.5-Coder-1.5B's layers 3 refits lowered the output error at
    groups of 32 from 2.0e-3 to 1.1e-3 (relative MSE on random inputs). A weight already on a
    4-bit grid of the same groups (a Q4_1 GGUF teacher, groups of 32) is recovered almost exactly.

    Returns:
        ``(codes, scales_zeros)``: uint8 ``[N, K]`` in 0..15 and bf16 ``[K // G, N, 2]``
        (``[..., 0]`` scale, ``[..., 1]`` zero), rounded to bf16 before the final codes are chosen.
    """
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo = w.amin(-1, keepdim=True)
    scale = (w.amax(-1, keepdim=True) - lo).clamp(min=1e-8) / 15
    for _ in range(refine):
        q = ((w - lo) / scale).round().clamp(0, 15)
        qm, wm = q.mean(-1, keepdim=True), w.mean(-1, keepdim=True)
        var = ((q - qm) ** 2).sum(-1, keepdim=True)
        fit = ((q - qm) * (w - wm)).sum(-1, keepdim=True) / var.clamp(min=1e-12)
        ok = (var > 0) & (fit > 1e-8)
        scale, lo = torch.where(ok, fit, scale), torch.where(ok, wm - fit * qm, lo)
    scale, lo = scale.squeeze(-1), lo.squeeze(-1)
    scale = scale.to(torch.bfloat16).float()
    zero = (lo + 8 * scale).to(torch.bfloat16).float()
    codes = ((w - zero.unsqueeze(-1)) / scale.unsqueeze(-1) + 8).round().clamp(0, 15).to(torch.uint8)
    scales_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return codes.reshape(n, k), scales_zeros


def dequantize_groupwise(codes: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """Float32 ``[N, K]`` weight from :func:`quantize_groupwise`'s codes and scales / zeros."""
    n, k = codes.shape
    groups = scales_zeros.shape[0]
    sz = scales_zeros.float().transpose(0, 1)  # [N, K // G, 2]
    q = codes.float().reshape(n, groups, k // groups) - 8
    return (q * sz[..., :1] + sz[..., 1:]).reshape(n, k)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K // 2]``: two 4-bit codes a byte, even column in the low nibble."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K]`` codes from :func:`pack_nibbles`."""
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


def fake_quant(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``weight`` quantized and dequantized (float32): what an :class:`Int4Linear` computes with."""
    return dequantize_groupwise(*quantize_groupwise(weight, group_size))


class Int4Linear(nn.Module):
    """``y = (x / input_scale) @ W4^T + bias`` with group-wise 4-bit ``W4`` (see the module docstring).

    Buffers (saved): ``weight_nibbles`` uint8 ``[out, in // 2]``, ``scales_zeros`` bf16
    ``[in // G, out, 2]``, optional ``input_scale`` ``[in]`` (activation-aware scaling, AWQ). The
    kernel's packed copy is made on first use or by :meth:`prepare`. Input ``[..., in]`` float,
    output ``[..., out]`` in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = False, device=None):
        super().__init__()
        if not supports(out_features, in_features, group_size):
            raise ValueError(f"int4 needs out % 16 == 0 and in % {group_size} == 0, got [{out_features}, {in_features}]")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_nibbles", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                           device=device))
        self.register_buffer("scales_zeros", torch.empty(in_features // group_size, out_features, 2,
                                                         dtype=torch.bfloat16, device=device))
        self.register_buffer("input_scale", None)
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)
        self._packed: torch.Tensor | None = None
        self._sz: torch.Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the AWQ input scale is optional: make room for it when the saved module has one
        if self.input_scale is None and prefix + "input_scale" in state_dict:
            self.input_scale = torch.empty(self.in_features, device=self.weight_nibbles.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, input_scale: torch.Tensor | None = None) -> "Int4Linear":
        """Quantize ``linear`` (its weight times ``input_scale`` per input column, when given)."""
        mod = cls(linear.in_features, linear.out_features, group_size, bias=linear.bias is not None)
        w = linear.weight.detach().float()
        if input_scale is not None:
            w = w * input_scale
            mod.input_scale = input_scale.float().clone()
        codes, mod.scales_zeros = quantize_groupwise(w, group_size)
        mod.weight_nibbles = pack_nibbles(codes)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        return mod

    def prepare(self, drop_nibbles: bool = False) -> None:
        """Pack the weight for the CPU kernel (once); ``drop_nibbles`` frees the on-disk copy (serving)."""
        if self._packed is None:
            codes = unpack_nibbles(self.weight_nibbles).to(torch.int32)
            self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INNER_K_TILES)
            self._sz = self.scales_zeros.to(KERNEL_DTYPE).contiguous()
        if drop_nibbles:
            self.weight_nibbles = torch.empty(0, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.prepare()
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).float()
        if self.input_scale is not None:
            x2 = x2 / self.input_scale
        xb = x2.to(KERNEL_DTYPE).contiguous()
        step = SMALL_M if xb.shape[0] <= SMALL_M or self.prefill_path() == "int4-kernel-16" else xb.shape[0]
        y = self._kernel(xb, step).float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def _kernel(self, xb: torch.Tensor, step: int) -> torch.Tensor:
        """bf16 ``xb`` ``[M, in]`` through the int4 kernel, ``step`` rows a call -> bf16 ``[M, out]``."""
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        if xb.shape[0] <= step:
            return mm(xb, self._packed, self.group_size, self._sz)
        return torch.cat([mm(xb[i:i + step], self._packed, self.group_size, self._sz)
                          for i in range(0, xb.shape[0], step)])

    def prefill_path(self) -> str:
        """One of :data:`PREFILL_PATHS`, measured once per shape and thread count (see :mod:`kernels`)."""
        path = getattr(self, "_prefill", None)
        if path is None or path[1] != torch.get_num_threads():
            xb = torch.randn(kernels.PROBE_ROWS, self.in_features).to(KERNEL_DTYPE)
            steps = {"int4-kernel": kernels.PROBE_ROWS, "int4-kernel-16": SMALL_M}
            name = kernels.choose(f"int4-g{self.group_size}", (self.out_features, self.in_features),
                                  {p: (lambda s=steps[p]: self._kernel(xb, s)) for p in PREFILL_PATHS})
            path = self._prefill = (name, torch.get_num_threads())
        return path[0]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group_size}, awq={self.input_scale is not None}"
