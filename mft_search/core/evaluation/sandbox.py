"""Run untrusted (model-generated) Python programs in a separate, confined process.

The program never runs in the calling process. `run_program` starts this very file as a
launcher (`python -I -S sandbox.py CONFIG`, so the package and its heavy imports are never
loaded); the launcher puts a child into fresh namespaces where the OS allows it, the child
confines itself and execs a fresh `python -I` on the program:

    caller --Popen(new session)--> launcher --fork--> init (pid 1 of a new pid namespace)
                                                        --fork--> program (execs python -I)

Layers, strongest first (each recorded in `SandboxResult.isolation` when it was applied):

- "uid": when started as root the program runs as an unprivileged user (default `nobody`),
  so it cannot touch files it does not own, kill other users' processes or raise limits;
  `no_new_privs` stops setuid binaries from giving privileges back.
- "pidns": the program is inside a new pid namespace whose init is ours: when init exits,
  the kernel kills every process left in it, including double-forked, setsid'd ones.
- "netns": a new network namespace with no interfaces up: no connections, not even to
  127.0.0.1 of the host.
- "mountns": a private /proc, and small private tmpfs mounts on /tmp, /var/tmp and /dev/shm
  (the program's working directory and HOME live in that /tmp and vanish with it). An
  interpreter whose installation lives under one of them (a venv in /tmp) is bound back
  read-only at its own path, or the program would run with another Python.
- "rlimits" (always): CPU seconds, address space, processes, file size, no core files.
- Python-level guards in the program's interpreter (no os.kill, os.system, subprocess...) as
  defence in depth only: a program can get around them (`import posix`).

The caller enforces the wall-clock limit: on timeout it SIGKILLs the launcher's process group;
the init dies with it (parent-death signal) and takes the whole namespace down.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

Status = Literal["passed", "failed", "timeout", "error"]

_SETUP_FAILED = 125  # exit status of the launcher when the sandbox itself could not start
_PROGRAM = "program.py"
_LOG = "output.log"
_DONE = "done"  # the runner writes the run's token here once the program has run to its end
_TOKEN_FD, _DONE_FD = 3, 4  # the runner's descriptors: read the token, then report it
_PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")

# Linux constants (include/uapi/linux/sched.h, mount.h, prctl.h).
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x00020000,
    0x10000000,
    0x20000000,
    0x40000000,
)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    0x1, 0x2, 0x4, 0x20, 0x1000, 0x4000, 0x40000)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended. `reason` is the tail of its output or what stopped it."""

    status: Status
    reason: str
    duration: float
    isolation: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16
    tmpfs_mb: int = 64


def run_program(
    source: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 32,
    file_size_mb: int = 16,
    python: str | None = None,
) -> SandboxResult:
    """Run `source` as `__main__` in a confined process; passed means it ran to its end and
    exited with status 0 (an exit of any status before the end, even 0, fails).

    >>> run_program("assert 1 + 1 == 2", timeout_s=5, memory_mb=512).status
    'passed'
    """
    limits = Limits(timeout_s, memory_mb, max_processes, file_size_mb)
    user = _sandbox_user()
    return _run(source, limits, user, python or _program_python(user))


def run_many(
    programs: Sequence[str], *, workers: int | None = None, **limits: float
) -> list[SandboxResult]:
    """`run_program` over `programs` with `workers` running at once, results in order."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, **limits), programs))


# --------------------------------------------------------------------------- caller side


def _sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) to run programs as: `nobody` when we are root, else None (stay as we are)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@functools.lru_cache(maxsize=None)
def _program_python(user: tuple[int, int] | None) -> str:
    """An interpreter the sandbox user can execute, preferably one with numpy.

    Ours may live where `nobody` cannot reach (a pyenv under a 0700 /root): try ours, then
    the base installation's, then the system's. numpy matters because the hub copy of
    HumanEval+ compares floats with it in its tests.
    """
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    candidates += [shutil.which(name, path="/usr/local/bin:/usr/bin:/bin") for name in
                   (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3")]
    candidates = list(dict.fromkeys(c for c in candidates if c))
    probe = Limits(timeout_s=30, memory_mb=1024)
    for check in ("import numpy", "pass"):
        for python in candidates:
            if _run(check, probe, user, python).passed:
                return python
    raise RuntimeError(f"no Python interpreter among {candidates} runs in the sandbox")


def _run(source: str, limits: Limits, user: tuple[int, int] | None, python: str) -> SandboxResult:
    start = time.monotonic()
    outer = tempfile.mkdtemp(prefix="mft-sandbox-")  # 0700: nobody cannot climb out of it
    try:
        workdir = _make_workdir(outer, source, user)
        # The token proves the program ran to its end: only the runner knows it, and it writes
        # it after the program's last statement. On stdin, not argv: /proc shows argv to all.
        token = secrets.token_hex(16)
        config = {"workdir": workdir, "user": user, "python": python, "parent": os.getpid(),
                  "limits": asdict(limits), "token": token, "expose": _hidden_prefixes(python)}
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_minimal_env(), start_new_session=True, cwd=outer,
        )
        timed_out, out, err = _wait(launcher, json.dumps(config).encode(), limits.timeout_s)
        isolation = tuple(json.loads(out or b"[]"))
        log = _tail(os.path.join(workdir, _LOG))
        duration = time.monotonic() - start
        if timed_out:
            return SandboxResult("timeout", f"killed after {limits.timeout_s:g} s", duration, isolation)
        finished = _tail(os.path.join(workdir, _DONE)) == token
        return _result(launcher.returncode, finished, err.decode(errors="replace"), log, duration, isolation)
    finally:
        shutil.rmtree(outer, onerror=_force_remove)


def _make_workdir(outer: str, source: str, user: tuple[int, int] | None) -> str:
    workdir = os.path.join(outer, "work")
    os.mkdir(workdir, 0o700)
    with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as f:
        f.write(source)
    if user is not None:
        os.chown(workdir, *user)
    return workdir


def _hidden_prefixes(python: str) -> list[str]:
    """The interpreter's installations that the private tmpfs mounts would hide: its own
    prefix (a venv) and the base one, when they live under /tmp, /var/tmp or /dev/shm."""
    prefixes = {sys.prefix, sys.base_prefix} if python == sys.executable else set()
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(python))))  # .../bin/python -> ...
    real = {os.path.realpath(p) for p in prefixes}
    return sorted(p for p in real if any(p.startswith(tmp + "/") for tmp in _PRIVATE_TMP))


def _minimal_env() -> dict[str, str]:
    """No inherited variables: secrets in the caller's environment never reach the program."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _wait(launcher: subprocess.Popen, config: bytes, timeout_s: float) -> tuple[bool, bytes, bytes]:
    try:
        out, err = launcher.communicate(config, timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(launcher.pid)
        out, err = launcher.communicate()
    # Whatever is left in the group (there is nothing when the pid namespace was available).
    _kill_group(launcher.pid)
    return timed_out, out, err


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(code: int, finished: bool, err: str, log: str, duration: float,
            isolation: tuple[str, ...]) -> SandboxResult:
    if code == 0 and finished:
        return SandboxResult("passed", "", duration, isolation)
    if code == 0:
        reason = "exited before its last statement (sys.exit, os._exit, or the runner's descriptor closed)"
        return SandboxResult("failed", f"{reason}\n{log}".strip(), duration, isolation)
    # The program's own output goes to the log: anything on the launcher's stderr is ours.
    if code == _SETUP_FAILED or err.strip():
        return SandboxResult("error", (err or log).strip()[-2000:], duration, isolation)
    if code > 128 and code - 128 in signal.valid_signals():
        reason = f"killed by {signal.Signals(code - 128).name}"
        if code - 128 in (signal.SIGXCPU, signal.SIGKILL):
            reason += " (CPU or memory limit?)"
        return SandboxResult("failed", f"{reason}\n{log}".strip(), duration, isolation)
    return SandboxResult("failed", log or f"exit status {code}", duration, isolation)


def _tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _force_remove(function, path, _exc_info) -> None:
    """rmtree fallback: a program running as us may have made its files read-only."""
    os.chmod(os.path.dirname(path), 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
        shutil.rmtree(path, onerror=_force_remove)
    else:
        function(path)


# --------------------------------------------------------------------------- launcher side
# Everything below runs in the launcher process (`python -I -S sandbox.py CONFIG`) and its
# forked children, never in the caller.

_libc = ctypes.CDLL(None, use_errno=True)


def _launch(config: dict) -> int:
    _die_with_parent(config["parent"])
    isolation = _unshare(config["user"])
    print(json.dumps(isolation + ["rlimits"]), flush=True)
    init = os.fork()
    if init == 0:
        os._exit(_init(config, isolation))
    return _exit_code(os.waitpid(init, 0)[1])


def _die_with_parent(parent: int) -> None:
    """If the caller dies (even by SIGKILL), so do we, and with us the namespace."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the caller died before the prctl took effect
        os._exit(_SETUP_FAILED)


def _unshare(user: list[int] | None) -> list[str]:
    """Enter new pid/net/mount namespaces; as a non-root user via a user namespace."""
    flags = _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWNS
    # Read before the unshare: inside the new user namespace we are unmapped (65534) until the map is written.
    uid, gid = os.getuid(), os.getgid()
    if user is None and _libc.unshare(flags | _CLONE_NEWUSER) == 0:
        _map_identity(uid, gid)
        return ["pidns", "netns", "mountns", "userns"]
    if user is not None and _libc.unshare(flags) == 0:
        return ["uid", "pidns", "netns", "mountns"]
    # Namespaces refused (a container without CAP_SYS_ADMIN, userns disabled): carry on with
    # the uid switch and rlimits alone, and say so.
    return ["uid"] if user is not None else []


def _map_identity(uid: int, gid: int) -> None:
    """Map our uid/gid (from outside) to themselves in the new user namespace: no extra rights on files."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _init(config: dict, isolation: list[str]) -> int:
    """Pid 1 of the namespace: start the program, reap orphans, exit with the program's status.

    Our exit makes the kernel kill everything still in the namespace.
    """
    # In a new pid namespace getppid() is 0, so there is no race to check here; the caller's
    # killpg covers the window before this prctl.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        # Read and open before the private /tmp hides the caller's workspace.
        log = os.open(os.path.join(config["workdir"], _LOG), os.O_WRONLY | os.O_CREAT, 0o600)
        done = os.open(os.path.join(config["workdir"], _DONE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(os.path.join(config["workdir"], _PROGRAM), encoding="utf-8") as f:
            source = f.read()
        workdir = _private_workdir(config, isolation, source)
        program = os.fork()
        if program == 0:
            _exec_program(config, workdir, log, done)
    except Exception as exc:  # the sandbox could not be built: never run the program then
        print(f"sandbox setup failed: {exc!r}", file=sys.stderr, flush=True)
        return _SETUP_FAILED
    while True:
        pid, status = os.wait()
        if pid == program:
            return _exit_code(status)


def _private_workdir(config: dict, isolation: list[str], source: str) -> str:
    """Private /proc and tmpfs mounts, the program's working directory in the private /tmp."""
    if "mountns" not in isolation:
        return config["workdir"]
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)  # nothing propagates to the host
    # Held open so that they can be bound back once the tmpfs mounts hide them.
    exposed = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in config["expose"]}
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV, None)
    size = f"size={config['limits']['tmpfs_mb']}m"
    for path in _PRIVATE_TMP:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{size},mode=1777")
    for path, fd in exposed.items():
        _bind_read_only(fd, path)
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    with open(os.path.join(workdir, _PROGRAM), "w", encoding="utf-8") as f:
        f.write(source)
    os.chown(workdir, *(config["user"] or [os.getuid(), os.getgid()]))
    return workdir


def _bind_read_only(fd: int, path: str) -> None:
    """Bind the directory open at `fd` to `path` (in the private tmpfs), read-only."""
    os.makedirs(path, 0o755, exist_ok=True)
    _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
    # A bind mount ignores MS_RDONLY on creation: read-only takes a remount, which must keep
    # the flags the original mount has (in a user namespace they are locked: EPERM otherwise).
    kept = os.fstatvfs(fd).f_flag & (os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC)
    _mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | kept, None)
    os.close(fd)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    encode = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def _exec_program(config: dict, workdir: str, log: int, done: int) -> None:
    """In the program's process: confine, drop privileges, exec the interpreter. Never returns."""
    launcher_stderr = os.dup(2)  # close-on-exec: only our own error message can reach it
    try:
        os.chdir(workdir)
        _set_limits(config["limits"])
        if config["user"] is not None:
            uid, gid = config["user"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot give root back
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # setuid cleared it
        env = _minimal_env() | {"HOME": workdir, "TMPDIR": workdir, "OMP_NUM_THREADS": "1",
                                "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        token_read, token_write = os.pipe()
        os.write(token_write, config["token"].encode())
        os.close(token_write)
        # Moved out of the way first (a source may already sit at 3 or 4), then dup2'd into
        # place, which makes them inheritable: they survive the exec, unlike every other one.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (token_read, done)]
        for source, target in zip(high, (_TOKEN_FD, _DONE_FD)):
            os.dup2(source, target)
        # Every other descriptor Python opened is close-on-exec already.
        os.execve(config["python"], [config["python"], "-I", "-c", _RUNNER, _PROGRAM], env)
    except BaseException as exc:
        os.write(launcher_stderr, f"sandbox could not start the program: {exc!r}\n".encode())
    os._exit(_SETUP_FAILED)


def _set_limits(limits: dict) -> None:
    mb = 1024 * 1024
    cpu = int(limits["timeout_s"]) + 1  # the wall clock is the caller's; this bounds orphans
    for resource_id, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_NPROC, limits["max_processes"]),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 256),
    ):
        resource.setrlimit(resource_id, (value, value))


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# Runs in the program's own interpreter: human-eval/evalplus style guards against accidents
# (not a security boundary: the OS limits above are), then the program as __main__, then the
# token to the done file: only a program that ran to its end (no exit of any status, no
# uncaught exception, the descriptor left alone) passes. The token is read, and its pipe
# closed, before the program starts; the program could still find it in this interpreter's
# memory (the README says so).
_RUNNER = f"""
import builtins, faulthandler, os, shutil, subprocess, sys
_token = os.read({_TOKEN_FD}, 64)
os.close({_TOKEN_FD})
_write, _close = os.write, os.close
source = open(sys.argv[1], encoding="utf-8").read()
faulthandler.disable()
for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir",
             "setuid", "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink",
             "fchmod", "fchown", "chmod", "chown", "chroot", "lchown", "getcwd", "chdir"):
    if hasattr(os, name):
        setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.help = None
for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[name] = None
exec(compile(source, sys.argv[1], "exec"), {{"__name__": "__main__", "__builtins__": builtins}})
_write({_DONE_FD}, _token)
_close({_DONE_FD})
"""


if __name__ == "__main__":
    sys.exit(_launch(json.loads(sys.stdin.buffer.read())))
