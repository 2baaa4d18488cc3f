"""Run a generated Python program in a separate, resource-limited process.

This is a guard against *accidents* (an infinite loop, a runaway allocation, a stray file
written into the working directory, a forked helper left behind), **not a security
boundary**: the child runs as the same user, can read the same files and reach the
network. Only evaluate code from models you would let run on this machine anyway.

What the guard does:

* the program runs in ``sys.executable -I`` (isolated mode: no ``PYTHON*`` variables, no user
  site-packages, no script or current directory on ``sys.path``), never in the caller;
* in a fresh temporary working directory (also its ``HOME`` and ``TMPDIR``), removed afterwards;
* with stdin closed, stdout discarded and stderr written to a size-limited file;
* with ``RLIMIT_AS`` (address space, ``memory_mb``), ``RLIMIT_CPU`` (CPU seconds),
  ``RLIMIT_FSIZE`` (largest file written) and no core dumps, set in ``preexec_fn``;
* in a new session (process group), so on a wall-clock timeout the whole group, including
  any process the program started, is killed with ``SIGKILL``.

Programs are meant to be run one at a time (no pool): evaluation machines have few cores.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

#: Outcomes of :func:`run_program`.
STATUSES = ("passed", "failed", "timeout", "memory", "error")
#: Largest file the program may write (bytes): bounds its stderr log and any file it writes.
MAX_FILE_BYTES = 16 << 20
#: ``SandboxResult.detail`` is cut to this many characters.
DETAIL_CHARS = 200


@dataclass
class SandboxResult:
    """Outcome of one program run.

    Attributes:
        status: ``"passed"`` (exit status 0), ``"failed"`` (an ``AssertionError``: a test did not
            hold), ``"timeout"`` (wall-clock limit, or CPU limit: ``SIGXCPU``), ``"memory"``
            (``MemoryError`` under the address-space limit, or killed by the OOM killer) or
            ``"error"`` (any other exception, a syntax error, a crash).
        passed: ``status == "passed"``.
        ms: wall time of the child process (ms).
        detail: the last non-empty line of the program's stderr (cut to :data:`DETAIL_CHARS`),
            or a short description of what stopped it.
    """

    status: str
    passed: bool
    ms: float
    detail: str = ""


def _limits(memory_mb: int, cpu_s: int):
    """``preexec_fn`` for the child: resource limits (runs after fork, before exec)."""

    def apply() -> None:
        import resource  # lazy: Unix-only, and needed only in the forked child

        mem = int(memory_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (its session); ignore an already-gone group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:DETAIL_CHARS] if lines else ""


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run ``program`` (Python source) in a separate, resource-limited process.

    A guard against accidents, not a security boundary (see the module docstring).

    Args:
        program: the whole program, e.g. prompt + completion + tests + ``check(...)``.
        timeout_s: wall-clock limit (seconds); the CPU-time limit is ``ceil(timeout_s) + 1``.
        memory_mb: address-space limit of the child (MiB); the interpreter itself needs ~30.

    Returns:
        a :class:`SandboxResult`; never raises for anything the program does.
    """
    workdir = tempfile.mkdtemp(prefix="pocketpilot-sandbox-")
    script = os.path.join(workdir, "program.py")
    errlog = os.path.join(workdir, "stderr.txt")
    with open(script, "w", encoding="utf-8") as fh:
        fh.write(program)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
    }
    cpu_s = math.ceil(timeout_s) + 1
    timed_out = False
    proc = None
    t0 = time.perf_counter()
    try:
        with open(errlog, "wb") as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", script],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    preexec_fn=_limits(memory_mb, cpu_s),
                    close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult("error", False, 0.0, f"cannot start the sandbox: {exc}"[:DETAIL_CHARS])
            try:
                proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.communicate()
        ms = (time.perf_counter() - t0) * 1000
        with open(errlog, encoding="utf-8", errors="replace") as fh:
            stderr = fh.read()
        return _classify(proc.returncode, stderr, timed_out, timeout_s, ms)
    finally:
        if proc is not None:
            _kill_group(proc)  # helpers the program forked, whatever happened
            if proc.returncode is None:
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _classify(rc: int, stderr: str, timed_out: bool, timeout_s: float, ms: float) -> SandboxResult:
    detail = _last_line(stderr)
    if timed_out:
        return SandboxResult("timeout", False, ms, f"killed after {timeout_s:g} s (wall clock)")
    if rc == 0:
        return SandboxResult("passed", True, ms, detail)
    if rc == -signal.SIGXCPU:
        return SandboxResult("timeout", False, ms, "killed by the CPU-time limit (SIGXCPU)")
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return SandboxResult("memory", False, ms, detail or "MemoryError")
    if rc == -signal.SIGKILL:  # not ours (that is ``timed_out``): the hard CPU limit or the OOM killer
        if ms >= 1000 * math.ceil(timeout_s):
            return SandboxResult("timeout", False, ms, "killed by the CPU-time limit (SIGKILL)")
        return SandboxResult("memory", False, ms, "killed (SIGKILL), probably out of memory")
    if detail.startswith("AssertionError"):
        return SandboxResult("failed", False, ms, detail)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return SandboxResult("error", False, ms, detail or f"killed by signal {name}")
    return SandboxResult("error", False, ms, detail or f"exit status {rc}")
