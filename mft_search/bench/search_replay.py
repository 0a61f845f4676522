"""Replaying searches on the search benchmark's table (bench.search_table): no training.

A search asks Optuna for a point, looks its reports up in the table epoch by epoch, reports each
to its trial (a pruner may stop it) and is charged, per epoch it ran, one trial-epoch and its
trial-seconds: an epoch's training plus validation for as many items as the report scored (all
of them, or rung-wise validation's subset). The seconds are the table's medians (`UnitCosts`),
not each configuration's own: recorded on a shared machine, one configuration's seconds differed
from another's by the machine's load more than by its work (2.5x over one recording here).

A search has reached the target once the configuration it would select, its best report scored
on every validation item (never a subset score: selection does not rank those), is within noise
of the grid's best report: the paired bootstrap interval of its per-item difference from that
best report (core.statistics.paired_gain, 95%) reaches 0. A configuration whose mask kept every
weight (a no-op: the unmasked model) is never a candidate, as in the sweep.

As in the sweep, a drawn point that a finished trial already ran is told that trial's outcome
and costs nothing (tune.duplicates); MAX_REPEATS such draws in a row end the search (the space
is exhausted), reached or not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from mft_search.bench.search_table import Table
from mft_search.core.statistics import paired_gain
from mft_search.train.evaluation import subset_indices
from mft_search.tune.duplicates import MAX_REPEATS, finished_twin, tell_as_twin

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Landscape:
    """The table's target: the grid's best report and which reports are within noise of it."""

    best: tuple[int, int]  # (configuration, epoch index)
    within: frozenset[tuple[int, int]]
    accuracy: dict[tuple[int, int], float]  # every full report's mean score

    def config_within(self, table: Table) -> list[bool]:
        """Per configuration: does any of its reports tie the best, within noise?"""
        return [any((c, e) in self.within for e in range(len(table.epochs[c]))) for c in range(len(table.configs))]


def landscape(table: Table, seed: int = 0) -> Landscape:
    accuracy = {(c, e): float(np.mean(ep.scores)) for c, eps in enumerate(table.epochs) for e, ep in enumerate(eps)
                if not table.no_op[c]}
    best = max(accuracy, key=lambda k: (accuracy[k], -k[0], -k[1]))
    top = dict(zip(table.items, table.epochs[best[0]][best[1]].scores, strict=True))
    within = set()
    for (c, e) in accuracy:
        other = dict(zip(table.items, table.epochs[c][e].scores, strict=True))
        gain = paired_gain(other, top, seed=seed, confidence=CONFIDENCE)
        if gain.high >= 0 or math.isnan(gain.high):  # the interval of (report - best) reaches 0
            within.add((c, e))
    return Landscape(best, frozenset(within), accuracy)


@dataclass(frozen=True)
class Outcome:
    """One search: trial-epochs and trial-seconds until it reached the target (None: not within
    its budget, or it exhausted the space first), what it spent in all, its trials (each ran),
    the configuration it would select, its repeats (draws of a finished point, not run) and
    whether repeats ended it."""

    epochs_to_target: int | None
    seconds_to_target: float | None
    epochs: int
    seconds: float
    trials: int
    selected: int | None
    repeats: int = 0  # draws of a finished point, told its outcome at no cost (tune.duplicates)
    exhausted: bool = False  # ended by MAX_REPEATS repeats in a row, before its budget


@dataclass(frozen=True)
class UnitCosts:
    """What an epoch costs: its training seconds and the validation seconds per item, medians
    over the table."""

    train_s: float
    eval_s_per_item: float

    @classmethod
    def of(cls, table: Table) -> UnitCosts:
        epochs = [ep for eps in table.epochs for ep in eps]
        return cls(float(np.median([e.train_s for e in epochs])), float(np.median([e.eval_s_per_item for e in epochs])))

    def epoch(self, items: int) -> float:
        return self.train_s + self.eval_s_per_item * items


class Replay:
    """One search on the table, sequential (one trial at a time), until the target or the budget."""

    def __init__(self, table: Table, land: Landscape, sample: Callable[[optuna.Trial], dict[str, Any]],
                 subsets: dict[int, float] | None = None, subset_seed: int = 0) -> None:
        self.table, self.land, self.sample = table, land, sample
        self.subsets, self.subset_seed = subsets or {}, subset_seed
        self.n_items, self.costs = len(table.items), UnitCosts.of(table)

    def run(self, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
            budget_epochs: int, stop_at_target: bool = True) -> Outcome:
        # ERROR: GPSampler warns on every trial that the conditional space (threshold only in
        # global mode) makes it sample that parameter independently; the README says so once.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        self.epochs, self.seconds, self.trials = 0, 0.0, 0
        self.incumbent: tuple[float, int] | None = None  # (metric, configuration)
        self.reached: tuple[int, float] | None = None
        self.repeats, exhausted = 0, False
        while self.epochs < budget_epochs and not (stop_at_target and self.reached):
            if not self._trial(study, budget_epochs):
                exhausted = True  # the sweep ends the search here (tune.searcher)
                break
        selected = self.incumbent[1] if self.incumbent else None
        return Outcome(*(self.reached or (None, None)), self.epochs, self.seconds, self.trials, selected,
                       self.repeats, exhausted)

    def _trial(self, study: optuna.Study, budget_epochs: int) -> bool:
        """Run one trial; False when MAX_REPEATS draws in a row repeated finished trials."""
        for _ in range(MAX_REPEATS):  # the sweep's rule (tune.searcher): a repeat is told, not run
            trial = study.ask()
            point = self.sample(trial)
            twin = finished_twin(study, trial)
            if twin is None:
                self._run(study, trial, self.table.index(point), budget_epochs)
                return True
            tell_as_twin(study, trial, twin)
            self.repeats += 1
        return False

    def _run(self, study: optuna.Study, trial: optuna.Trial, config: int, budget_epochs: int) -> None:
        epochs = self.table.epochs[config]
        self.trials += 1
        best_full = None
        for e in range(len(epochs)):
            value, items = self._report(config, e, last=e == len(epochs) - 1)
            self.epochs += 1
            self.seconds += self.costs.epoch(items)
            if items == self.n_items and not self.table.no_op[config]:
                best_full = value if best_full is None else max(best_full, value)
                self._note(value, config, e)
            if self.epochs >= budget_epochs and e < len(epochs) - 1:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # cut off by the budget
                return
            trial.report(value, e + 1)
            if e < len(epochs) - 1 and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return
        if self.table.no_op[config]:  # the sweep tells a no-op trial PRUNED (tune.searcher)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:  # a completed trial's value is its best full report, the one selection ranks
            study.tell(trial, best_full)

    def _report(self, config: int, e: int, last: bool) -> tuple[float, int]:
        scores = self.table.epochs[config][e].scores
        fraction = None if last else self.subsets.get(e + 1)
        if fraction is None:
            return float(np.mean(scores)), len(scores)
        chosen = subset_indices(len(scores), fraction, self.subset_seed)
        return float(np.mean([scores[i] for i in chosen])), len(chosen)

    def _note(self, value: float, config: int, e: int) -> None:
        if self.incumbent is None or value > self.incumbent[0]:  # ties: the earlier report, as selection
            self.incumbent = (value, config)
            self.incumbent_report = (config, e)
        if self.reached is None and self.incumbent_report in self.land.within:
            self.reached = (self.epochs, self.seconds)


def grid_compute(table: Table) -> tuple[int, float]:
    """(trial-epochs, trial-seconds) of running every configuration to its end, all items."""
    epochs = sum(len(eps) for eps in table.epochs)
    return epochs, epochs * UnitCosts.of(table).epoch(len(table.items))


def quantiles(values: list[float]) -> tuple[float, float, float, float, float]:
    """(min, 25%, median, 75%, max) by the inverted CDF: a value some seed really had, and inf
    (a seed that did not reach) sorts last without breaking the arithmetic."""
    ordered = sorted(values)
    pick = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return ordered[0], pick(0.25), pick(0.5), pick(0.75), ordered[-1]
