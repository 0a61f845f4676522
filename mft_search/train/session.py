"""The runtime a job reports to: rank, device, metrics and checkpoints.

`run_job` takes any `Session`: train.ray_train.RaySession in a sweep (Ray Train's or Tune's),
`LocalSession` without Ray (tests, the demo build).
"""

from __future__ import annotations

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
