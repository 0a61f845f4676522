"""Cross-domain guards in a sweep (domains[].guard): benchmarks outside the domain that a mask may
not hurt by more than a tolerated drop.

    measure_references(study, log)          # before the probe: the unmasked backbone on each guard
    limits = guard_limits(study)            # what the searcher and selection hold trials to
    checks = check_winner(study, mask, log) # after selection: the best mask beside it, item by item

The unmasked backbone is scored once per study, an evaluate job per guard, rather than by every
trial: its per-item scores are then both the reference each trial's guard metric is compared
with (experiment.guards.GuardLimit, Optuna's constraint) and the pair the selected mask's change
is measured against (core.statistics.guard_decision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mft_search.config.schema import GuardSpec
from mft_search.core.statistics import Gain, guard_decision
from mft_search.experiment.guards import GuardLimit, guard_split
from mft_search.experiment.items import gains_over, items_path, read_items, split_unit, variant_scores
from mft_search.train.spec import EvalVariant
from mft_search.tune.evaluate import benchmark_label, run_evaluation
from mft_search.tune.study import Study


def measure_references(study: Study, log=print) -> None:
    """The unmasked backbone's per-item scores on each guard, into items.parquet (split guard:<name>)."""
    for guard in study.domain.guard:
        log(f"[{study.name}] guard {guard.label}: the unmasked backbone scored for reference")
        run_evaluation(study, [EvalVariant(name="unmasked")], guard.benchmark, guard_split(guard.label))


def guard_limits(study: Study) -> list[GuardLimit]:
    """Each guard's reference (the unmasked backbone's mean score) and tolerated drop; none without guards."""
    if not study.domain.guard:
        return []
    frame = read_items(items_path(study.exp_dir))
    limits = []
    for guard in study.domain.guard:
        scores = variant_scores(frame, study.name, guard_split(guard.label), "unmasked")
        if scores.empty:
            raise RuntimeError(f"{study.name}: guard {guard.label} has no reference scores; measure_references "
                               "runs before the probe")
        limits.append(GuardLimit(guard.label, float(scores.mean()), guard.max_drop))
    return limits


@dataclass(frozen=True)
class GuardCheck:
    """The best mask's change on one guard against the unmasked backbone, and whether it keeps it."""

    name: str
    benchmark: str
    max_drop: float
    gain: Gain | None
    kept: bool
    reason: str

    @property
    def broken(self) -> str | None:
        """'breaks guard <name>: <why>' (tune.evaluate.verdict's wording), or None when kept."""
        return None if self.kept else f"breaks guard {self.name}: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "benchmark": self.benchmark, "max_drop": self.max_drop, "kept": self.kept,
                "reason": self.reason}


def check_winner(study: Study, mask_path: str, log=print) -> list[GuardCheck]:
    """Score the best mask on each guard, item by item beside the unmasked reference, and check it."""
    learned = EvalVariant(name="best_mft", mask="learned", mask_file=mask_path)
    for guard in study.domain.guard:
        log(f"[{study.name}] guard {guard.label}: the best mask scored beside the unmasked reference")
        run_evaluation(study, [learned], guard.benchmark, guard_split(guard.label))
    return guard_checks(study)


def guard_checks(study: Study) -> list[GuardCheck]:
    """Each guard's check of the best mask, from items.parquet (no scoring here)."""
    frame = read_items(items_path(study.exp_dir))
    return [_check(guard, frame, study.name) for guard in study.domain.guard]


def _check(guard: GuardSpec, frame, study: str) -> GuardCheck:
    split = guard_split(guard.label)
    gain, unit = gains_over(frame, study, split, "best_mft").get("unmasked"), split_unit(frame, study, split)
    if gain is None or unit is None:
        kept, reason = False, "no per-item scores of the best mask and the unmasked backbone on it"
    else:
        kept, reason = guard_decision(gain, guard.max_drop, unit=unit)
    return GuardCheck(guard.label, benchmark_label(guard.benchmark), guard.max_drop, gain, kept, reason)
