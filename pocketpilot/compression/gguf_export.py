"""Write a Llama / Qwen2 ``transformers`` model as a float32 GGUF file, with the ``gguf`` package.

Used to give llama.cpp what it has no file for: the speed probe's random mini models of each
teacher's shape, and students (distilled or pruned; they keep the teacher's standard config).
Tensor names come from ``gguf``'s own name map; Llama's query and key rows are reordered for
llama.cpp's RoPE layout (pairs of adjacent dimensions rotate together there, the two halves of
each head in ``transformers``), which Qwen2's layout does not need. The tokenizer is either
copied from a GGUF of the same vocabulary (the teacher's) or, for random probe models, a
placeholder byte vocabulary. llama.cpp's quantizer then makes Q8_0 / Q4_K_M from the float file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketpilot.errors import ArtifactError

#: ``transformers`` model types this exporter writes, and the GGUF architecture of each
ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}


def _permute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection ``[heads * head_dim, ...]`` from half-split to interleaved RoPE pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg: Any) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)


def export_gguf(model: torch.nn.Module, out: Path, tokenizer_gguf: Path | None = None) -> None:
    """Write ``model`` (float weights) as a float32 GGUF at ``out``.

    Args:
        model: a ``transformers`` ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` with float weights.
        out: the GGUF file to write.
        tokenizer_gguf: a GGUF whose ``tokenizer.*`` fields are copied (same vocabulary);
            ``None`` writes a placeholder vocabulary of byte tokens (enough to run token ids).

    Raises:
        ArtifactError: the architecture is not one of :data:`ARCHS`, or a weight has no GGUF name.
    """
    import gguf  # lazy: only exports need it

    cfg = model.config
    arch_name = ARCHS.get(getattr(cfg, "model_type", ""))
    if arch_name is None:
        raise ArtifactError(f"cannot export model type {cfg.model_type!r} to GGUF; supported: {', '.join(ARCHS)}")
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(w, tokenizer_gguf, cfg.vocab_size)
    state = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    for key, tensor in state.items():
        if key == "lm_head.weight" and tied:
            continue
        base, _, suffix = key.rpartition(".")
        name = names.get_name(base)
        if name is None:
            raise ArtifactError(f"no GGUF name for weight {key!r}")
        data = tensor.detach().float().cpu().numpy()
        if arch_name == "LLAMA" and base.endswith(("q_proj", "k_proj")):
            data = _permute_rope(data, heads if base.endswith("q_proj") else kv_heads)
        w.add_tensor(f"{name}.{suffix}", np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_tokenizer(w: Any, source: Path | None, vocab_size: int) -> None:
    import gguf  # lazy

    if source is None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list([f"<{i}>" for i in range(vocab_size)])
        w.add_token_types([int(gguf.TokenType.NORMAL)] * vocab_size)
        w.add_token_merges(["a b"])  # llama.cpp refuses a BPE vocabulary without merges
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        return
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            w.add_array(key, values)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(key, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)
