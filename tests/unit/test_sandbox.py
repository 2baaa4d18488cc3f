"""The code-execution sandbox (pocketpilot.evaluation.sandbox): outcomes, limits, and each escape it must stop.

Where this OS denies namespaces (e.g. a container without user namespaces), the isolation tests
are skipped with the reason, and the fallback is checked to say "not isolated: <reason>".
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pocketpilot.evaluation import sandbox
from pocketpilot.evaluation.sandbox import isolation, run_program

HOW = isolation()
needs_isolation = pytest.mark.skipif(not HOW.isolated, reason=f"this OS gives no isolation: {HOW.description}")


def _marked_processes(marker: str) -> list[int]:
    """Live (not zombie) processes on the host whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


@pytest.fixture
def forced_fallback(monkeypatch):
    """Run programs as if this OS denied namespaces."""
    monkeypatch.setattr(sandbox, "_modes", lambda: [(False, None)])
    sandbox.isolation.cache_clear()
    yield sandbox.isolation()
    sandbox.isolation.cache_clear()


# ---------------------------------------------------------------- outcomes and limits


def test_passes_fails_and_errors():
    ok = run_program("assert sum([1, 2]) == 3\n")
    assert (ok.status, ok.passed) == ("passed", True)
    bad = run_program("assert sum([1, 2]) == 4, 'wrong sum'\n")
    assert (bad.status, bad.passed) == ("failed", False)
    assert bad.detail == "AssertionError: wrong sum"
    err = run_program("def f(:\n")
    assert err.status == "error" and "SyntaxError" in err.detail


def test_runs_in_another_process_in_a_temp_folder_removed_afterwards():
    prog = (f"import os\nassert os.getpid() != {os.getpid()}\nassert os.getcwd() != {os.getcwd()!r}\n"
            "open('made-here.txt', 'w').write('x')\nraise ValueError(os.getcwd())\n")
    res = run_program(prog)
    assert res.status == "error" and res.detail.startswith("ValueError: ")
    cwd = res.detail.split(": ", 1)[1]
    if HOW.isolated:
        assert cwd == "/sandbox"
    else:
        assert "pocketpilot-sandbox-" in cwd and not Path(cwd).exists()
    assert not list(Path(sandbox.tempfile.gettempdir()).glob("pocketpilot-sandbox-*/box/made-here.txt"))


def test_uses_the_running_interpreter_in_isolated_mode():
    res = run_program(f"import sys\nassert sys.executable == {sys.executable!r}\nassert sys.flags.isolated\n")
    assert res.passed, res.detail


def test_timeout_kills_the_program_and_what_it_started():
    marker = f"pp-timeout-{uuid.uuid4().hex}"
    prog = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
            "while True:\n    pass\n")
    t0 = time.perf_counter()
    res = run_program(prog, timeout_s=1.0)
    assert time.perf_counter() - t0 < 5
    assert (res.status, res.passed) == ("timeout", False) and 900 < res.ms < 5000
    assert not _marked_processes(marker), "the helper the program started survived the timeout"


def test_memory_bombs_and_caller_unaffected():
    before = resource.getrlimit(resource.RLIMIT_AS)
    big = run_program("x = bytearray(4 << 30)\n")
    assert (big.status, big.passed) == ("memory", False)
    grow = run_program("x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n", memory_mb=256)
    assert grow.status == "memory"
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    buf = bytearray(300 << 20)  # more than the child's 256 MiB limit: the limit stayed in the child
    assert len(buf) == 300 << 20


# ---------------------------------------------------------------- escapes (issue 18, item 14)


@needs_isolation
def test_escape_write_outside_its_folder(tmp_path):
    name = f"pp-escape-{uuid.uuid4().hex}"
    targets = [tmp_path / name, Path(sys.prefix) / name, Path("/usr") / name, Path("/") / name, Path("/etc") / name]
    prog = (
        "import os\nwrote = []\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        wrote.append(path)\n"
        "    except OSError:\n        pass\n"
        f"open('/tmp/{name}', 'w').write('x')\n"  # its own /tmp: allowed, and gone afterwards
        "assert not wrote, wrote\n"
    )
    try:
        res = run_program(prog)
        assert res.passed, res.detail
        assert not [t for t in targets if t.exists()] and not (Path("/tmp") / name).exists()
    finally:
        for t in targets + [Path("/tmp") / name]:
            t.unlink(missing_ok=True)


@needs_isolation
def test_escape_read_unreadable_or_outside_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o600)
    paths = ["/etc/shadow", "/etc/passwd", str(secret), str(Path.home() / ".bashrc"), str(Path.cwd() / "pyproject.toml")]
    prog = (
        "read = []\n"
        f"for path in {paths!r}:\n"
        "    try:\n        open(path).read(1)\n        read.append(path)\n"
        "    except OSError:\n        pass\n"
        "assert not read, read\n"
    )
    res = run_program(prog)
    assert res.passed, res.detail


@needs_isolation
def test_escape_tcp_connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(server, accepted))
    thread.start()
    prog = (
        "import socket\nreached = []\n"
        f"for host in ['127.0.0.1', 'localhost', '1.1.1.1']:\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=1).close()\n"
        "        reached.append(host)\n"
        "    except OSError:\n        pass\n"
        "assert not reached, reached\n"
    )
    res = run_program(prog)
    thread.join()
    server.close()
    assert res.passed, res.detail
    assert not accepted, "the program reached a server on the caller's loopback"


def _accept(server, accepted):
    try:
        accepted.append(server.accept())
    except OSError:
        pass


@needs_isolation
def test_escape_reading_the_callers_environment_through_proc(monkeypatch):
    secret = f"pp-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("PP_SANDBOX_SECRET", secret)
    prog = (
        "import os\nfound = []\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    for name in ('environ', 'cmdline'):\n"
        "        try:\n"
        f"            if {secret!r}.encode() in open(f'/proc/{{pid}}/{{name}}', 'rb').read():\n"
        "                found.append((pid, name))\n"
        "        except OSError:\n            pass\n"
        f"assert {secret!r} not in str(dict(os.environ))\n"
        "assert not found, found\n"
        f"assert os.getppid() in (0, 1) and int(max(os.listdir('/proc'), key=lambda p: p.isdigit() and int(p))) < 100\n"
    )
    res = run_program(prog)
    assert res.passed, res.detail


@needs_isolation
def test_escape_process_left_running():
    marker = f"pp-daemon-{uuid.uuid4().hex}"
    prog = (  # a double-forked daemon in its own session: out of reach of a process-group kill
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
    )
    res = run_program(prog)
    assert res.passed, res.detail
    assert res.killed >= 1
    time.sleep(0.2)
    assert not _marked_processes(marker), "a process the program started outlived it"


@needs_isolation
def test_no_capabilities_and_a_process_limit():
    prog = (
        "import os\n"
        "status = open('/proc/self/status').read()\n"
        "assert 'CapEff:\\t0000000000000000' in status and 'CapBnd:\\t0000000000000000' in status, status\n"
        "kids = []\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n            import time; time.sleep(30)\n            os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError:\n    pass\n"
        f"assert len(kids) < {sandbox.MAX_PROCESSES}, len(kids)\n"
    )
    res = run_program(prog, timeout_s=20)
    assert res.passed, res.detail
    if HOW.uid is None and os.geteuid() == 0:
        pytest.skip("RLIMIT_NPROC does not bind root's processes; the sandbox could not drop to nobody here")


# ---------------------------------------------------------------- honest reporting


def test_the_description_says_what_holds():
    text = HOW.description
    assert text.startswith("isolated:" if HOW.isolated else "not isolated:"), text
    assert "\n" not in text


def test_fallback_says_not_isolated_with_the_reason_and_still_kills_leftovers(forced_fallback):
    assert not forced_fallback.isolated
    assert forced_fallback.description.startswith("not isolated: ")
    assert "network" in forced_fallback.description  # says what it cannot stop
    marker = f"pp-daemon-{uuid.uuid4().hex}"
    prog = ("import os, sys\n"
            "if os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n")
    res = run_program(prog)
    assert res.passed, res.detail
    time.sleep(0.2)
    assert not _marked_processes(marker)


def test_humaneval_results_and_report_carry_the_sandbox_description(synthetic_data):
    from pocketpilot.evaluation import humaneval as he
    from pocketpilot.evaluation import report

    class Canonical:  # a "model" that writes the canonical solution
        pass

    problems = he.load_problems()
    res = he.evaluate_humaneval(Canonical(), problems, cache=_canonical_cache(he, problems))
    assert res["sandbox"] == isolation().description and res["pass@1"] == 100.0
    text = "\n".join(report._humaneval_section({"m": {"humaneval": res}}))
    assert f"Generated code ran {isolation().description}." in text


def _canonical_cache(he, problems):
    cache = he.EvalCache()
    for p in problems:
        cache.generations[(p["prompt"], 300)] = (he.as_completion(p["prompt"], p["canonical_solution"]),
                                                 {"new_tokens": 1, "ms": 0.0})
    return cache
