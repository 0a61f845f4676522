"""The sandbox against hostile programs: each must fail, in bounded time, and leave no trace.

Hostile programs use `posix` directly: the Python-level guards would stop `os.fork` and
friends, and these tests are about the OS-level boundary behind them.
"""

import os
import socket
import time
from pathlib import Path

import pytest

from mft_search.core.evaluation.sandbox import run_many, run_program

LIMITS = {"timeout_s": 3.0, "memory_mb": 512}


def test_passing_and_failing_programs():
    assert run_program("assert sum(range(4)) == 6", **LIMITS).status == "passed"
    failed = run_program("raise ValueError('wrong answer')", **LIMITS)
    assert failed.status == "failed" and "wrong answer" in failed.reason
    assert run_program("def f(:\n", **LIMITS).status == "failed"


def test_run_many_keeps_order():
    results = run_many([f"assert {i} % 2 == 0" for i in range(6)], workers=2, **LIMITS)
    assert [r.passed for r in results] == [True, False, True, False, True, False]


def test_workers_run_programs_at_the_same_time():
    # four programs that each wait 1.5 s: serially 6 s, with four workers about 1.5 s plus start-up
    waiting = ["import time; time.sleep(1.5)"] * 4
    start = time.monotonic()
    results = run_many(waiting, workers=4, **LIMITS)
    assert all(r.passed for r in results) and time.monotonic() - start < 4.5


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=1.0, memory_mb=512)
    assert result.status == "timeout"
    assert time.monotonic() - start < 5


def test_huge_allocation_fails():
    result = run_program("x = bytearray(10 * 1024 ** 3)", **LIMITS)
    assert result.status == "failed" and "MemoryError" in result.reason


def test_process_limit_holds():
    """Bounded probe first: at most 200 forks, and the limit must stop them well before."""
    probe = """
import posix, time
forked = 0
try:
    for _ in range(200):
        if posix.fork() == 0:
            time.sleep(30)
            posix._exit(0)
        forked += 1
except BlockingIOError:
    raise SystemExit(0 if forked < 8 else 1)
raise SystemExit(2)
"""
    result = run_program(probe, timeout_s=10.0, memory_mb=512, max_processes=8)
    assert result.status == "passed", result.reason


def test_fork_bomb_is_contained():
    test_process_limit_holds()  # never let the real bomb loose without a working limit
    bomb = """
import posix
while True:
    try:
        posix.fork()
    except OSError:
        pass
"""
    start = time.monotonic()
    result = run_program(bomb, timeout_s=2.0, memory_mb=512, max_processes=8)
    assert result.status in ("timeout", "failed")
    assert time.monotonic() - start < 10
    assert run_program("pass", **LIMITS).passed  # the machine is still usable


def test_cannot_delete_or_write_outside(tmp_path: Path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    target = tmp_path / "written.txt"
    program = f"""
import posix
for attempt in (lambda: posix.unlink({str(canary)!r}),
                lambda: posix.open({str(target)!r}, posix.O_WRONLY | posix.O_CREAT, 0o644)):
    try:
        attempt()
    except OSError:
        continue
    raise SystemExit(0)  # one of them worked: that must not happen
raise SystemExit(1)
"""
    result = run_program(program, **LIMITS)
    _require(result, "uid", why="not root: the program runs as you and may touch your files")
    assert result.status == "failed"
    assert canary.read_text() == "alive"
    assert not target.exists()


def test_host_tmp_is_private():
    marker = Path("/tmp") / f"mft-sandbox-escape-{os.getpid()}"
    result = run_program(f"open({str(marker)!r}, 'w').write('x')", **LIMITS)
    written = marker.exists()
    marker.unlink(missing_ok=True)
    _require(result, "mountns", why="no mount namespace on this machine: /tmp is shared")
    assert not written


def test_environment_secrets_are_invisible(monkeypatch):
    monkeypatch.setenv("MFT_TEST_SECRET", "hunter2-s3cret")
    program = """
import glob, os
seen = "hunter2-s3cret" in repr(dict(os.environ))
for path in glob.glob("/proc/*/environ"):
    try:
        seen = seen or b"hunter2-s3cret" in open(path, "rb").read()
    except OSError:
        pass
raise SystemExit(0 if seen else 1)
"""
    result = run_program(program, **LIMITS)
    if not {"uid", "mountns"} & set(result.isolation):
        pytest.skip("same user and shared /proc: the caller's /proc/PID/environ is readable")
    assert result.status == "failed"
    assert "hunter2" not in result.reason


def test_no_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"""
import socket
with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
    s.sendall(b"leak")
"""
        result = run_program(program, **LIMITS)
        with pytest.raises(TimeoutError):
            listener.accept()
    _require(result, "netns", why="no network namespace on this machine")
    assert result.status == "failed"


def test_cannot_kill_parent_or_caller():
    program = f"""
import posix
for pid in (posix.getppid(), {os.getpid()}, {os.getppid()}):
    try:
        posix.kill(pid, 9)
    except OSError:
        pass
"""
    run_program(program, **LIMITS)
    assert run_program("pass", **LIMITS).passed  # we are still here, and so is the launcher path


def test_background_process_does_not_outlive_the_run(tmp_path: Path):
    marker = f"61.{time.time_ns() % 10**6:06d}"  # a unique sleep length to find it in /proc
    late_file = Path("/tmp") / f"mft-sandbox-late-{os.getpid()}"
    program = f"""
import posix, time
if posix.fork() == 0:
    posix.setsid()
    if posix.fork() == 0:
        if posix.fork() == 0:
            posix.execv("/bin/sleep", ["sleep", {marker!r}])
        time.sleep(1.5)
        open({str(late_file)!r}, "w").write("survived")
    posix._exit(0)
"""
    result = run_program(program, **LIMITS)
    assert result.status == "passed"
    survivors = _processes_with(marker)
    for pid in survivors:  # found by our unique marker: they are this test's own
        os.kill(pid, 9)
    _require(result, "pidns", why="no pid namespace: setsid'd processes escape the process group")
    assert not survivors, "a sandboxed background process survived"
    time.sleep(2.0)
    assert not late_file.exists()


def _require(result, feature: str, why: str) -> None:
    """Skip, saying why, where the OS gave the sandbox no such layer (it is recorded)."""
    if feature not in result.isolation:
        pytest.skip(why)


def _processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
