"""Fault injection for the tests that really kill a training worker mid-trial.

A job config may carry {"fault": {"kill_after_reports": N, "marker": PATH}}: rank 0 SIGKILLs its
own process right after its N-th report, once (the marker file records that it happened), so
the restarted attempt must resume from the checkpoint that report saved.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


class KillAfterReports:
    """Wraps a session; behaves identically until it kills the process."""

    def __init__(self, session, kill_after_reports: int, marker: str) -> None:
        self._session, self._n, self._marker = session, kill_after_reports, Path(marker)
        self._reports = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def report(self, metrics, checkpoint_dir) -> None:
        self._session.report(metrics, checkpoint_dir)
        self._reports += 1
        if self._session.rank == 0 and self._reports == self._n and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def inject(session, fault: dict[str, Any] | None):
    return KillAfterReports(session, **fault) if fault else session
