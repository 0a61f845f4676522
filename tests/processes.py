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
