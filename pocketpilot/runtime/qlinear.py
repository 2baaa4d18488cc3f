"""Weight-only int8 modules: int8 weights with one scale per output channel.

Weights are stored as ``int8`` with a per-output-channel (per-row) symmetric scale,
``w[n, k] ~= q[n, k] * scale[n]`` with ``q`` in ``[-127, 127]`` (absmax / 127; the
post-training, weight-only, per-channel recipe that the quantization study of
Wei et al., FSE'23 found to keep accuracy; activations stay in floating point,
which is what keeps edit similarity where dynamic int8 activations lose it).

The activations around the matmuls (residual stream, norms, attention, logits) stay in the
model's dtype, normally float32: a bf16 residual stream flips greedy choices. The matmul picks a
kernel by the number of rows ``M`` in the input: decode (``M <= SMALL_M``) uses
``torch._weight_int8pack_mm`` on bf16 activations, which reads the int8 weights directly (about
12x faster than a dense bf16 matmul for one token); prefill takes whichever of
:data:`PREFILL_PATHS` :func:`pocketpilot.runtime.kernels.choose` measured fastest for the
weight's shape on this machine (the int8 kernel on all rows, float32, or bf16 dequantization:
on an AVX2-only CPU bf16 GEMM is several times slower than float32, on an AVX-512 BF16 CPU it wins).

An LM head (``rescore_topk > 0``) recomputes its top-k logits exactly in float32 from the
int8 weights, so bf16 rounding of the logits cannot change the greedy choice.

Each module also carries a per-input-channel ``input_scale`` ``s`` (activation-aware
scaling, after AWQ: Lin et al., "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration", MLSys 2024): the stored weight is ``Q(W * s)`` and the input
is divided by ``s``, so input channels with large activations get finer weight steps.
``s = 1`` when no calibration was done.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pocketpilot.runtime import kernels

#: Largest number of input rows served by the int8 kernel; larger inputs dequantize.
SMALL_M = 16
#: activation dtype of the int8 kernel (its float32 path is several times slower on CPU).
MATMUL_DTYPE = torch.bfloat16
#: prefill paths for ``M > SMALL_M`` rows, timed per weight shape by :func:`kernels.choose`
PREFILL_PATHS = ("int8-kernel", "float32", "bfloat16")
#: the float32 path dequantizes into a scratch buffer; larger weights (a vocabulary-sized head) skip it
FLOAT32_SCRATCH_MAX_BYTES = 256 * 2**20
#: ``torch._weight_int8pack_mm`` reads weights with aligned vector loads for more than one input
#: row and crashes (SIGSEGV, torch 2.13 CPU) on weights that are not 64-byte aligned, as tensors
#: loaded from safetensors can be; such weights take the dequantizing path (and the loader realigns).
WEIGHT_ALIGNMENT = 64


def is_aligned(t: torch.Tensor) -> bool:
    """True when ``t``'s data starts on a :data:`WEIGHT_ALIGNMENT`-byte boundary."""
    return t.data_ptr() % WEIGHT_ALIGNMENT == 0


def align_int8_buffers(model: nn.Module) -> int:
    """Copy misaligned int8 weights of ``model`` into fresh (aligned) storage; return how many moved."""
    moved = 0
    for mod in model.modules():
        if isinstance(mod, (Int8Linear, Int8Embedding)) and not is_aligned(mod.weight_int8):
            mod.weight_int8 = mod.weight_int8.clone()
            moved += 1
    return moved


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization.

    Args:
        weight: float tensor ``[N, K]`` (out features x in features, or vocab x hidden).

    Returns:
        ``(q, scale)``: ``q`` int8 ``[N, K]`` in ``[-127, 127]`` and ``scale`` float32 ``[N]``
        with ``weight ~= q * scale[:, None]``; an all-zero row gets scale ``1e-8``.
    """
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`quantize_per_channel`: ``[N, K]`` int8 and ``[N]`` scales -> ``[N, K]`` ``dtype``."""
    return q.to(dtype) * scale.to(dtype)[:, None]


def _register_int8_buffers(mod: nn.Module, rows: int, cols: int, device) -> None:
    """Empty ``weight_int8`` ``[rows, cols]``, ``weight_scale`` ``[rows]`` and ``input_scale`` ``[cols]`` buffers."""
    mod.register_buffer("weight_int8", torch.empty(rows, cols, dtype=torch.int8, device=device))
    mod.register_buffer("weight_scale", torch.ones(rows, dtype=torch.float32, device=device))
    mod.register_buffer("input_scale", torch.ones(cols, dtype=torch.float32, device=device))


def _set_int8_weight(mod: nn.Module, weight: torch.Tensor, input_scale: torch.Tensor | None) -> None:
    """Store ``Q(weight * input_scale)`` (per-row int8) and the scales in ``mod``'s buffers."""
    w = weight.detach().float()
    if input_scale is not None:
        mod.input_scale = input_scale.detach().float().clone()
        w = w * mod.input_scale
    mod.weight_int8, mod.weight_scale = quantize_per_channel(w)


class Int8Linear(nn.Module):
    """``nn.Linear`` replacement with int8 weights ``[out, in]`` and float32 scales ``[out]``.

    Input ``[..., in]`` in any float dtype; output ``[..., out]`` in the input's dtype; the
    matmul itself runs in :data:`MATMUL_DTYPE`. Buffers: ``weight_int8`` (int8),
    ``weight_scale`` (float32), optional ``bias``. With ``rescore_topk = k > 0`` (LM heads),
    the ``k`` largest outputs of each row are recomputed exactly in float32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None,
                 rescore_topk: int = 0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rescore_topk = rescore_topk
        _register_int8_buffers(self, out_features, in_features, device)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device))
        else:
            self.bias = None
        self._scale_cache: dict[torch.dtype, torch.Tensor] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_scale: torch.Tensor | None = None) -> "Int8Linear":
        """Quantize a float ``nn.Linear`` (per output channel), optionally with input scales ``[in]``."""
        mod = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        _set_int8_weight(mod, linear.weight, input_scale)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().to(torch.float32).clone()
        return mod

    def _scale(self, dtype: torch.dtype) -> torch.Tensor:
        cached = self._scale_cache.get(dtype)
        if cached is None or cached.device != self.weight_scale.device:
            cached = self.weight_scale.to(dtype)
            self._scale_cache[dtype] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.input_scale is not None:  # None once folded into the preceding norm (runtime.fuse)
            x2 = x2 / self.input_scale.to(x.dtype)
        on_cpu = x2.device.type == "cpu"
        if x2.shape[0] <= SMALL_M and on_cpu and is_aligned(self.weight_int8):
            y = self._matmul("int8-kernel", x2)
        else:
            y = self._matmul(self.prefill_path() if on_cpu else "bfloat16", x2)
        y = y.to(x2.dtype)
        if self.rescore_topk and x2.dtype == torch.float32 and x2.shape[0] <= SMALL_M:
            y = self._rescore(x2, y)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _matmul(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[M, in]`` times the dequantized weight, through one of :data:`PREFILL_PATHS` -> ``[M, out]``."""
        if path == "int8-kernel":
            return torch._weight_int8pack_mm(x.to(MATMUL_DTYPE).contiguous(), self.weight_int8, self._scale(MATMUL_DTYPE))
        if path == "float32":
            w = kernels.scratch(self.weight_int8.numel()).view(self.weight_int8.shape)
            w.copy_(self.weight_int8)  # int8 -> float32 into a reused buffer; the scale goes on the output
            return F.linear(x.float(), w) * self._scale(torch.float32)
        xm = x.to(MATMUL_DTYPE)
        return F.linear(xm, dequantize_per_channel(self.weight_int8, self.weight_scale, MATMUL_DTYPE))

    def prefill_paths(self) -> tuple[str, ...]:
        """The :data:`PREFILL_PATHS` this weight can take on CPU (the int8 kernel needs aligned weights)."""
        paths = [p for p in PREFILL_PATHS if p != "int8-kernel" or is_aligned(self.weight_int8)]
        if self.weight_int8.numel() * 4 > FLOAT32_SCRATCH_MAX_BYTES:
            paths.remove("float32")
        return tuple(paths)

    def prefill_path(self) -> str:
        """The prefill path for this weight, measured once per shape and thread count (see :mod:`kernels`)."""
        path = getattr(self, "_prefill", None)
        if path is None or path[1] != torch.get_num_threads():
            x = torch.randn(kernels.PROBE_ROWS, self.in_features)
            name = kernels.choose("int8", tuple(self.weight_int8.shape),
                                  {p: (lambda p=p: self._matmul(p, x)) for p in self.prefill_paths()})
            path = self._prefill = (name, torch.get_num_threads())
        return path[0]

    def _rescore(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Replace the top-k entries of ``y`` ``[M, out]`` with exact float32 ``x @ W[idx].T``."""
        idx = y.topk(min(self.rescore_topk, self.out_features), dim=-1).indices  # [M, k]
        w = self.weight_int8[idx].to(torch.float32) * self.weight_scale[idx].unsqueeze(-1)  # [M, k, in]
        exact = torch.einsum("mi,mki->mk", x, w)
        return y.scatter(-1, idx, exact)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int8Embedding(nn.Module):
    """``nn.Embedding`` replacement with int8 rows ``[vocab, hidden]`` and float32 scales ``[vocab]``.

    Input: token ids ``[...]``; output ``[..., hidden]`` in ``dtype``. When the LM head is
    tied to the embedding, :meth:`as_linear` gives an :class:`Int8Linear` sharing the buffers.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.dtype = dtype
        _register_int8_buffers(self, num_embeddings, embedding_dim, device)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, dtype: torch.dtype, input_scale: torch.Tensor | None = None) -> "Int8Embedding":
        """Quantize a float ``nn.Embedding`` (per row); ``input_scale`` ``[hidden]`` as for a tied LM head."""
        mod = cls(emb.num_embeddings, emb.embedding_dim, dtype=dtype)
        _set_int8_weight(mod, emb.weight, input_scale)
        return mod

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[ids].to(self.dtype)
        return rows * self.weight_scale[ids].to(self.dtype).unsqueeze(-1) / self.input_scale.to(self.dtype)

    def as_linear(self, rescore_topk: int = 0) -> Int8Linear:
        """An LM head ``[hidden] -> [vocab]`` that shares this embedding's int8 buffers."""
        head = Int8Linear(self.embedding_dim, self.num_embeddings, bias=False, device="meta", rescore_topk=rescore_topk)
        head.weight_int8 = self.weight_int8
        head.weight_scale = self.weight_scale
        head.input_scale = self.input_scale
        return head


def int8_fake_quant(w: torch.Tensor) -> torch.Tensor:
    """``w`` ``[out, in]`` quantized per row to int8 and back (float32)."""
    return dequantize_per_channel(*quantize_per_channel(w), torch.float32)


def choose_input_scale(weight: torch.Tensor, inputs: torch.Tensor, grid=(0.0, 0.25, 0.5, 0.75),
                       fake_quant=int8_fake_quant) -> tuple[torch.Tensor | None, float]:
    """Pick the activation-aware input scale ``s = mean|x|**alpha`` that minimises the output error.

    Args:
        weight: ``[out, in]`` float weight.
        inputs: calibration inputs ``[n, in]`` (float32).
        grid: exponents tried; ``alpha = 0`` means no scaling.
        fake_quant: ``Q``: a weight quantized and dequantized (default per-row int8).

    Returns:
        ``(s, alpha)``: ``s`` float32 ``[in]`` (normalised so that ``max * min = 1``), or ``None``
        when ``alpha = 0`` wins. The error is ``mean((x W^T - (x/s) Q(W s)^T)^2)`` over ``inputs``.
    """
    w = weight.detach().float()
    x = inputs.float()
    ref = x @ w.T
    mag = x.abs().mean(0).clamp(min=1e-5)
    best: tuple[float, torch.Tensor | None, float] | None = None
    for alpha in grid:
        s = None
        wq = fake_quant(w)
        if alpha:
            s = mag**alpha
            s = s / (s.max() * s.min()).sqrt()
            wq = fake_quant(w * s) / s
        err = ((x @ wq.T - ref) ** 2).mean().item()
        if best is None or err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]


def get_submodule_parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """Return ``(parent, attribute)`` for a dotted module path such as ``model.layers.0.mlp.up_proj``."""
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name
