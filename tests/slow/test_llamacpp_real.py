"""The llama.cpp engine on the real SmolLM2-135M teacher (skips without llama-cpp-python, as in CI).

Builds the Q8_0 and Q4_K_M GGUF artifacts with llama.cpp's quantizer, checks their sizes against the
methods' declared bytes per weight, and that the llama.cpp engine completes as the float32 teacher does.
"""

import importlib.util

import pytest

from pocketpilot.compression import compress
from pocketpilot.compression.methods import METHODS
from pocketpilot.corpus import default_source_dir
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime import CompletionEngine, load_model_folder
from pocketpilot.runtime.llamacpp import GGUF_FILE
from pocketpilot.runtime.loader import load_artifact

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")]

#: SmolLM2-135M: decoder-layer linear weights and (tied) embedding weights
BODY, HEAD = 134_515_008 - 49152 * 576 - 576 * 61, 49152 * 576


@pytest.mark.parametrize("method", ["gguf-q8_0", "gguf-q4_k_m"])
def test_gguf_artifact_size_and_completions(real_home, method):
    res = compress("smollm2-135m", method, eval_tasks=0, activate=False)
    gguf = res.folder / GGUF_FILE
    assert res.manifest.recipe["engine"] == "llama.cpp" and res.manifest.files[GGUF_FILE]["bytes"] == gguf.stat().st_size
    if method == "gguf-q8_0":  # Q4_K_M's super-blocks of 256 do not fit SmolLM2's rows of 576 (see its module)
        declared = METHODS[method].weight_bytes(BODY, HEAD)
        assert abs(gguf.stat().st_size - declared) / declared < 0.02, (gguf.stat().st_size, declared)
    llama = CompletionEngine(load_artifact(str(res.folder)))
    assert llama.backend.engine == "llama.cpp"
    teacher = CompletionEngine(load_model_folder(real_home / "teachers" / "smollm2-135m"))
    tasks = make_tasks(default_source_dir(), n=20, seed=0)
    a, b = evaluate_lines(teacher, tasks), evaluate_lines(llama, tasks)
    same = sum(x["pred"] == y["pred"] for x, y in zip(a["predictions"], b["predictions"]))
    # Q4_K_M re-quantizes the Q4_1 teacher into other 4-bit blocks: 9-10 of 20 measured (Zen 4)
    assert same >= (16 if method == "gguf-q8_0" else 8), (same, a["es"], b["es"])
