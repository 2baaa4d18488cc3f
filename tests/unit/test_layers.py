"""The layer contracts of pyproject.toml ([tool.importlinter]) hold: one-way layers, no LSP below the
server, no import cycles between sibling modules (function-level imports included)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: pip install -e '.[test]' installs import-linter")
    return [exe]


def test_import_linter_contracts_are_kept():
    out = subprocess.run([*_lint_imports(), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_a_cycle_or_an_upward_import_breaks_a_contract(tmp_path):
    # the same contracts on a copy of the package with one upward import added: the check must fail
    pkg = tmp_path / "pocketpilot"
    shutil.copytree(ROOT / "pocketpilot", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(pkg / "store.py", "a") as f:
        f.write("\n\ndef _bad():\n    from pocketpilot.compression import recipe  # noqa: F401\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([*_lint_imports(), "--config", str(ROOT / "pyproject.toml")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode != 0 and "BROKEN" in out.stdout
    assert "pocketpilot.store -> pocketpilot.compression.recipe" in out.stdout
