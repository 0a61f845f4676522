"""Which report of a probe trial is which ASHA rung, and rung-wise validation's subset per report.

Ray's ASHAScheduler (one bracket) decides at milestones grace_period x reduction_factor^k reports
(ray.tune.schedulers.async_hyperband._Bracket: int(log(max_t / grace) / log(rf)) + 1 rungs).
An early rung only ranks trials, so `search.asha.validation_subset` lets it score a seeded
subset of the validation items: that fraction at the first rung, times the reduction factor at
each later one; every other report, the last rung's and the trial's last, scores all of them.

No Ray here: the replay in bench search and the unit tests use it as the sweep does.
"""

from __future__ import annotations

import math

from mft_search.config.schema import AshaSettings, SweepConfig


def max_reports(cfg: SweepConfig) -> int:
    """The most reports a probe trial makes: ASHA's max_t. Reports come once per epoch unless
    eval_every_steps is set; then the count depends on the data size, and a generous bound only
    means ASHA's last rung is never reached."""
    train = cfg.train
    epochs = cfg.search.space.epochs
    most = max(epochs) if isinstance(epochs, list) else getattr(epochs, "high", epochs) or train.epochs
    return max(1, math.ceil(most)) if train.eval_every_steps is None else 10_000


def milestones(asha: AshaSettings, max_t: int) -> list[int]:
    """ASHA's rungs in reports, first to last, as Ray's one-bracket ASHAScheduler places them."""
    if max_t < asha.grace_period:
        return []
    rungs = int(math.log(max_t / asha.grace_period) / math.log(asha.reduction_factor) + 1)
    return [asha.grace_period * asha.reduction_factor ** k for k in range(rungs)]


def validation_subsets(asha: AshaSettings | None, max_t: int) -> dict[int, float]:
    """{report: fraction of the validation items} for the rungs that score a subset; empty without
    ASHA or validation_subset. The last rung, and any rung the fraction has grown to 1 by, score all."""
    if asha is None or asha.validation_subset is None:
        return {}
    subsets = {}
    for k, report in enumerate(milestones(asha, max_t)):
        fraction = asha.validation_subset * asha.reduction_factor ** k
        if report < max_t and fraction < 1.0:
            subsets[report] = fraction
    return subsets
