"""Run a generated Python program in an isolated, resource-limited process.

Where Linux allows unprivileged user namespaces (most distributions; often not inside a
container without them), the program is **isolated** (the set-up is in :mod:`.sandbox_init`,
what ``bwrap`` does, with the standard library only):

* new user, mount, PID, network, IPC and UTS namespaces: no network at all (not even loopback),
  no view of other processes (``/proc`` shows its own PID namespace only);
* a root built from read-only binds of the system folders (``/usr``, ``/lib*``, ``/bin``) and
  the interpreter's prefixes; everything else (``/etc``, ``/home``, ``/root``, the caller's
  project) is absent; its folder at ``/sandbox`` (also its ``HOME``) is the only writable place
  that outlives it, ``/tmp`` and ``/dev/shm`` are private;
* no capabilities (bounding set dropped, ``no_new_privs``); a caller running as root first
  drops to ``nobody`` (so ``RLIMIT_NPROC`` holds and no root-owned file is writable);
* ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``, no core dumps;
* every process it starts is killed when it returns (it runs under PID 1 of its namespace).

Where namespaces are denied, the program still runs in a separate ``sys.executable -I``
process, as ``nobody`` when the caller is root, with the same limits, stdin closed, and every
process it started (orphans included: the supervisor is a child subreaper) killed on return;
but it is **not isolated**: it can reach the network and read what that user can read.
:func:`isolation` says which applies and why; the HumanEval / ReCode results and reports carry
its one-line description.

Programs are meant to be run one at a time (no pool): evaluation machines have few cores.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Outcomes of :func:`run_program`.
STATUSES = ("passed", "failed", "timeout", "memory", "error")
#: Largest file the program may write (bytes): bounds its stderr log and any file it writes.
MAX_FILE_BYTES = 16 << 20
#: Most processes (and threads) the program may have at once, itself included (``RLIMIT_NPROC``).
MAX_PROCESSES = 32
#: ``SandboxResult.detail`` is cut to this many characters.
DETAIL_CHARS = 200
#: the uid / gid a root caller's program runs as
NOBODY = 65534
#: the supervisor the program runs under (executed as a file: it imports nothing of ours)
INIT = Path(__file__).with_name("sandbox_init.py")
#: seconds the supervisor gets beyond the program's wall-clock limit before it is killed itself
GRACE_S = 10.0


@dataclass
class SandboxResult:
    """Outcome of one program run.

    Attributes:
        status: ``"passed"`` (exit status 0), ``"failed"`` (an ``AssertionError``: a test did not
            hold), ``"timeout"`` (wall-clock limit, or CPU limit: ``SIGXCPU``), ``"memory"``
            (``MemoryError`` under the address-space limit, or killed by the OOM killer) or
            ``"error"`` (any other exception, a syntax error, a crash, a sandbox that failed).
        passed: ``status == "passed"``.
        ms: wall time of the program (ms).
        detail: the last non-empty line of the program's stderr (cut to :data:`DETAIL_CHARS`),
            or a short description of what stopped it.
        killed: processes the program left running that were killed when it returned.
    """

    status: str
    passed: bool
    ms: float
    detail: str = ""
    killed: int = 0


@dataclass(frozen=True)
class Isolation:
    """How programs run here (:func:`isolation`).

    Attributes:
        namespaces: the program runs in its own user, mount, PID and network namespaces.
        uid: the uid the program runs as on the host (``None``: the caller's).
        description: one line for reports: starts with ``"isolated:"`` or ``"not isolated: <reason>"``.
    """

    namespaces: bool
    uid: int | None
    description: str

    @property
    def isolated(self) -> bool:
        """True when the program runs in namespaces (no network, no view of the caller's files)."""
        return self.namespaces


def _modes() -> list[tuple[bool, int | None]]:
    """``(namespaces, uid)`` to try, strongest first."""
    root = os.geteuid() == 0
    if not sys.platform.startswith("linux"):
        return [(False, None)]
    return [(True, NOBODY), (True, None), (False, NOBODY), (False, None)] if root else [(True, None), (False, None)]


def _describe(namespaces: bool, uid: int | None, reason: str) -> str:
    who = "as nobody" if uid is not None else ("as root" if os.geteuid() == 0 else "as the calling user")
    if namespaces:
        nproc = "" if uid is not None or os.geteuid() != 0 else " (RLIMIT_NPROC not enforced for root)"
        return ("isolated: own user, mount, PID and network namespaces (no network), read-only system folders, "
                f"private /sandbox and /tmp, no capabilities, {who}; memory, CPU, file-size and process limits"
                f"{nproc}; every process it starts killed on return")
    return (f"not isolated: {reason}; the program runs in a separate process {who} with memory, CPU, file-size and "
            "process limits and every process it starts killed on return, but it can reach the network and read "
            "what that user can read")


@functools.lru_cache(maxsize=1)
def isolation() -> Isolation:
    """The strongest way programs can run on this machine, found once per process by a trial run.

    Namespaces are tried first (as ``nobody`` when the caller is root, then as the caller), then
    a plain child process; the reason the namespaces failed goes into the description.
    """
    reason = "user namespaces are Linux only" if not sys.platform.startswith("linux") else ""
    if not any(ns for ns, _ in _modes()):
        reason = reason or "namespaces are not tried here"
    for namespaces, uid in _modes():
        result, error = _run("import sys\nsys.exit(7)\n", 10.0, 256, namespaces, uid)
        if error is None and result.get("rc") == 7:
            return Isolation(namespaces, uid, _describe(namespaces, uid, reason))
        if namespaces:  # the last namespace attempt (as the caller itself) says most plainly why
            why = error or _last_line(result.get("stderr", "")) or "the trial program did not run"
            reason = f"Linux denied the namespaces ({why})"
    return Isolation(False, None, _describe(False, None, reason or "no way to run a program was found"))


def _binds() -> list[str]:
    """Host paths shown read-only in the new root: system folders and the interpreter's prefixes."""
    paths = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
             sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.path.abspath(sys.executable))}
    return sorted(p for p in paths if p and os.path.lexists(p))


def _prepare(workdir: str, uid: int | None) -> tuple[str, str]:
    """Create ``box/`` (the program's folder) and ``root/`` (the new root's mount point) in ``workdir``."""
    box, root = os.path.join(workdir, "box"), os.path.join(workdir, "root")
    os.mkdir(box)
    os.mkdir(root)
    if uid is not None:
        os.chmod(workdir, 0o711)  # nobody may pass through, not list
        for path in (box, root):
            os.chown(path, uid, uid)
    return box, root


def _config(program_path: str, box: str, root: str, namespaces: bool, uid: int | None, timeout_s: float,
            memory_mb: int) -> dict:
    inside = "/sandbox" if namespaces else box
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": inside, "TMPDIR": "/tmp" if namespaces else inside,
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    return {"namespaces": namespaces, "uid": uid, "gid": uid, "box": box, "root": root, "binds": _binds(),
            "cwd": inside, "argv": [sys.executable, "-I", os.path.join(inside, os.path.basename(program_path))],
            "env": env, "timeout_s": timeout_s, "memory_mb": memory_mb, "cpu_s": math.ceil(timeout_s) + 1,
            "file_bytes": MAX_FILE_BYTES, "nproc": _nproc(namespaces, uid)}


def _nproc(namespaces: bool, uid: int | None) -> int:
    """``RLIMIT_NPROC`` for the program: counted per user, so outside namespaces the user's processes come on top."""
    if namespaces:
        return MAX_PROCESSES
    target = os.geteuid() if uid is None else uid
    count = 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == target
            except OSError:
                pass
    return count + MAX_PROCESSES


def _run(program: str, timeout_s: float, memory_mb: int, namespaces: bool, uid: int | None,
         workdir_out: list | None = None) -> tuple[dict, str | None]:
    """Run ``program`` under the supervisor; ``(its report, None)`` or ``({...}, what went wrong)``.

    The report holds ``rc``, ``timed_out``, ``ms``, ``killed`` and ``stderr`` (the program's).
    """
    workdir = tempfile.mkdtemp(prefix="pocketpilot-sandbox-")
    if workdir_out is not None:
        workdir_out.append(workdir)
    proc = None
    try:
        box, root = _prepare(workdir, uid)
        script = os.path.join(box, "program.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(program)
        errlog = os.path.join(workdir, "stderr.txt")
        cfg = _config(script, box, root, namespaces, uid, timeout_s, memory_mb)
        with open(errlog, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(INIT), json.dumps(cfg)], cwd="/",
                                    env={"PATH": cfg["env"]["PATH"], "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, start_new_session=True, close_fds=True)
            try:
                out, _ = proc.communicate(timeout=timeout_s + GRACE_S)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                out, _ = proc.communicate()
        with open(errlog, encoding="utf-8", errors="replace") as fh:
            stderr = fh.read(1 << 20)
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            report = json.loads(lines[-1]) if lines else {}
        except ValueError:
            report = {}
        report["stderr"] = stderr
        if "error" in report:
            return report, str(report["error"])
        if "rc" not in report:
            return report, _last_line(stderr) or f"the supervisor exited with status {proc.returncode}"
        return report, None
    except OSError as exc:
        return {}, f"cannot start the sandbox: {exc.strerror or exc}"
    finally:
        if proc is not None:
            _kill_group(proc)
            if proc.returncode is None:
                proc.wait()
        _remove(workdir)


def _remove(workdir: str) -> None:
    """Delete ``workdir``, also what the program made unreadable for the caller (e.g. ``chmod 000``)."""
    def retry(func, path, exc_info):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(workdir, onerror=retry)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the supervisor's process group (its session); ignore an already-gone group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:DETAIL_CHARS] if lines else ""


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run ``program`` (Python source) in an isolated, resource-limited process (see the module docstring).

    Args:
        program: the whole program, e.g. prompt + completion + tests + ``check(...)``.
        timeout_s: wall-clock limit (seconds); the CPU-time limit is ``ceil(timeout_s) + 1``.
        memory_mb: address-space limit of the program (MiB); the interpreter itself needs ~30.

    Returns:
        a :class:`SandboxResult`; never raises for anything the program does. How isolated the
        run was is :func:`isolation` (``isolation().description``).
    """
    how = isolation()
    report, error = _run(program, timeout_s, memory_mb, how.namespaces, how.uid)
    if error is not None:
        return SandboxResult("error", False, 0.0, f"sandbox failed: {error}"[:DETAIL_CHARS])
    return _classify(report["rc"], report["stderr"], report["timed_out"], timeout_s, report["ms"], report["killed"])


def _classify(rc: int, stderr: str, timed_out: bool, timeout_s: float, ms: float, killed: int = 0) -> SandboxResult:
    detail = _last_line(stderr)
    if timed_out:
        return SandboxResult("timeout", False, ms, f"killed after {timeout_s:g} s (wall clock)", killed)
    if rc == 0:
        return SandboxResult("passed", True, ms, detail, killed)
    if rc == -signal.SIGXCPU:
        return SandboxResult("timeout", False, ms, "killed by the CPU-time limit (SIGXCPU)", killed)
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return SandboxResult("memory", False, ms, detail or "MemoryError", killed)
    if rc == -signal.SIGKILL:  # not ours (that is ``timed_out``): the hard CPU limit or the OOM killer
        if ms >= 1000 * math.ceil(timeout_s):
            return SandboxResult("timeout", False, ms, "killed by the CPU-time limit (SIGKILL)", killed)
        return SandboxResult("memory", False, ms, "killed (SIGKILL), probably out of memory", killed)
    if detail.startswith("AssertionError"):
        return SandboxResult("failed", False, ms, detail, killed)
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return SandboxResult("error", False, ms, detail or f"killed by signal {name}", killed)
    return SandboxResult("error", False, ms, detail or f"exit status {rc}", killed)
