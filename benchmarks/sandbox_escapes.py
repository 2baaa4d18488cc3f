"""Benchmark (not a test): which of issue 18's sandbox escapes each way of running code stops here.

Runs the escape programs of ``tests/unit/test_sandbox.py`` (write outside its folder, read
``/etc/shadow`` and other files, a TCP connection, the caller's environment through ``/proc``, a
process left running, capabilities and a fork bomb) under every mode of
:func:`pocketpilot.evaluation.sandbox._modes` that works on this machine, and prints, per mode,
its description and ``escapes N/M``. The figures are in docs/results.md.

    python benchmarks/sandbox_escapes.py
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pocketpilot.evaluation import sandbox  # noqa: E402
from tests.unit import test_sandbox as cases  # noqa: E402

ESCAPES = [name for name in dir(cases) if name.startswith("test_escape_")] + ["test_no_capabilities_and_a_process_limit"]


class _Env:
    """The one ``monkeypatch`` method the escape tests use, undone by :meth:`undo`."""

    def __init__(self):
        self.saved = {}

    def setenv(self, key, value):
        self.saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def undo(self):
        for key, value in self.saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def run_mode(mode: tuple[bool, int | None]) -> None:
    """Print the description of ``mode`` and which escapes got through."""
    real = sandbox._modes
    sandbox._modes = lambda: [mode]
    sandbox.isolation.cache_clear()
    how = sandbox.isolation()
    try:
        if (how.namespaces, how.uid) != mode:
            print(f"mode {mode}: does not run here ({how.description})")
            return
        escaped = []
        for name in ESCAPES:
            env = _Env()
            fn = getattr(cases, name)
            args = [Path(tempfile.mkdtemp()) if p == "tmp_path" else env for p in inspect.signature(fn).parameters]
            try:
                fn(*args)
            except AssertionError:
                escaped.append(name.removeprefix("test_escape_"))
            except BaseException as exc:  # a pytest.skip: not applicable in this mode
                print(f"  {name}: {type(exc).__name__} {exc}")
            finally:
                env.undo()
        print(f"mode {mode}: {how.description}")
        print(f"  escapes {len(escaped)}/{len(ESCAPES)}" + (f": {', '.join(escaped)}" if escaped else ""))
    finally:
        sandbox._modes = real
        sandbox.isolation.cache_clear()


if __name__ == "__main__":
    for mode in sandbox._modes():
        run_mode(mode)
