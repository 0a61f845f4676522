"""The unmasked model's validation metric and how far from it a trial's may fall by chance: the
reference the heatmap's colours diverge from and the band its cells are marked within.

The band comes from the unmasked model's per-item validation scores in items.parquet. It is the
95% half-width of a difference of two independent means of n items, each with the spread of those
scores: 1.96 * sqrt(2) * std / sqrt(n) (std**2 = p(1 - p) for 0/1 scores). A trial and the
unmasked model are scored on the same items, and a paired test (core.statistics), which cancels
what the two share, gives a narrower interval; but trials record their mean only, not their items,
so the unpaired band is what the report can compute. It is conservative: a cell outside it differs
beyond noise, one inside may still hold a gain that a paired test would detect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mft_search.experiment.items import variant_scores
from mft_search.report.experiment import StudyRecord

Z_95 = 1.96  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Reference:
    """The unmasked model's validation metric, in the trials' units, and the noise band around it."""

    value: float
    half_width: float | None  # None: no per-item validation scores of the unmasked model yet
    items: int = 0  # how many items the band rests on

    def within(self, metric: float) -> bool:
        """Whether `metric` lies within the noise band (False when there is no band)."""
        return self.half_width is not None and abs(metric - self.value) <= self.half_width


def unmasked_reference(study: StudyRecord) -> Reference | None:
    """The study's reference, or None until its summary records the unmasked validation metric."""
    row = study.summary.row("unmasked") if study.summary else None
    if row is None or row.validation is None or not math.isfinite(row.validation):
        return None
    # Loss domains: the metric is minus the mean NLL and items hold each row's NLL; the sign
    # flips, the spread does not, so the same half-width applies.
    scores = variant_scores(study.items, study.name, "validation", "unmasked")  # the lowest seed
    half_width = noise_half_width(scores.to_numpy(dtype=float)) if len(scores) else None
    return Reference(row.validation, half_width, len(scores))


def noise_half_width(scores: Sequence[float] | np.ndarray) -> float:
    """95% half-width of the difference of two independent means of len(scores) items whose
    spread is that of `scores` (population std, as p(1 - p) for 0/1 scores)."""
    values = np.asarray(scores, dtype=float)
    return Z_95 * math.sqrt(2.0) * float(values.std(ddof=0)) / math.sqrt(len(values))
