"""The calibration set: token ids from a few fixed standard-library files (see :mod:`pocketpilot.corpus`)."""

from __future__ import annotations

from pocketpilot.corpus import calibration_texts


def calibration_batches(tokenizer, n: int = 8, tokens: int = 512) -> list:
    """Token-id tensors ``[1, tokens]`` (int64) from up to ``n`` of :data:`pocketpilot.corpus.CALIBRATION_FILES`.

    Files shorter than ``tokens`` tokens, or missing, are skipped, so the list may be empty.
    """
    import torch  # lazy: torch

    out = []
    for text in calibration_texts(n):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= tokens:
            out.append(torch.tensor([ids[:tokens]]))
    return out
