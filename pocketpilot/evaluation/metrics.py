"""Line-completion metrics: edit similarity (ES) and exact match (EM)."""

from __future__ import annotations

from rapidfuzz import fuzz


def edit_similarity(pred: str, gt: str) -> float:
    """Edit similarity, 0-100: rapidfuzz ``fuzz.ratio`` (Indel distance) of the stripped strings.

    Same value as fuzzywuzzy's ``fuzz.ratio`` used by the CodeXGLUE evaluator.
    """
    return float(fuzz.ratio(pred.strip(), gt.strip()))


def exact_match(pred: str, gt: str) -> bool:
    """Exact match: equal after splitting on whitespace (CodeXGLUE's ``pred.split() == gt.split()``)."""
    return pred.split() == gt.split()

