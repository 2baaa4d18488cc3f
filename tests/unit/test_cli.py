import json
import os
import subprocess
import sys

import pytest

from pocketpilot.cli import main, read_position
from pocketpilot.errors import PocketPilotError, PositionError


def test_read_position_is_one_based(tmp_path):
    f = tmp_path / "a.py"
    f.write_text("ab\ncd\n")
    assert read_position(f, 1, 1) == ("", "ab\ncd\n")
    assert read_position(f, 2, 2) == ("ab\nc", "d\n")
    assert read_position(f, 2, 3) == ("ab\ncd", "\n")  # end of line
    with pytest.raises(PositionError, match="line 9 is outside"):
        read_position(f, 9, 1)
    with pytest.raises(PositionError, match="column 4 is outside line 2"):
        read_position(f, 2, 4)
    with pytest.raises(PositionError):
        read_position(f, 0, 1)
    with pytest.raises(PocketPilotError, match="file not found"):
        read_position(tmp_path / "missing.py", 1, 1)


def _run(args, home):
    return subprocess.run([sys.executable, "-m", "pocketpilot", *args], capture_output=True, text=True,
                          env={**os.environ, "POCKETPILOT_HOME": str(home)}, timeout=300)


def test_complete_prints_the_completion(tiny_home, tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def add(a, b):\n    return\n")
    out = _run(["complete", str(f), "--line", "2", "--col", "11"], tiny_home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == " a + b\n"
    js = _run(["complete", str(f), "--line", "2", "--col", "11", "--json", "--repeat", "3"], tiny_home)
    assert json.loads(js.stdout)["text"] == " a + b" and "median" in js.stderr


@pytest.mark.parametrize("args, message", [
    (["complete", "{missing}", "--line", "1", "--col", "1"], "file not found"),
    (["complete", "{file}", "--line", "7", "--col", "1"], "line 7 is outside"),
    (["complete", "{file}", "--line", "1", "--col", "1", "--model", "nope-int8"], "'nope-int8' is neither a cached artifact (cached: none yet) nor a teacher"),
    (["compress", "--method", "int3"], "unknown method 'int3'; supported: int8, int4, int8-fhead, bf16, gguf-q8_0, gguf-q4_k_m, none, bnb-int8, bnb-nf4"),
    (["compress", "--teacher", "gpt-17"], "unknown teacher 'gpt-17'"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tmp_path / "home"))
    f = tmp_path / "f.py"
    f.write_text("x = 1\n")
    args = [a.format(missing=tmp_path / "missing.py", file=f) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pocketpilot: error:") and message in err[0], err
    assert not (tmp_path / "home").exists()


def test_no_artifact_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tmp_path / "home"))
    f = tmp_path / "f.py"
    f.write_text("x = 1\n")
    assert main(["complete", str(f), "--line", "1", "--col", "1"]) == 2
    assert "create one with: pocketpilot compress" in capsys.readouterr().err


def test_list_json(tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("POCKETPILOT_HOME", str(tiny_home))
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["artifacts"]
    assert len(rows) == 1 and rows[0]["active"] and rows[0]["method"] == "int8"
    assert rows[0]["artifact_bytes"] > 0 and rows[0]["teacher_bytes"] > rows[0]["artifact_bytes"]


def test_method_help_names_every_registered_method():
    from pocketpilot.cli import method_help
    from pocketpilot.compression.methods import METHODS

    text = method_help()
    assert "int8 (default): " + METHODS["int8"].description in text
    assert all(f"{m.name}: {m.description}" in text for m in METHODS.values() if m.name != "int8")


def test_serve_and_help_do_not_import_torch():
    code = ("import sys; from pocketpilot.cli import build_parser; build_parser(); "
            "import pocketpilot.lsp_server.server; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
