"""The machine's processes, as the tests that start real Ray clusters or kill trials see them.

`ps -ww`: without it a long command line may be cut, and a process missed.
"""

import contextlib
import os
import signal
import subprocess
import time


def processes(needle: str) -> dict[int, str]:
    """{pid: command line} of every process whose command line contains `needle`."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]): line for line in out.splitlines()[1:] if needle in line}


def stop_own(markers: list[str]) -> None:
    """Stop the processes a test started, found by markers on their command lines (a Ray temp
    dir names GCS, raylet, dashboard and workers), TERM first, then KILL; never `ray stop`,
    which stops every Ray on the machine."""
    def own() -> list[int]:
        return [pid for marker in markers for pid in processes(marker)]

    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        for pid in own():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + wait
        while own() and time.time() < deadline:
            time.sleep(0.2)
    assert not own(), "processes this test started survived it"


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` at once, and wait until none runs: a command started
    with start_new_session=True and the local Ray it started, whose workers each run in a process
    group of their own (so `os.killpg` of the command's group leaves them running a while)."""
    def alive() -> list[int]:
        out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
        return [int(pid) for pid, session, stat in (line.split() for line in out.splitlines())
                if int(session) == sid and not stat.startswith("Z")]

    deadline = time.time() + 10
    while (pids := alive()) and time.time() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert not alive(), f"processes of session {sid} survived SIGKILL"


def wait_for_job_agent(ray: str, client: dict, *address: str) -> None:
    """`ray start --head` returns before the head's job agent registers ("No available agent to
    submit job"): submit an empty job until one runs. `address`: `--address URL`, or nothing when
    the client's environment names the cluster."""
    for _ in range(30):
        empty = subprocess.run([ray, "job", "submit", *address, "--", "true"], env=client, capture_output=True,
                               text=True, cwd="/tmp", timeout=120)
        if empty.returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"no job ran on the fresh cluster: {empty.stderr[-1000:]}")
