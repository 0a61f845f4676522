"""The sandbox against hostile programs: each must fail, in bounded time, and leave no trace.

Hostile programs use `posix` directly: the Python-level guards would stop `os.fork` and
friends, and these tests are about the OS-level boundary behind them.
"""

import json
import os
import shutil
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


def test_an_exit_of_any_status_before_the_end_fails():
    for program in ("import os; os._exit(0)", "raise SystemExit(0)", "import sys; sys.exit()",
                    "import atexit, os; atexit.register(os._exit, 0); raise SystemExit(1)"):
        result = run_program(program + "\nassert False", **LIMITS)
        assert result.status == "failed" and "before its last statement" in result.reason, program
    assert run_program("import sys; sys.stdout.close()", **LIMITS).status == "passed"  # ran to its end


UNPRIVILEGED = 4242


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the sandbox as another uid, which needs root to switch to; "
                    "as a non-root user the whole suite already runs unprivileged")
@pytest.mark.skipif(not (shutil.which("setpriv") and os.path.exists("/usr/bin/python3")),
                    reason="needs setpriv (util-linux) and /usr/bin/python3 to run as an unprivileged uid")
def test_the_sandbox_works_for_an_unprivileged_user():
    """As a plain user the sandbox enters a user namespace: programs must run there, pass and fail.

    The sandbox module is stdlib-only, so a system Python runs it as uid 4242 from a copy in a
    world-readable directory (the project's own interpreter may sit under a 0700 /root).
    """
    import subprocess
    import tempfile

    from mft_search.core.evaluation import sandbox

    folder = tempfile.mkdtemp(prefix="mft-sandbox-test-")
    try:
        os.chmod(folder, 0o755)
        shutil.copy(sandbox.__file__, os.path.join(folder, "sandbox.py"))
        os.chmod(os.path.join(folder, "sandbox.py"), 0o644)
        script = ("import importlib.util, json, sys\n"
                  f"spec = importlib.util.spec_from_file_location('sandbox', {folder!r} + '/sandbox.py')\n"
                  "m = importlib.util.module_from_spec(spec); sys.modules['sandbox'] = m; spec.loader.exec_module(m)\n"
                  "results = [m.run_program(p, timeout_s=10) for p in ('assert 1 + 1 == 2', 'assert False', "
                  "'import os; os._exit(0)')]\n"
                  "print(json.dumps([[r.status, list(r.isolation)] for r in results]))\n")
        out = subprocess.run(["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
                              "/usr/bin/python3", "-I", "-c", script], capture_output=True, text=True, timeout=120,
                             cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": folder})
        assert out.returncode == 0, out.stderr[-2000:]
        (ok, ok_layers), (wrong, _), (exited, _) = json.loads(out.stdout.splitlines()[-1])
        assert (ok, wrong, exited) == ("passed", "failed", "failed")
        if "userns" not in ok_layers:
            pytest.skip(f"user namespaces are unavailable here; ran with {ok_layers} only")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    assert forked < 8, f"{forked} forks before the limit stopped them"
else:
    raise AssertionError("200 forks and no limit")
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
escaped = False
for attempt in (lambda: posix.unlink({str(canary)!r}),
                lambda: posix.open({str(target)!r}, posix.O_WRONLY | posix.O_CREAT, 0o644)):
    try:
        attempt()
        escaped = True
    except OSError:
        pass
assert escaped  # passes only when one of them worked: that must not happen
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
assert seen  # passes only when the secret is visible
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


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the sandbox as root and as another uid, which needs root")
@pytest.mark.skipif(not (shutil.which("setpriv") and os.path.exists("/usr/bin/python3")),
                    reason="needs setpriv (util-linux) and /usr/bin/python3 to build a venv and switch uid")
@pytest.mark.parametrize("uid", [0, UNPRIVILEGED])
def test_an_interpreter_under_tmp_stays_visible_read_only(uid: int):
    """A venv under /tmp is hidden by the private /tmp: the program must still run with it
    (its packages importable), not silently with another Python, and must not write to it."""
    import subprocess
    import tempfile

    from mft_search.core.evaluation import sandbox

    venv = tempfile.mkdtemp(prefix="mft-venv-", dir="/tmp")
    try:
        os.chmod(venv, 0o755)
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True, timeout=60)
        site = subprocess.run([f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "mft_probe.py").write_text("HERE = True\n")
        shutil.copy(sandbox.__file__, os.path.join(venv, "sandbox.py"))
        for path in (Path(site) / "mft_probe.py", Path(venv) / "sandbox.py"):
            path.chmod(0o644)
        script = ("import importlib.util, json, sys\n"
                  f"spec = importlib.util.spec_from_file_location('sandbox', {venv!r} + '/sandbox.py')\n"
                  "m = importlib.util.module_from_spec(spec); sys.modules['sandbox'] = m; spec.loader.exec_module(m)\n"
                  "programs = ('import mft_probe; assert mft_probe.HERE', "
                  "'import sys; open(sys.prefix + \"/written\", \"w\")')\n"
                  "print(json.dumps([m.run_program(p, timeout_s=10).status for p in programs]))\n")
        switch = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        out = subprocess.run([*switch, f"{venv}/bin/python", "-I", "-c", script], capture_output=True, text=True,
                             timeout=120, cwd=venv, env={"PATH": "/usr/bin:/bin", "HOME": venv})
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.splitlines()[-1]) == ["passed", "failed"]
        assert not os.path.exists(os.path.join(venv, "written"))
    finally:
        shutil.rmtree(venv, ignore_errors=True)
