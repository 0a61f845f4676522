"""A cross-domain guard's records (domains[].guard): where its scores live and when one breaks it.

A trial reports each guard's primary metric under `guard_metric(name)`, a results.parquet column;
the unmasked backbone's and the selected mask's per-item scores are items.parquet rows under
`guard_split(name)`. A guard is broken when a score falls more than `max_drop` points below the
unmasked backbone's:

    limit = GuardLimit("ifeval", reference=0.62, max_drop=2.0)
    limit.violation(0.59)   # +0.01: 3 points down, 1 more than tolerated (Optuna's constraint: > 0 breaks)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mft_search.core.statistics import POINTS

GUARD_PREFIX = "guard/"


def guard_metric(name: str) -> str:
    """A trial's report key, and results.parquet's column, of guard `name`'s metric."""
    return f"{GUARD_PREFIX}{name}/metric"


def guard_split(name: str) -> str:
    """items.parquet's split of guard `name`'s per-item scores."""
    return f"guard:{name}"


@dataclass(frozen=True)
class GuardLimit:
    """A guard's reference (the unmasked backbone's score, a fraction) and its tolerated drop (points)."""

    name: str
    reference: float
    max_drop: float

    def violation(self, metric: float) -> float:
        """How far `metric` breaks the guard, as a fraction: <= 0 keeps it (Optuna's feasibility).
        Rounded: a drop of exactly max_drop keeps the guard, whatever the float arithmetic says."""
        return round((self.reference - metric) - self.max_drop / POINTS.scale, 9)


def constraint_values(limits: Sequence[GuardLimit], report: Mapping[str, Any]) -> dict[str, float]:
    """{guard: violation} of one report, for the guards it scored (a missing or NaN score: left out,
    since Optuna refuses NaN constraints)."""
    values = {}
    for limit in limits:
        metric = report.get(guard_metric(limit.name))
        if metric is not None and math.isfinite(float(metric)):
            values[limit.name] = limit.violation(float(metric))
    return values


def broken_guards(report: Mapping[str, Any], limits: Sequence[GuardLimit]) -> list[str]:
    """The guards a report (a results row) breaks."""
    return [name for name, value in constraint_values(limits, report).items() if value > 0]
