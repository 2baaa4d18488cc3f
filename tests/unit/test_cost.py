"""Cost measurement of one model in a child process (tiny int8 artifact; about 30 s on 2 cores)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketpilot.errors import PocketPilotError
from pocketpilot.evaluation.cost import ENERGY_SOURCES, measure_cost, measure_cost_inproc
from tiny import CORPUS

KEYS = {"name", "folder", "size_bytes", "weights_bytes", "load_ms", "rss_after_load_bytes", "peak_rss_bytes",
        "peak_rss_source", "max_positions", "prefill_ms", "prefill_skipped", "decode_ms_per_token",
        "decode_prompt_tokens", "n_completions", "latency_ms_p50", "latency_ms_p95", "new_tokens", "tokens_per_s",
        "energy_j_per_1000", "co2e_g_per_1000", "energy_source", "energy_method", "energy_cpu_j_per_1000",
        "energy_ram_j_per_1000", "energy_note", "country_iso_code", "device", "torch_threads"}


def _tasks() -> list[dict]:
    """One task per CORPUS snippet: the cursor after the first line's indentation + 2 characters."""
    tasks = []
    for text in CORPUS[:3]:
        first, rest = text.split("\n", 1)
        line, after = rest.split("\n", 1)
        col = len(line) - len(line.lstrip()) + 2
        tasks.append({"prefix": first + "\n" + line[:col], "suffix": after, "gt": line[col:]})
    return tasks


def _artifact(home: Path) -> Path:
    (folder,) = [p for p in (home / "artifacts").iterdir() if p.is_dir()]
    return folder


def _apparent_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_size for p in files if p.suffix == ".safetensors")


def test_measure_cost_in_a_child(tiny_home, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    # 64 fits the tiny model's 512 positions; 1024 does not and must come back null with a reason
    folder = _artifact(tiny_home)
    res = measure_cost(folder.name, _tasks(), n_completions=3, prompt_lengths=(64, 1024), threads=1)
    assert KEYS <= res.keys(), KEYS - res.keys()
    assert res["name"] == folder.name
    assert Path(res["folder"]) == folder
    size, weights = _apparent_bytes(folder)
    assert (res["size_bytes"], res["weights_bytes"]) == (size, weights) and 0 < weights < size
    assert res["load_ms"] > 0 and res["torch_threads"] == 1 and res["device"] == "cpu"
    assert 0 < res["rss_after_load_bytes"] <= res["peak_rss_bytes"]
    assert res["max_positions"] == 512
    assert res["prefill_ms"]["64"] > 0 and res["prefill_ms"]["1024"] is None
    assert "64" not in res["prefill_skipped"] and "512 positions" in res["prefill_skipped"]["1024"]
    assert res["decode_ms_per_token"] > 0 and res["decode_prompt_tokens"] == 64
    assert res["n_completions"] == 3 and res["new_tokens"] > 0 and res["tokens_per_s"] > 0
    assert 0 < res["latency_ms_p50"] <= res["latency_ms_p95"]
    if importlib.util.find_spec("codecarbon"):
        assert res["energy_source"] in ENERGY_SOURCES
        assert res["energy_j_per_1000"] > 0 and res["co2e_g_per_1000"] > 0 and res["country_iso_code"] == "USA"
        assert res["energy_j_per_1000"] == pytest.approx(res["energy_cpu_j_per_1000"] + res["energy_ram_j_per_1000"],
                                                         abs=0.01)
        if res["energy_source"] == "estimate":
            assert "ESTIMATED" in res["energy_note"]
    else:
        assert res["energy_source"] is None and "pip install codecarbon" in res["energy_note"]
    assert "\n" not in res["energy_note"]


def test_child_stdout_is_only_the_json(tiny_home, monkeypatch, tmp_path):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in _tasks()[:1]))
    # Python- and fd-level writes to stdout during the measurement must land on stderr, not in the JSON
    code = ("import os, sys; from pocketpilot.evaluation import cost; f = cost._child_measure; "
            "cost._child_measure = lambda a: (print('noise'), os.write(1, b'fd noise\\n'), f(a))[2]; "
            "sys.exit(cost.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "--tasks-file", str(tasks), "--n", "1",
                           "--prompt-lengths", "16", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout[:500]
    assert json.loads(lines[0])["n_completions"] == 1


def test_unknown_model_raises_one_line(tiny_home, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    with pytest.raises(PocketPilotError) as err:
        measure_cost("no-such-model-xyz", _tasks(), n_completions=1, prompt_lengths=(16,), energy=False)
    msg = str(err.value)
    assert "\n" not in msg and "no-such-model-xyz" in msg and "Traceback" not in msg


def test_inproc_without_codecarbon_and_peak_rss_is_own(tiny_home, monkeypatch):
    from pocketpilot.runtime.loader import load_any

    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import codecarbon -> ImportError
    loaded = load_any(None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two shared cores can be many times slower
    try:
        res = measure_cost_inproc(loaded, _tasks(), n_completions=2, prompt_lengths=(16,))
    finally:
        torch.set_num_threads(threads)
    assert res["energy_j_per_1000"] is None and res["energy_source"] is None
    assert "pip install codecarbon" in res["energy_note"]
    files = [f for f in Path(loaded.folder).rglob("*") if f.is_file()]
    assert res["size_bytes"] == sum(f.stat().st_size for f in files)
    assert res["weights_bytes"] == sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    with pytest.raises(PocketPilotError, match="no line-completion tasks"):
        measure_cost_inproc(loaded, [], prompt_lengths=(16,))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_child_peak_rss_excludes_the_parent(tiny_home, monkeypatch):
    """Linux hands a parent's high-water RSS to a child's ru_maxrss; the child must report its own peak."""
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    ballast = bytearray(1024 * 1024 * 1024)  # 1 GiB, touched so that it is resident
    ballast[::4096] = b"\1" * len(ballast[::4096])
    res = measure_cost(None, _tasks(), n_completions=1, prompt_lengths=(16,), energy=False, threads=1)
    del ballast
    assert res["peak_rss_source"] == "VmHWM"
    assert res["peak_rss_bytes"] < 1024 * 1024 * 1024, res["peak_rss_bytes"]
