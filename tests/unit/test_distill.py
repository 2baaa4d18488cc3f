"""Knowledge distillation (pocketpilot.compression.distill) on a tiny 4-layer teacher."""

import errno
import json
import random

import pytest
import torch

from pocketpilot.compression.distill import (
    TeacherTopKCache,
    code_blocks,
    distill,
    kd_loss,
    kd_loss_topk,
    make_student,
    student_layer_map,
)
from pocketpilot.corpus import held_out_files
from pocketpilot.errors import PocketPilotError

FAST = dict(block_tokens=32, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=4, checkpoint_every=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and several times faster when another process shares the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    """The tiny trained teacher with 4 decoder layers (the default tiny teacher has 2)."""
    from tiny import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("tiny-deep-teacher"), layers=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 .py files, each the tiny corpus snippets (which the teacher knows) in a shuffled order."""
    from tiny import CORPUS

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(8):
        texts = CORPUS * 4
        rng.shuffle(texts)
        (root / f"mod{i}.py").write_text("\n".join(texts))
    return root


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(folder))


def _no_artifact(home):
    for sub in ("artifacts", "tmp"):
        folder = home / sub
        assert not folder.exists() or not any(folder.iterdir()), list(folder.iterdir())


def test_layer_map_is_evenly_spaced_with_first_and_last_kept():
    assert student_layer_map(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert student_layer_map(4, 3) == [0, 2, 3]
    assert student_layer_map(30, 2) == [0, 29]
    assert student_layer_map(5, 5) == [0, 1, 2, 3, 4]
    for n_t, n_s in [(30, 6), (24, 7), (12, 12), (28, 3)]:
        m = student_layer_map(n_t, n_s)
        gaps = {b - a for a, b in zip(m, m[1:])}
        assert m[0] == 0 and m[-1] == n_t - 1 and len(m) == n_s and max(gaps) - min(gaps) <= 1
    for bad in (1, 31):
        with pytest.raises(PocketPilotError, match="between 2 and 30 layers") as exc:
            student_layer_map(30, bad)
        assert "\n" not in str(exc.value)


def test_student_weights_are_the_mapped_teacher_layers(deep_teacher):
    teacher, _ = _load(deep_teacher)
    student = make_student(teacher, 3)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 3
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for j, i in enumerate([0, 2, 3]):
        for name, tensor in s_state.items():
            if name.startswith(f"model.layers.{j}."):
                assert torch.equal(tensor, t_state[name.replace(f"layers.{j}.", f"layers.{i}.")]), name
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(s_state[name], t_state[name])
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tied, like the teacher
    with torch.no_grad():  # cloned: training the student leaves the teacher alone
        student.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)


def test_kd_loss_is_the_hinton_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    T, alpha = 2.0, 0.3
    pt = torch.softmax(t / T, -1)
    kl = (pt * (pt.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    out = kd_loss(s, t, y, T, alpha)
    assert torch.allclose(out.kd, T * T * kl, atol=1e-6) and torch.allclose(out.ce, ce, atol=1e-6)
    assert torch.allclose(out.loss, alpha * T * T * kl + (1 - alpha) * ce, atol=1e-6)
    assert float(kd_loss(t, t, y).kd) == pytest.approx(0.0, abs=1e-6)
    masked = y.clone()
    masked[1] = -100  # ignored positions count in neither term
    assert torch.allclose(kd_loss(s, t, masked, T, alpha).loss, kd_loss(s[:1], t[:1], y[:1], T, alpha).loss, atol=1e-6)
    with pytest.raises(PocketPilotError, match="alpha must be in"):
        kd_loss(s, t, y, T, 1.5)


def test_topk_cache_gives_the_full_kl_when_k_is_the_vocabulary(deep_teacher):
    teacher, tok = _load(deep_teacher)
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\nfor item in items:\n")] * 2)
    student = make_student(teacher, 2)
    with torch.no_grad():
        s, t = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    full = kd_loss(s[:, :-1], t[:, :-1], ids[:, 1:])
    cache = TeacherTopKCache(k=t.shape[-1])
    values, indices = cache(teacher, torch.tensor([0, 1]), ids)
    topk = kd_loss_topk(s[:, :-1], values[:, :-1], indices[:, :-1], ids[:, 1:])
    assert float(topk.kd) == pytest.approx(float(full.kd), rel=2e-3) and torch.equal(topk.ce, full.ce)
    again = cache(teacher, torch.tensor([0, 1]), ids)  # second visit: from the cache, same numbers
    assert cache.hits == 2 and cache.misses == 2 and torch.equal(again[0], values)
    small = TeacherTopKCache(k=8)(teacher, torch.tensor([0, 1]), ids)
    assert small[0].shape == (2, ids.shape[1], 8)


def test_code_blocks_hold_out_whole_files_deterministically(deep_teacher, corpus, tmp_path):
    _, tok = _load(deep_teacher)
    a = code_blocks(tok, [corpus], block_tokens=32, val_fraction=0.2)
    b = code_blocks(tok, [corpus], block_tokens=32, val_fraction=0.2)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.train.shape[1] == 32 and a.val_files >= 1 and a.train_files + a.val_files == 8
    extra = tmp_path / "ws"
    extra.mkdir()
    (extra / "extra.py").write_text("x = 1\n" * 50)
    c = code_blocks(tok, [corpus, extra], block_tokens=32, val_fraction=0.2)
    assert c.train_files + c.val_files == 9
    # the held-out files are the validation split, and evaluation tasks can be cut from them alone
    held = held_out_files([corpus], val_fraction=0.2)
    assert len(held) == a.val_files and all(p.parent == corpus for p in held)
    from pocketpilot.evaluation.tasks import make_tasks

    tasks = make_tasks(corpus, n=5, seed=0, min_prefix_chars=0, files=held)
    assert tasks and {t["id"].split(":")[0] for t in tasks} <= {p.name for p in held}
    (tmp_path / "empty").mkdir()
    with pytest.raises(PocketPilotError, match="the corpus is empty"):
        code_blocks(tok, [tmp_path / "empty"])
    with pytest.raises(PocketPilotError, match="less than one block"):
        code_blocks(tok, [corpus], block_tokens=100_000)


def _train_kd(folder, teacher, blocks):
    """Mean soft loss (T^2 KL at T=2) of a model on training blocks ``[N, L]``."""
    with torch.no_grad():
        return float(kd_loss(folder(input_ids=blocks).logits[:, :-1], teacher(input_ids=blocks).logits[:, :-1],
                             blocks[:, 1:]).kd)


def test_a_few_steps_lower_the_kd_loss(deep_teacher, corpus, pp_home):
    teacher, tok = _load(deep_teacher)
    blocks = code_blocks(tok, [corpus], block_tokens=32).train[:16]
    before = _train_kd(make_student(teacher, 2), teacher, blocks)
    res = distill(str(deep_teacher), 2, corpus=corpus, steps=12, show_progress=False, **FAST)
    student, _ = _load(res.folder)
    after = _train_kd(student, teacher, blocks)
    assert after < 0.8 * before, (before, after)
    r = res.manifest.recipe
    assert r["method"] == "distill" and r["layer_map"] == [0, 3] and r["steps"] == 12
    assert r["tokens_seen"] == 12 * 4 * 32 and r["temperature"] == 2.0 and r["alpha"] == 0.5
    assert r["val_after"]["loss"] < r["val_before"]["loss"]
    assert r["command"].startswith(f"pocketpilot distill --teacher {deep_teacher} --layers 2 --steps 12")
    assert res.manifest.artifact_bytes < res.manifest.teacher.fp32_bytes
    from pocketpilot.compression import compress  # the student is an ordinary artifact: it can be quantized later

    q = compress(str(res.folder), "int8", eval_tasks=0)
    assert q.manifest.recipe["source_artifact"] == {"artifact_id": res.artifact_id, "method": "distill",
                                                       "teacher": str(deep_teacher)}


def test_resume_continues_where_it_stopped(deep_teacher, corpus, tmp_path, monkeypatch):
    import pocketpilot.compression.distill.run as D  # the run loop looks up kd_loss there

    def run(home, steps, **kw):
        monkeypatch.setenv("POCKETPILOT_HOME", str(home))
        return distill(str(deep_teacher), 3, corpus=corpus, steps=steps, show_progress=False, **FAST, **kw)

    straight = run(tmp_path / "a", 8)
    first = run(tmp_path / "b", 4)
    resumed = run(tmp_path / "b", 8)
    assert first.manifest.recipe["steps"] == 4 and first.manifest.recipe["resumed_from_step"] is None
    r = resumed.manifest.recipe
    assert r["resumed_from_step"] == 4 and r["steps"] == 8 and r["tokens_seen"] == 8 * 4 * 32
    assert [h["step"] for h in r["train_history"]] == list(range(1, 9))
    # same data order, weights, AdamW moments and LR schedule: the same student as without a stop
    a, b = _load(straight.folder)[0].state_dict(), _load(resumed.folder)[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert r["train_history"] == straight.manifest.recipe["train_history"]

    # an interrupted run (Ctrl-C in step 6) keeps its checkpoint and no artifact; the rerun resumes
    real, calls = D.kd_loss, []

    def interrupt(student_logits, *args, **kw):
        calls.append(student_logits.requires_grad)  # training steps only, not validation
        if sum(calls) == 6:
            raise KeyboardInterrupt
        return real(student_logits, *args, **kw)

    monkeypatch.setattr(D, "kd_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c", 8)
    monkeypatch.setattr(D, "kd_loss", real)
    _no_artifact(tmp_path / "c")
    again = run(tmp_path / "c", 8)
    assert again.manifest.recipe["resumed_from_step"] == 5
    c = _load(again.folder)[0].state_dict()
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)
    assert run(tmp_path / "c", 8, resume=False).manifest.recipe["resumed_from_step"] is None


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("case, message", [
    ("empty corpus", "the corpus is empty"),
    ("zero steps", "budget too small: --steps 0"),
    ("zero minutes", "budget too small: --minutes 0"),
    ("no budget", "give a training budget"),
    ("too many layers", "between 2 and 4 layers"),
    ("disk full writing the artifact", "out of disk space while writing"),
    ("disk full writing a checkpoint", "out of disk space while writing"),
    ("too little free space", "not enough disk space"),
])
def test_bad_input_is_one_clear_line_and_leaves_no_artifact(case, message, deep_teacher, corpus, pp_home, tmp_path,
                                                            monkeypatch):
    import shutil
    from collections import namedtuple

    kw = dict(corpus=corpus, steps=3, show_progress=False, **FAST)
    layers = 3
    if case == "empty corpus":
        kw["corpus"] = tmp_path / "empty"
        kw["corpus"].mkdir()
    elif case == "zero steps":
        kw["steps"] = 0
    elif case == "zero minutes":
        kw.pop("steps")
        kw["minutes"] = 0
    elif case == "no budget":
        kw.pop("steps")
    elif case == "too many layers":
        layers = 5
    elif case == "disk full writing the artifact":
        from transformers import PreTrainedModel

        def half_written(self, out, **kwargs):
            (out / "model.safetensors").write_bytes(b"partial")
            _enospc()

        monkeypatch.setattr(PreTrainedModel, "save_pretrained", half_written)
    elif case == "disk full writing a checkpoint":
        from pocketpilot.compression.distill import checkpoint

        monkeypatch.setattr(checkpoint, "save_model", _enospc)
    elif case == "too little free space":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(PocketPilotError) as exc:
        distill(str(deep_teacher), layers, **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    _no_artifact(pp_home)
    runs = pp_home / "runs"
    assert not list(runs.glob("*/checkpoint.partial")) if runs.exists() else True


def test_distill_then_int8_completes_code(deep_teacher, corpus, pp_home):
    from pocketpilot.runtime.loader import load_any
    from pocketpilot.store import get_active, rebuild_command, verify_artifact
    from pocketpilot.runtime import CompletionEngine

    res = distill(str(deep_teacher), 3, corpus=corpus, steps=40, then="int8", show_progress=False,
                  **{**FAST, "checkpoint_every": 40, "eval_every": 40})
    assert res.artifact_id.endswith("-distill3-int8") and get_active() == res.artifact_id
    manifest = verify_artifact(res.folder)
    r = manifest.recipe
    assert r["method"] == "distill+int8" and r["quantization"]["quantized_modules"] > 0
    assert (res.folder / "quantization.json").is_file()
    assert rebuild_command(manifest, res.artifact_id).endswith("--then int8")
    engine = CompletionEngine(load_any(res.artifact_id))
    assert engine.complete("def add(a, b):\n    return", "").text == " a + b"


def test_cli_distill_json_and_one_line_errors(deep_teacher, corpus, pp_home, capsys):
    from pocketpilot.cli import main

    args = ["distill", "--teacher", str(deep_teacher), "--layers", "2", "--steps", "2", "--corpus", str(corpus),
            "--block-tokens", "32", "--eval-tasks", "0", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "distill" and out["distill"]["layer_map"] == [0, 3] and out["distill"]["steps"] == 2
    assert main(args[:-1] + ["--top-k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pocketpilot: error: --top-k must be at least 1; got 0"]


def test_topk_cached_run_reuses_teacher_logits_across_epochs(deep_teacher, corpus, pp_home):
    _, tok = _load(deep_teacher)
    per_epoch = len(code_blocks(tok, [corpus], block_tokens=32).train) // 4
    res = distill(str(deep_teacher), 2, corpus=corpus, steps=per_epoch + 3, top_k=16, show_progress=False, **FAST)
    r = res.manifest.recipe
    assert r["top_k"] == 16 and r["topk_cache"] == {"blocks": per_epoch * 4, "hits": 12, "misses": per_epoch * 4}
    assert r["val_after"]["kd"] < r["val_before"]["kd"]


def test_a_broken_checkpoint_says_to_start_over(deep_teacher, corpus, pp_home):
    run = dict(corpus=corpus, show_progress=False, **FAST)
    distill(str(deep_teacher), 2, steps=2, **run)
    (ckpt,) = (pp_home / "runs").glob("*/checkpoint")
    (ckpt / "optimizer.safetensors").unlink()
    with pytest.raises(PocketPilotError, match="cannot resume from .*; start over with --no-resume"):
        distill(str(deep_teacher), 2, steps=4, **run)
    assert distill(str(deep_teacher), 2, steps=4, resume=False, **run).manifest.recipe["steps"] == 4
