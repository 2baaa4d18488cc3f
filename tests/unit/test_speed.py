import pytest

from pocketpilot.evaluation.speed import measure_speed
from pocketpilot.runtime import load_model_folder


def test_measure_speed_times_prefill_and_decode(tiny_teacher):
    loaded = load_model_folder(tiny_teacher)
    text = "def add(a, b):\n    return a + b\n" * 40
    res = measure_speed(loaded, text, prompt_tokens=64, new_tokens=4, repeats=2)
    assert res["prompt_tokens"] == 64 and res["prefill_ms"] > 0 and res["decode_ms_per_token"] > 0
    with pytest.raises(ValueError, match="need 10000"):
        measure_speed(loaded, text, prompt_tokens=10_000)
