"""GrowingLayer behaves like transformers' DynamicLayer, without copying on every append."""

import logging
import warnings

import torch
from transformers.cache_utils import DynamicLayer

from pocketpilot.runtime.kvcache import GrowingLayer, cache_bytes, cache_keyword, crop_to, new_cache, returned_cache


@torch.inference_mode()
def test_growing_layer_matches_dynamic_layer_through_appends_and_crops():
    torch.manual_seed(0)
    grow, ref = GrowingLayer(), DynamicLayer()
    buffers = set()
    for step, (n, crop) in enumerate([(300, 0), (1, 0), (5, -3), (1, 0), (200, -50), (1, -1), (400, 0)]):
        k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
        gk, gv = grow.update(k, v)
        rk, rv = ref.update(k, v)
        assert torch.equal(gk, rk) and torch.equal(gv, rv), step
        grow.crop(crop)
        ref.crop(crop)
        assert grow.get_seq_length() == ref.get_seq_length()
        buffers.add(grow._kbuf.data_ptr())
    assert len(buffers) < 7  # most appends wrote into spare room instead of reallocating
    assert grow.nbytes >= 2 * grow.get_seq_length() * 2 * 8 * 4


@torch.inference_mode()
def test_new_cache_uses_growing_layers_and_reports_its_bytes(tiny_teacher):
    from pocketpilot.runtime import load_model_folder

    model = load_model_folder(tiny_teacher).model
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    cache = new_cache()
    kw = cache_keyword(model)
    ours = model(input_ids=ids, use_cache=True, **{kw: cache}).logits
    theirs = model(input_ids=ids, use_cache=True).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    assert cache_bytes(cache) == sum(layer.nbytes for layer in cache.layers) > 0
    step = model(input_ids=torch.tensor([[11]]), use_cache=True, **{kw: cache}).logits
    full = model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11]])).logits[:, -1:]
    assert torch.allclose(step, full, atol=1e-5)


@torch.inference_mode()
def test_cache_keyword_and_returned_cache_avoid_the_deprecated_name(tiny_teacher, monkeypatch):
    from pocketpilot.runtime import load_model_folder

    model = load_model_folder(tiny_teacher).model
    logged = []  # transformers logs deprecations with Logger.warning_once (once a process: patched, not cached)
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: logged.append(str(msg)),
                        raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning for `past_key_values` would fail here
        cache = returned_cache(model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True))
        again = returned_cache(model(input_ids=torch.tensor([[8]]), use_cache=True, **{cache_keyword(model): cache}))
    assert again is cache and cache.get_seq_length() == 4
    assert not [m for m in logged if "deprecated" in m], logged
    crop_to(cache, 2)
    assert cache.get_seq_length() == 2
    crop_to(cache, 10)  # holds fewer: unchanged
    assert cache.get_seq_length() == 2
