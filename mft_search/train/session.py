"""The runtime a job reports to: rank, device, metrics and checkpoints.

`run_job` takes any `Session`: train.ray_train.RaySession in a sweep (Ray Train's or Tune's),
`LocalSession` without Ray (tests, the demo build), `DirectorySession` for a one-worker job run
as a plain Ray task (its reports and checkpoint kept in the run's storage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Protocol

import torch


class Session(Protocol):
    """What a job needs from its runtime: its rank and device, reporting, resuming."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...

    def new_checkpoint_dir(self) -> Path: ...


class LocalSession:
    """A single-process session without Ray: tests, and building the demo backbone."""

    def __init__(self, directory: Path, device: torch.device | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or torch.device("cpu")
        self.directory = Path(directory)
        self.reports: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.directory.glob("checkpoint_*"))
        return found[-1] if found else None

    def new_checkpoint_dir(self) -> Path:
        number = len(list(self.directory.glob("checkpoint_*"))) + 1
        return self.directory / f"checkpoint_{number:06d}"


class DirectorySession(LocalSession):
    """A single-process session whose reports and latest checkpoint live in `directory` (the run's
    storage): a one-worker job run as a plain Ray task, which a retry or a later driver resumes.

    A checkpoint is written under a staging name and renamed on report, so a process killed
    mid-write never leaves a half checkpoint to resume from; older ones are removed (one kept,
    as the Ray Train path keeps). The report's line is written before that rename: a job resumes
    after its latest checkpoint's report, so a checkpoint ahead of the reports on record would
    lose a point, where a report ahead of its checkpoint only has the resumed job report it again
    (the last of each number is kept).
    """

    REPORTS = "reports.jsonl"

    def __init__(self, directory: Path, device: torch.device | None = None) -> None:
        super().__init__(directory, device)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._end_torn_line()
        self.reports = self.history()

    def history(self) -> list[dict[str, float]]:
        """Every report on record, the last of each report number (a resumed job may repeat one)."""
        path = self.directory / self.REPORTS
        lines = path.read_text().splitlines() if path.exists() else []
        by_number: dict = {}
        for i, line in enumerate(lines):
            if line.strip():  # a line torn by a kill mid-write would not parse: skip it
                try:
                    report = json.loads(line)
                except json.JSONDecodeError:
                    continue
                by_number[report.get("report", f"#{i}")] = report
        return list(by_number.values())

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        with (self.directory / self.REPORTS).open("a") as out:
            out.write(json.dumps(metrics) + "\n")
        number = metrics.get("report")
        self.reports = [r for r in self.reports if number is None or r.get("report") != number] + [dict(metrics)]
        if checkpoint_dir is not None:
            final = checkpoint_dir.with_name(checkpoint_dir.name.removeprefix(_STAGING))
            checkpoint_dir.rename(final)
            for old in self._checkpoints():
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        found = self._checkpoints()
        return found[-1] if found else None

    def new_checkpoint_dir(self) -> Path:
        for torn in self.directory.glob(f"{_STAGING}checkpoint_*"):  # a killed attempt's
            shutil.rmtree(torn, ignore_errors=True)
        found = self._checkpoints()
        number = int(found[-1].name.split("_")[-1]) + 1 if found else 1
        return self.directory / f"{_STAGING}checkpoint_{number:06d}"

    def _checkpoints(self) -> list[Path]:
        return sorted(self.directory.glob("checkpoint_*"))

    def _end_torn_line(self) -> None:
        """End a line a kill cut short, so the next report starts a line of its own (history()
        skips the torn one; appended to it, the next report would be unreadable too)."""
        path = self.directory / self.REPORTS
        if not path.exists() or path.stat().st_size == 0:
            return
        with path.open("rb+") as out:
            out.seek(-1, 2)
            if out.read(1) != b"\n":
                out.write(b"\n")


_STAGING = ".staging-"
