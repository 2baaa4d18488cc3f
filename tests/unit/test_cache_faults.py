"""Injected faults in the artifact cache: each is caught on every load path with one line and the rebuild command.

The paths: ``load_any(ID)`` (``complete --model ID``, ``eval ID``), ``load_any(FOLDER)``
(``complete --model FOLDER``) and ``load_artifact()`` of the active artifact (``serve``). Also:
artifacts of manifest schema 1, converted teachers, stale partial builds, a full disk, and two
compresses at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pocketpilot.compression import compress
from pocketpilot.errors import ArtifactError, PocketPilotError
from pocketpilot.runtime.loader import load_any, load_artifact
from pocketpilot.store import artifacts_dir, home, read_manifest, remove_stale_partials, verify_artifact

REBUILD = "rebuild it with: pocketpilot compress --teacher "


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_teacher):
    """A home holding the tiny teacher's int8 artifact (active), and a different model folder to take files from."""
    from tiny import make_tiny_teacher

    base = tmp_path_factory.mktemp("faults-home")
    old = os.environ.get("POCKETPILOT_HOME")
    os.environ["POCKETPILOT_HOME"] = str(base)
    try:
        res = compress(str(tiny_teacher), "int8", eval_tasks=0)
    finally:
        os.environ["POCKETPILOT_HOME"] = old if old is not None else ""
        if old is None:
            del os.environ["POCKETPILOT_HOME"]
    other = make_tiny_teacher(tmp_path_factory.mktemp("other-model"), fim=True, steps=1)
    return base, res.artifact_id, other


@pytest.fixture
def artifact(built, tmp_path, monkeypatch):
    """A fresh copy of the built home for one test: the artifact's folder in it."""
    base, artifact_id, _ = built
    home_dir = tmp_path / "home"
    shutil.copytree(base, home_dir)
    monkeypatch.setenv("POCKETPILOT_HOME", str(home_dir))
    return home_dir / "artifacts" / artifact_id


def _flip(path: Path, at: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text and len(old) == len(new)
    path.write_text(text.replace(old, new, 1))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _drop_first_file(manifest: Path) -> None:
    _edit_json(manifest, lambda m: m["files"].pop(sorted(n for n in m["files"] if n.endswith(".json"))[0]))


#: name -> (inject(folder, other_model_folder), text the error must hold)
FAULTS = {
    "tokenizer.json from another model": (lambda f, o: shutil.copyfile(o / "tokenizer.json", f / "tokenizer.json"),
                                          "tokenizer.json"),
    "config.json from another model": (lambda f, o: shutil.copyfile(o / "config.json", f / "config.json"),
                                       "config.json"),
    "quantization.json deleted": (lambda f, o: (f / "quantization.json").unlink(), "quantization.json is missing"),
    "quantization.json truncated": (lambda f, o: _truncate(f / "quantization.json"), "quantization.json"),
    "manifest.json deleted": (lambda f, o: (f / "manifest.json").unlink(), "incomplete (no manifest.json)"),
    "manifest.json truncated": (lambda f, o: _truncate(f / "manifest.json"), "unreadable manifest.json"),
    "manifest of an unknown schema": (lambda f, o: _edit_json(f / "manifest.json",
                                                              lambda m: m.update(schema_version=99)),
                                      "unknown manifest schema"),
    "a file dropped from the manifest": (lambda f, o: _drop_first_file(f / "manifest.json"), "unexpected file"),
    "weights corrupted": (lambda f, o: _flip(f / "model.safetensors"), "model.safetensors fails its sha256 check"),
    "safetensors truncated": (lambda f, o: _truncate(f / "model.safetensors"), "model.safetensors has"),
    "weights deleted": (lambda f, o: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "extra weight file": (lambda f, o: shutil.copyfile(o / "model.safetensors", f / "model-00002.safetensors"),
                          "unexpected file model-00002.safetensors"),
    "Python file planted": (lambda f, o: (f / "modeling_evil.py").write_text("import os\n"),
                            "unexpected file modeling_evil.py"),
    "generation_config.json replaced": (lambda f, o: shutil.copyfile(o / "config.json", f / "generation_config.json"),
                                        "generation_config.json has"),
    "chat template added": (lambda f, o: (f / "chat_template.jinja").write_text("{{ messages }}"),
                            "unexpected file chat_template.jinja"),
    "tokenizer_config.json edited, same size": (lambda f, o: _replace(f / "tokenizer_config.json", "endoftext",
                                                                      "endoftexx"),
                                                "tokenizer_config.json fails its sha256 check"),
    "tokenizer.json deleted": (lambda f, o: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "config.json replaced by a link": (lambda f, o: (f / "config.json").unlink() or
                                       (f / "config.json").symlink_to(o / "config.json"),
                                       "config.json is not a plain file"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_one_line_with_the_rebuild_command_on_every_load_path(fault, artifact, built):
    inject, expected = FAULTS[fault]
    inject(artifact, built[2])
    for path, load in (("complete/eval by id", lambda: load_any(artifact.name)),
                       ("complete --model FOLDER", lambda: load_any(str(artifact))),
                       ("serve (active)", lambda: load_artifact(None))):
        with pytest.raises(ArtifactError) as exc:
            load()
        message = str(exc.value)
        assert "\n" not in message, (path, message)
        assert expected in message, (path, message)
        assert "rebuild it with: pocketpilot compress" in message and "--force" in message, (path, message)
        if "manifest" not in fault:  # the manifest is readable: the command is the exact one
            assert REBUILD in message and "--method int8 --force" in message, (path, message)


def test_there_are_at_least_twelve_distinct_faults():
    assert len(FAULTS) >= 12 and len({text for _, text in FAULTS.values()}) >= 12


def test_an_intact_artifact_loads_on_every_path(artifact):
    assert load_any(artifact.name).folder == artifact
    assert load_any(str(artifact)).folder == artifact
    assert load_artifact(None).folder == artifact
    manifest = read_manifest(artifact)
    assert manifest.schema_version == 2 and manifest.hashes_every_file
    assert set(manifest.files) >= {"model.safetensors", "config.json", "quantization.json", "tokenizer.json"}


def test_a_plain_folder_elsewhere_loads_as_it_is_but_never_inside_the_cache(artifact, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(artifact, plain)
    (plain / "manifest.json").unlink()
    assert load_any(str(plain)).folder == plain  # an explicit plain folder: the user's choice
    (artifact / "manifest.json").unlink()
    moved = artifacts_dir() / "renamed"
    shutil.copytree(plain, moved)
    for name in (str(moved), "renamed"):
        with pytest.raises(ArtifactError, match="incomplete"):
            load_any(name)


def test_compress_rebuilds_a_faulty_artifact_without_force(artifact, tiny_teacher):
    (artifact / "chat_template.jinja").write_text("{{ messages }}")
    messages = []
    res = compress(str(tiny_teacher), "int8", eval_tasks=0, progress=lambda m, f=None: messages.append(m))
    assert not res.reused and any("unusable" in m and "chat_template.jinja" in m for m in messages)
    verify_artifact(res.folder)


# ---------------------------------------------------------------- manifest schema 1


def _as_schema_1(folder: Path) -> None:
    def downgrade(m):
        m["schema_version"] = 1
        m["files"] = {n: v for n, v in m["files"].items() if n.endswith(".safetensors")}
    _edit_json(folder / "manifest.json", downgrade)


def test_a_schema_1_artifact_loads_with_its_weights_checked_and_a_warning(artifact, caplog):
    _as_schema_1(artifact)
    with caplog.at_level(logging.WARNING, logger="pocketpilot.store"):
        assert load_any(artifact.name).folder == artifact
    assert any("manifest schema 1" in r.getMessage() and "rebuild it" in r.getMessage() for r in caplog.records)
    _flip(artifact / "model.safetensors")
    with pytest.raises(ArtifactError, match=r"fails its sha256 check; rebuild it with: pocketpilot compress"):
        load_any(artifact.name)


# ---------------------------------------------------------------- converted teachers


def test_a_corrupt_converted_teacher_is_converted_again(pp_home, tmp_path, tiny_teacher, monkeypatch):
    from pocketpilot import teachers

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    conversions = []

    def fake_convert(gguf_dir, gguf_name, out):  # conversion itself is tested in slow/ with a real GGUF
        conversions.append(gguf_name)
        for f in tiny_teacher.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(teachers, "convert_gguf", fake_convert)
    spec = teachers.parse_spec(str(gguf))
    first = teachers.fetch_teacher(spec)
    assert teachers.fetch_teacher(spec).folder == first.folder and len(conversions) == 1  # cached, re-hashed
    info = json.loads((first.folder / "teacher.json").read_text())
    assert set(info["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    _flip(first.folder / "model.safetensors")
    messages = []
    again = teachers.fetch_teacher(spec, lambda m, f=None: messages.append(m))
    assert len(conversions) == 2
    assert any("is corrupt (model.safetensors fails its sha256 check); converting it again" in m for m in messages)
    assert (again.folder / "model.safetensors").read_bytes() == (tiny_teacher / "model.safetensors").read_bytes()
    # an older conversion without recorded hashes gets them recorded, once
    _edit_json(again.folder / "teacher.json", lambda i: i.pop("files"))
    teachers.fetch_teacher(spec)
    assert "files" in json.loads((again.folder / "teacher.json").read_text()) and len(conversions) == 2


def _hub_snapshot(root: Path, model: Path) -> Path:
    """A Hugging Face cache snapshot of ``model``'s files, laid out as the hub client does (links to named blobs)."""
    import hashlib

    blobs, snap = root / "blobs", root / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(model.iterdir()):
        data = f.read_bytes()
        name = (hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (blobs / name).write_bytes(data)
        (snap / f.name).symlink_to(Path("../../blobs") / name)
    return snap


def test_a_corrupt_file_in_the_hugging_face_cache_is_named_with_the_fix(tmp_path, tiny_teacher):
    from pocketpilot.errors import FetchError
    from pocketpilot.teachers import check_hub_blobs

    snap = _hub_snapshot(tmp_path / "models--acme--tiny", tiny_teacher)
    check_hub_blobs(snap, {})
    for name in ("model.safetensors", "tokenizer.json"):
        blob = (snap / name).resolve()
        _flip(blob)
        with pytest.raises(FetchError, match=rf"{name} in the Hugging Face cache is corrupt .* delete {blob} and run "
                                             r"the command again"):
            check_hub_blobs(snap, {})
        _flip(blob)


# ---------------------------------------------------------------- partial builds, full disk, two at once


def test_stale_partial_builds_are_removed_and_live_ones_kept(pp_home, tiny_teacher):
    from filelock import FileLock

    tmp = pp_home / "tmp"
    tmp.mkdir(parents=True)
    # a compress killed mid-build: it held its lock, which the OS released when it died
    script = textwrap.dedent(f"""
        import os, signal
        from filelock import FileLock
        lock = FileLock({str(tmp / 'killed.1234abcd.lock')!r}); lock.acquire()
        os.mkdir({str(tmp / 'killed.1234abcd.partial')!r})
        open({str(tmp / 'killed.1234abcd.partial' / 'model.safetensors')!r}, 'wb').write(b'x' * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    (tmp / "older.0000beef.partial").mkdir()  # from a version without locks
    live = FileLock(tmp / "running.5678abcd.lock")
    live.acquire()
    (tmp / "running.5678abcd.partial").mkdir()
    try:
        assert sorted(remove_stale_partials()) == ["killed.1234abcd.partial", "older.0000beef.partial"]
        assert (tmp / "running.5678abcd.partial").is_dir()
        compress(str(tiny_teacher), "int8", eval_tasks=0)  # every build cleans up first
        assert sorted(p.name for p in tmp.iterdir()) == ["running.5678abcd.lock", "running.5678abcd.partial"]
    finally:
        live.release()
    remove_stale_partials()
    assert not list(tmp.iterdir())


def test_a_full_disk_in_a_library_is_one_line(pp_home, tiny_teacher, monkeypatch):
    import dataclasses

    from safetensors import SafetensorError

    from pocketpilot.compression import methods

    def full_disk(model, out, calibration=None):
        (out / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setitem(methods.METHODS, "int8", dataclasses.replace(methods.METHODS["int8"], apply=full_disk))
    with pytest.raises(PocketPilotError) as exc:
        compress(str(tiny_teacher), "int8", eval_tasks=0)
    assert str(exc.value).startswith("out of disk space while writing ") and "\n" not in str(exc.value)
    assert not list((pp_home / "tmp").iterdir())
    assert not (pp_home / "artifacts").exists() or not list((pp_home / "artifacts").iterdir())


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1k tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm to mount a small tmpfs (user namespaces)")
def test_a_real_full_disk_gives_the_one_line_message_from_the_cli(tmp_path, tiny_teacher):
    home_dir = tmp_path / "small-disk"
    home_dir.mkdir()
    cmd = (f"mount -t tmpfs -o size=96k tmpfs {home_dir} && exec {sys.executable} -m pocketpilot compress "
           f"--teacher {tiny_teacher} --eval-tasks 0")
    out = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "POCKETPILOT_HOME": str(home_dir)})
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert errors[-1].startswith("pocketpilot: error: out of disk space while writing "), out.stderr
    assert "Traceback" not in out.stderr


def test_two_compresses_at_once_run_one_after_the_other(pp_home, tiny_teacher):
    pp_home.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        with FileLock({str(pp_home / 'build.lock')!r}):
            print('held', flush=True)
            time.sleep(2)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    messages = []
    t0 = time.perf_counter()
    res = compress(str(tiny_teacher), "int8", eval_tasks=0, progress=lambda m, f=None: messages.append(m))
    waited = time.perf_counter() - t0
    holder.wait()
    assert any("another pocketpilot command is writing the cache; waiting" in m for m in messages)
    assert waited > 1.0 and not res.reused
    assert home() == pp_home
