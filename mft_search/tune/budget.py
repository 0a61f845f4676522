"""A probe search's budgets (search.time_budget_s, search.max_gpu_hours): spent or not, and why.

No Ray here: the searcher (tune.searcher) asks `spent()` before each new trial and stops
proposing once it is not None, so trials that finished are kept and running ones finish. What
stopped the search is written next to the study (`<study>/budget_stop.json`, layout.BUDGET_STOP), where the sweep's
log and the study's summary read it.

    budget = Budget(time_budget_s=3600, max_gpu_hours=None, gpus_per_trial=4, note_path=p)
    budget.note("trial_1", {"time_total_s": 120.0})   # each report's trial wall time so far
    budget.spent()                                     # None, or "search.time_budget_s 3600 s spent (3612 s)"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mft_search.core import files
from mft_search.experiment import layout


class Budget:
    """The wall time of a search (summed over driver sessions: a resumed search continues its
    budget) and the GPU-hours of its trials (wall time x the trial's GPUs, summed)."""

    def __init__(self, time_budget_s: float | None, max_gpu_hours: float | None, gpus_per_trial: float,
                 note_path: str | Path | None = None, clock=time.time) -> None:
        self.time_budget_s, self.max_gpu_hours = time_budget_s, max_gpu_hours
        self.gpus_per_trial = gpus_per_trial
        self.note_path = None if note_path is None else str(note_path)
        self.clock = clock
        self.elapsed_before = 0.0  # seconds of earlier driver sessions
        self.session_start: float | None = None
        self.trial_seconds: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.time_budget_s is not None or (self.max_gpu_hours is not None and self.gpus_per_trial > 0)

    def start(self) -> None:
        if self.session_start is None:
            self.session_start = self.clock()

    def elapsed(self) -> float:
        return self.elapsed_before + (0.0 if self.session_start is None else self.clock() - self.session_start)

    def note(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """A trial's report: its wall time so far (Tune's time_total_s) counts towards the GPU-hours."""
        seconds = (result or {}).get("time_total_s")
        if seconds is not None:
            self.trial_seconds[trial_id] = max(float(seconds), self.trial_seconds.get(trial_id, 0.0))

    def gpu_hours(self) -> float:
        return sum(self.trial_seconds.values()) * self.gpus_per_trial / 3600

    def spent(self) -> str | None:
        """Why no new trial may start, or None while both budgets last."""
        if self.time_budget_s is not None and self.elapsed() >= self.time_budget_s:
            return f"search.time_budget_s {self.time_budget_s:g} s spent ({self.elapsed():.0f} s)"
        # With no GPUs the GPU-hours stay 0: that budget never binds (the dry run says so).
        if self.max_gpu_hours is not None and self.gpus_per_trial > 0 and self.gpu_hours() >= self.max_gpu_hours:
            return f"search.max_gpu_hours {self.max_gpu_hours:g} spent ({self.gpu_hours():.3g} GPU-hours)"
        return None

    def record_stop(self, reason: str) -> None:
        """Write what stopped the search, once (the first reason stays)."""
        if self.note_path is not None:
            record_stop(self.note_path, reason, elapsed_s=round(self.elapsed(), 1), gpu_hours=round(self.gpu_hours(), 6))

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the searcher's state: the time this session spent joins the earlier sessions',
        # and the next session's clock starts when it first asks (never counting the time it was down).
        state = dict(self.__dict__)
        state["elapsed_before"], state["session_start"] = self.elapsed(), None
        return state


def record_stop(note_path: str | Path, reason: str, **figures: float) -> None:
    """Write what stopped the probe search early (a budget, or an exhausted space), once: the
    first reason stays."""
    if not files.location(note_path).exists():
        files.write_text(note_path, json.dumps({"reason": reason, **figures}))


def budget_stop(study_dir) -> dict[str, Any] | None:
    """What stopped a study's probe search early, or None when no budget did."""
    path = files.location(study_dir) / layout.BUDGET_STOP
    return json.loads(path.read_text()) if path.exists() else None
