"""Nothing PocketPilot reads runs code: distillation resumes without pickle, and model folders' own code never runs.

Crafted pickles in a run folder (accelerate's ``custom_checkpoint_0.pkl``, ``optimizer.bin``,
``random_states_0.pkl``, the tokenized ``data.pt``) and Python files shipped with a model folder
would create a marker file if they ran.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest

import pocketpilot
from pocketpilot.compression import compress
from pocketpilot.compression.distill import distill
from pocketpilot.errors import CustomCodeError, PocketPilotError
from pocketpilot.runtime.loader import load_any

FAST = dict(block_tokens=32, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=4, checkpoint_every=2)
PACKAGE = Path(pocketpilot.__file__).parent


class _Payload:
    """Unpickling this creates ``marker`` (an arbitrary call: what a crafted pickle can do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tiny import CORPUS

    root = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (root / f"mod{i}.py").write_text("\n".join(CORPUS * 4))
    return root


def _distill(teacher, corpus, steps):
    return distill(str(teacher), 2, corpus=corpus, steps=steps, show_progress=False, **FAST)


def test_resume_reads_no_pickle_from_the_run_folder(pp_home, tiny_teacher, corpus, tmp_path):
    _distill(tiny_teacher, corpus, 2)
    (ckpt,) = (pp_home / "runs").glob("*/checkpoint")
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.json", "optimizer.safetensors",
                                                      "progress.json", "rng-0.safetensors", "scheduler.json"]
    marker = tmp_path / "pickle-ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        _crafted(ckpt / name, marker)
    _crafted(ckpt.parent / "data.pt", marker)  # the tokenized corpus: torch.load(weights_only=True) refuses it
    res = _distill(tiny_teacher, corpus, 4)
    assert res.manifest.recipe["resumed_from_step"] == 2 and res.manifest.recipe["steps"] == 4
    assert not marker.exists(), "a pickle in the run folder ran code"


def test_an_old_pickled_checkpoint_is_refused_with_the_fix(pp_home, tiny_teacher, corpus, tmp_path):
    _distill(tiny_teacher, corpus, 2)
    (ckpt,) = (pp_home / "runs").glob("*/checkpoint")
    marker = tmp_path / "pickle-ran"
    for p in ckpt.iterdir():
        if p.name != "progress.json":
            p.unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "model.safetensors"):
        _crafted(ckpt / name, marker)
    with pytest.raises(PocketPilotError, match=r"older PocketPilot with pickled state, which is never loaded\); "
                                               r"start over with --no-resume"):
        _distill(tiny_teacher, corpus, 4)
    assert not marker.exists()
    fresh = distill(str(tiny_teacher), 2, corpus=corpus, steps=4, resume=False, show_progress=False, **FAST)
    assert fresh.manifest.recipe["resumed_from_step"] is None and not marker.exists()


def _custom_code_folder(src: Path, dst: Path, model_type: str, marker: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                "AutoModelForCausalLM": "evil.EvilModel"})
    (dst / "config.json").write_text(json.dumps(cfg))
    (dst / "evil.py").write_text(f"open({str(marker)!r}, 'w')\nfrom transformers import LlamaConfig as EvilConfig\n")
    return dst


def test_a_folder_that_needs_its_own_code_is_refused_in_one_line(pp_home, tiny_teacher, tmp_path, capsys):
    marker = tmp_path / "model-code-ran"
    folder = _custom_code_folder(tiny_teacher, tmp_path / "custom", "evil_arch", marker)
    for action in (lambda: load_any(str(folder)), lambda: compress(str(folder), "int8", eval_tasks=0)):
        with pytest.raises(CustomCodeError, match=r"needs its own Python code to load .* never runs code shipped "
                                                  r"with a model") as exc:
            action()
        assert "\n" not in str(exc.value)
    assert not marker.exists()
    assert capsys.readouterr().out == ""  # no trust_remote_code prompt on stdout (it would break --json)
    assert not (pp_home / "artifacts").exists()


def test_custom_code_for_a_known_architecture_is_ignored_not_run(tiny_teacher, tmp_path):
    marker = tmp_path / "model-code-ran"
    folder = _custom_code_folder(tiny_teacher, tmp_path / "custom-llama", "llama", marker)
    loaded = load_any(str(folder))
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not marker.exists()


def test_a_custom_tokenizer_is_refused(tiny_teacher, tmp_path):
    folder = tmp_path / "custom-tok"
    shutil.copytree(tiny_teacher, folder)
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(CustomCodeError, match="for its tokenizer"):
        load_any(str(folder))


# ---------------------------------------------------------------- the package, read as source


def _calls(attr: str):
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                yield path.relative_to(PACKAGE.parent), node


def test_every_from_pretrained_refuses_remote_code():
    calls = list(_calls("from_pretrained"))
    assert len(calls) >= 10
    bad = [f"{path}:{node.lineno}" for path, node in calls
           if not any(k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
                      for k in node.keywords)]
    assert not bad, f"from_pretrained without trust_remote_code=False: {bad}"


def test_no_unpickling_in_the_package():
    bad = []
    for path, node in _calls("load"):
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        if owner == "pickle":
            bad.append(f"{path}:{node.lineno} pickle.load")
        if owner == "torch" and not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                        for k in node.keywords):
            bad.append(f"{path}:{node.lineno} torch.load without weights_only=True")
    bad += [f"{path}:{node.lineno} {node.func.attr}" for attr in ("load_state", "loads")
            for path, node in _calls(attr)
            if attr == "load_state" or (isinstance(node.func.value, ast.Name) and node.func.value.id == "pickle")]
    assert not bad, bad
