"""What a study's fft stage produced, `<study>/fft.json`: the metric at every evaluation point
of the full fine-tuning from the pretrained backbone, the best point (the backbone MFT masks:
"Best FFT") and the last one ("Continued FFT", trained on past the peak, as the paper defines
it), with their checkpoints. Written once the stage ends; --resume and the report read it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from mft_search.core import files
from mft_search.core.files import Location, location
from mft_search.experiment import layout


@dataclass(frozen=True)
class FftPoint:
    """One evaluation point: its report number, epoch, selection metric (higher is better) and checkpoint."""

    report: int
    epoch: float
    metric: float
    checkpoint: str


@dataclass(frozen=True)
class FftRecord:
    metric_name: str  # what picked the best point, e.g. "gsm8k accuracy" or "-validation loss"
    points: tuple[FftPoint, ...]
    best: int  # report number of the best point (the earliest of ties)

    @property
    def best_point(self) -> FftPoint:
        return next(p for p in self.points if p.report == self.best)

    @property
    def final_point(self) -> FftPoint:
        return self.points[-1]


def best_of(points: list[FftPoint]) -> int:
    """The best point's report: highest metric, the earlier one on a tie."""
    return min(points, key=lambda p: (-p.metric, p.report)).report


def save_fft_record(study_dir, record: FftRecord) -> Location:
    data = {"metric_name": record.metric_name, "best": record.best, "points": [asdict(p) for p in record.points]}
    return files.write_text(location(study_dir) / layout.FFT, json.dumps(data, indent=2))


def load_fft_record(study_dir) -> FftRecord | None:
    """The study's record, or None when its fft stage has not finished (or never ran)."""
    path = location(study_dir) / layout.FFT
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    points = tuple(FftPoint(**p) for p in data["points"])
    return FftRecord(metric_name=data["metric_name"], points=points, best=int(data["best"]))
