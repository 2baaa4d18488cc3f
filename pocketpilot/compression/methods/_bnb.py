"""bitsandbytes through transformers, shared by the ``bnb-int8`` and ``bnb-nf4`` methods.

bitsandbytes is an optional dependency (``pip install bitsandbytes``); everything here imports
it, torch and transformers lazily so the registry stays importable without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pocketpilot.compression.methods import QuantMethod

#: the optional package both methods need, as ``(module, pip requirement)``
BNB = (("bitsandbytes", "bitsandbytes>=0.48"),)


def bnb_quantize(model, out: Path, quant_config, dtype) -> dict:
    """Quantize with bitsandbytes through transformers: save the float model, reload it with
    ``quant_config`` (transformers swaps in bnb layers while loading), save the quantized weights.

    The float copy lives in ``out/.float`` and is removed; ``out`` is an atomic build folder.
    Returns ``{"quantized_modules": {bnb class: count}, "bitsandbytes": version, "quantization_config"}``.
    """
    import bitsandbytes  # lazy: optional dependency
    import torch  # lazy: torch
    from transformers import AutoModelForCausalLM  # lazy: transformers

    float_dir = out / ".float"
    model.save_pretrained(float_dir, safe_serialization=True)
    try:
        qmodel = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=quant_config, dtype=dtype,
                                                      device_map="cuda" if torch.cuda.is_available() else "cpu",
                                                      local_files_only=True, trust_remote_code=False)
        qmodel.save_pretrained(out, safe_serialization=True)
    finally:
        shutil.rmtree(float_dir, ignore_errors=True)
    kinds: dict[str, int] = {}
    for mod in qmodel.modules():
        if type(mod).__module__.startswith("bitsandbytes"):
            kinds[type(mod).__name__] = kinds.get(type(mod).__name__, 0) + 1
    return {"quantized_modules": kinds, "bitsandbytes": bitsandbytes.__version__,
            "quantization_config": quant_config.to_dict()}


def bnb_linear(lin, four_bit: bool):
    """A bitsandbytes copy of ``nn.Linear`` ``lin`` on CPU (NF4 if ``four_bit``, else LLM.int8()),
    or ``None`` if bitsandbytes cannot run it here."""
    try:
        import bitsandbytes as bnb  # lazy: optional dependency
        import torch  # lazy: torch

        if not four_bit:
            layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                        has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
        if lin.bias is not None:
            layer.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
        return layer.to("cpu")
    except Exception:  # noqa: BLE001 - a backend that cannot run here is simply not timed
        return None


def bnb_in_memory(model, four_bit: bool):
    """``model``'s decoder-layer linears replaced by bitsandbytes layers in place (speed probe), or ``None``."""
    import torch  # lazy: torch
    from torch import nn  # lazy: torch

    from pocketpilot.runtime.qlinear import get_submodule_parent  # lazy: torch

    for path, mod in list(model.model.layers.named_modules()):
        if isinstance(mod, nn.Linear):
            new = bnb_linear(mod, four_bit)
            if new is None:
                return None
            parent, name = get_submodule_parent(model.model.layers, path)
            setattr(parent, name, new)
    return model.to(torch.bfloat16) if four_bit else model


def bnb_probe_linear(lin, four_bit: bool):
    """``(bnb copy of lin, one-row input)`` for the bandwidth probe, or ``None`` where bnb cannot run."""
    import torch  # lazy: torch

    layer = bnb_linear(lin, four_bit)
    if layer is None:
        return None
    x = torch.randn(1, lin.in_features)
    return layer, x.to(torch.bfloat16) if four_bit else x


def bnb_method(four_bit: bool, **facts) -> QuantMethod:
    """A :class:`QuantMethod` served by bitsandbytes layers (NF4 if ``four_bit``, else LLM.int8()):
    ``facts`` are the method's own fields; the probe hooks and the optional dependency are filled in."""
    return QuantMethod(in_memory=lambda model: bnb_in_memory(model, four_bit=four_bit),
                       probe_linear=lambda lin: bnb_probe_linear(lin, four_bit=four_bit), requires=BNB, **facts)
