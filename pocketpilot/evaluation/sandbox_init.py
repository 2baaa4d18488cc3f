"""The sandbox's first process: isolates itself, runs one program, kills what it left, reports.

Run by :func:`pocketpilot.evaluation.sandbox.run_program` as ``python -I -S sandbox_init.py CONFIG``
(standard library only: it is executed as a file, never imported by PocketPilot). ``CONFIG`` is
JSON with ``namespaces`` (bool), ``uid`` / ``gid`` (drop to them, or ``null``), ``box`` (the
program's folder), ``root`` (an empty folder for the new root), ``binds`` (host paths shown
read-only), ``argv``, ``env``, ``timeout_s``, ``memory_mb``, ``cpu_s``, ``file_bytes``, ``nproc``.

With ``namespaces``, after dropping to ``uid`` (when set) it enters new user, mount, PID,
network, IPC and UTS namespaces (``unshare(2)``, as ``bwrap`` or ``unshare -r`` do), builds a
root from read-only binds of the system and interpreter folders, the program's folder at
``/sandbox`` (writable), a private ``/tmp`` and ``/dev/shm`` and a ``/proc`` of its own PID
namespace, and ``pivot_root``s into it. It is PID 1 of that namespace: when it exits, the kernel
kills every process left in it. The program runs with no capabilities (bounding set dropped,
``no_new_privs``), under ``RLIMIT_AS``/``CPU``/``FSIZE``/``NPROC``/``CORE``.

Without ``namespaces`` the program runs as ``uid`` (when set) with the same limits, and this
process, a child subreaper, kills every process the program left (orphans included) on return.

The one line it writes on stdout (a pipe only it holds; it is not dumpable, so the program cannot
reach it through ``/proc``) is JSON: ``{"rc", "timed_out", "ms", "killed"}`` or ``{"error"}``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 4, 24, 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
#: pivot_root(2) has no glibc wrapper: its syscall number per machine (others use chroot)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
#: statvfs flags -> the mount flags a bind's read-only remount must keep (the kernel locks them in a user namespace)
LOCKED = tuple((getattr(os, st, 0), ms) for st, ms in (("ST_NOSUID", MS_NOSUID), ("ST_NODEV", MS_NODEV),
                                                        ("ST_NOEXEC", MS_NOEXEC), ("ST_NOATIME", MS_NOATIME),
                                                        ("ST_NODIRATIME", MS_NODIRATIME), ("ST_RELATIME", MS_RELATIME)))
#: device nodes the program may use
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def _prctl(option: int, arg: int = 0) -> int:
    """``prctl(2)``; -1 where the C library has none (not Linux)."""
    if not hasattr(_libc, "prctl"):
        return -1
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (needs root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


FLAGS = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
#: what an ``unshare(2)`` errno usually means, for the report
UNSHARE_HINTS = {errno.ENOSPC: "user namespaces are off or used up (/proc/sys/user/max_user_namespaces)",
                 errno.EPERM: "not permitted here (a container's seccomp profile, AppArmor, or "
                              "kernel.unprivileged_userns_clone=0)",
                 errno.EINVAL: "this kernel lacks one of the namespaces"}


def _unshare() -> None:
    if _libc.unshare(ctypes.c_int(FLAGS)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(user, mount, pid, net, ipc, uts): {os.strerror(err)}"
                           + (f": {UNSHARE_HINTS[err]}" if err in UNSHARE_HINTS else ""))


def enter_namespaces() -> None:
    """New user (mapping this uid/gid to root), mount, PID, network, IPC and UTS namespaces."""
    uid, gid = os.geteuid(), os.getegid()
    _unshare()
    _prctl(PR_SET_DUMPABLE, 1)  # /proc/self/*_map belong to root while not dumpable
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    _prctl(PR_SET_DUMPABLE, 0)


def enter_namespaces_as(uid: int, gid: int) -> None:
    """As root: a child enters new namespaces whose root is host ``uid``/``gid``; this process relays its exit.

    Returns in the child, still host root by its credentials (so it can bind folders only root
    may pass through, such as an interpreter under ``/root``) until :func:`become_namespace_root`.
    The parent writes the child's ``uid_map`` (only a privileged process in the parent namespace
    may map another uid) and exits with the child's status.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        try:
            _unshare()
        except OSError as exc:
            os.write(ready_w, b"0" + str(exc).encode())
            os._exit(3)
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            os._exit(3)
        os.close(ready_w)
        os.close(go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    answer = os.read(ready_r, 4096)
    if answer[:1] != b"1":
        os.waitpid(pid, 0)
        raise OSError(errno.EPERM, answer[1:].decode(errors="replace") or "unshare failed")
    _write(f"/proc/{pid}/uid_map", f"0 {uid} 1")
    _write(f"/proc/{pid}/gid_map", f"0 {gid} 1")
    os.write(go_w, b"1")
    os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def become_namespace_root() -> None:
    """Take the credentials of the namespace's root (host ``uid`` of :func:`enter_namespaces_as`)."""
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def open_binds(paths: list[str]) -> list[tuple[str, str, object]]:
    """``(path, kind, fd or link target)`` of each bind source and device, opened ``O_PATH`` now.

    Called in the new mount namespace while still the caller by credentials: mounting from
    ``/proc/self/fd/N`` later needs no permission to pass through the source's parents (a root
    caller's interpreter under ``/root`` stays reachable once this process is nobody). ``kind``
    is ``"link"`` (a top-level symlink such as ``/bin -> usr/bin``), ``"dir"`` or ``"file"``.
    """
    out: list[tuple[str, str, object]] = []
    covered: list[str] = []
    for path in sorted(set(paths) | set(DEVICES)):
        if not os.path.lexists(path) or any(path.startswith(c.rstrip("/") + "/") for c in covered):
            continue
        if os.path.islink(path) and os.path.dirname(path) == "/":
            out.append((path, "link", os.readlink(path)))
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        kind = "dir" if os.path.isdir(path) else "file"
        out.append((path, kind, fd))
        if kind == "dir":
            covered.append(path)
    return out


def _bind(fd: int, kind: str, dst: str, readonly: bool) -> None:
    if kind == "dir":
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND | MS_REC)
    if readonly:
        keep = sum(ms for st, ms in LOCKED if os.statvfs(fd).f_flag & st)
        _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def build_root(cfg: dict, binds: list[tuple[str, str, object]]) -> None:
    """Mount the new root at ``cfg["root"]`` and pivot into it (as root of the new namespaces)."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, kind, ref in binds:
        if kind == "link":
            os.symlink(ref, root + path)
        else:
            _bind(ref, kind, root + path, readonly=path not in DEVICES)
            os.close(ref)
    for tmp in ("/tmp", "/dev/shm"):
        os.makedirs(root + tmp, exist_ok=True)
        _mount("tmpfs", root + tmp, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    os.makedirs(root + "/sandbox")
    _mount(cfg["box"], root + "/sandbox", None, MS_BIND)
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is not None:
        _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", ctypes.c_int(MNT_DETACH)), "umount the old root")
    else:
        os.chroot(".")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_capabilities() -> None:
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def _limits(cfg: dict) -> None:
    mem = int(cfg["memory_mb"]) << 20
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, cfg["file_bytes"]),
                       (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, cfg["nproc"])):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))


def _exec_program(cfg: dict) -> None:
    """In the forked child: stdin/stdout to /dev/null, limits, privileges, then exec the program."""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.closerange(3, 1 << 16)
        if not cfg["namespaces"] and cfg["uid"] is not None:
            drop_to(cfg["uid"], cfg["gid"])
        os.chdir(cfg["cwd"])
        _limits(cfg)
        if cfg["namespaces"]:
            _drop_capabilities()
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave without cleanup handlers
        os.write(2, f"sandbox: cannot start the program: {exc}\n".encode())
    os._exit(127)


def _children() -> list[int]:
    """Live PIDs whose parent is this process (its children, and orphans reparented to it); zombies aside."""
    me, out = str(os.getpid()), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if ppid == me and state not in ("Z", "X"):
                out.append(int(entry))
    return out


def kill_leftovers() -> int:
    """SIGKILL every process left below this one (orphans come back to it as subreaper / PID 1); how many."""
    killed = 0
    for _ in range(10_000):
        kids = _children()
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            if not kids:
                return killed
        if not kids:
            time.sleep(0.001)
    return killed


class _Deadline(Exception):
    pass


def supervise(cfg: dict) -> dict:
    """Fork the program, wait for it under the wall-clock limit, kill what is left; the result."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _exec_program(cfg)

    def expire(signum, frame):
        raise _Deadline

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(cfg["timeout_s"]))
    timed_out = False
    try:
        status = os.waitpid(pid, 0)[1]
    except _Deadline:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    ms = (time.perf_counter() - t0) * 1000
    killed = kill_leftovers()
    return {"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out, "ms": round(ms, 2), "killed": killed}


def _report(result: dict) -> None:
    os.write(1, (json.dumps(result) + "\n").encode())


def main(cfg: dict) -> int:
    """Isolate (or not), run the program, report on stdout; the exit status is 0 unless isolation failed."""
    _prctl(PR_SET_DUMPABLE, 0)
    try:
        if cfg["namespaces"]:
            mapped = cfg["uid"] is not None
            if mapped:
                enter_namespaces_as(cfg["uid"], cfg["gid"])
            else:
                enter_namespaces()
            pid = os.fork()  # the child is PID 1 of the new PID namespace
            if pid:
                status = os.waitpid(pid, 0)[1]
                return os.waitstatus_to_exitcode(status)
            _prctl(PR_SET_DUMPABLE, 0)
            binds = open_binds(cfg["binds"])
            if mapped:
                become_namespace_root()
                _prctl(PR_SET_DUMPABLE, 0)
            build_root(cfg, binds)
        elif sys.platform.startswith("linux"):
            _check(_prctl(PR_SET_CHILD_SUBREAPER, 1), "PR_SET_CHILD_SUBREAPER")
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, exc.errno) if exc.errno else None
        _report({"error": f"{exc.strerror or exc}" + (f" [{name}]" if name else "")})
        return 3
    _report(supervise(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
