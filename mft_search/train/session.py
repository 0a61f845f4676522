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

from mft_search.core.files import Location, location


class Session(Protocol):
    """What a job needs from its runtime: its rank and device, reporting, resuming."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...

    def new_checkpoint_dir(self) -> Path:
        """A local directory for the next checkpoint: fill it (create it if it does not exist yet)
        and pass it to `report`, which stores it."""
        ...


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
    storage, a core.files.Location: a local or shared directory, or a bucket prefix): a one-worker
    job run as a plain Ray task, which a retry or a later driver (on any machine) resumes.

    Every write is a whole file (the storage's atomic write; an object store cannot append or
    rename): reports.jsonl is rewritten with each report, a checkpoint is staged (in the run's
    directory on a local disk, so storing it is a rename; on temporary disk for a bucket) and
    stored under checkpoint_NNNNNN/, and only then does `latest` name it, so a process killed
    mid-upload never leaves a half checkpoint to resume from; older ones are removed (one kept,
    as the Ray Train path keeps). The report is written before the checkpoint: a job resumes
    after its latest checkpoint's report, so a checkpoint ahead of the reports on record would
    lose a point, where a report ahead of its checkpoint only has the resumed job report it again
    (the last of each number is kept).
    """

    REPORTS = "reports.jsonl"
    LATEST = "latest"  # the name of the newest whole checkpoint
    NEXT = "checkpoint_next"  # what a checkpoint is staged beside; its number is chosen when stored

    def __init__(self, directory: str | Location, device: torch.device | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or torch.device("cpu")
        self.directory = location(directory)
        self.reports = self.history()

    def history(self) -> list[dict[str, float]]:
        """Every report on record, the last of each report number (a resumed job may repeat one)."""
        path = self.directory / self.REPORTS
        lines = path.read_text().splitlines() if path.exists() else []
        by_number: dict = {}
        for i, line in enumerate(lines):
            if line.strip():
                report = json.loads(line)
                by_number[report.get("report", f"#{i}")] = report
        return list(by_number.values())

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        number = metrics.get("report")
        self.reports = [r for r in self.reports if number is None or r.get("report") != number] + [dict(metrics)]
        (self.directory / self.REPORTS).write_text("".join(json.dumps(r) + "\n" for r in self.reports))
        if checkpoint_dir is not None:
            previous = self._latest_name()
            name = f"checkpoint_{int(previous.split('_')[-1]) + 1 if previous else 1:06d}"
            (self.directory / name).store_directory(checkpoint_dir)
            (self.directory / self.LATEST).write_text(name)
            for old in self.directory.glob("checkpoint_*"):
                if old.name != name:
                    old.rmtree()

    def latest_checkpoint(self) -> Path | None:
        """The newest whole checkpoint, on local disk (downloaded when the run is in a bucket)."""
        name = self._latest_name()
        if name is None:
            return None
        return (self.directory / name).download()

    def new_checkpoint_dir(self) -> Path:
        # Only the job writes here, and its last staging was stored (renamed) before it asks
        # again: any staging left now is a killed attempt's, removed so it cannot pile up.
        for stale in (self.directory / self.NEXT).stale_staging():
            shutil.rmtree(stale, ignore_errors=True)
        return (self.directory / self.NEXT).staging_directory()

    def _latest_name(self) -> str | None:
        path = self.directory / self.LATEST
        return path.read_text().strip() if path.exists() else None
