"""The search benchmark's accounting, on a table of made-up learning curves (no training)."""

import math

import optuna

from mft_search.bench.search import Outcome, grid_points, median_ratio, run_grid, run_search

CURVES = {"a": [0.10, 0.20], "b": [0.30, 0.31], "c": [0.05, 0.40], "d": [0.20, 0.25]}


def objective(params):
    return CURVES[params["x"]]


def space_fn(trial):
    return {"x": trial.suggest_categorical("x", sorted(CURVES))}


def search(order, pruner=None, target=0.40 - 0.005, budget=8):
    return run_search(objective, space_fn, optuna.samplers.RandomSampler(seed=0), pruner or optuna.pruners.NopPruner(),
                      target, budget, [{"x": x} for x in order])


def test_the_grid_counts_every_epoch_and_keeps_the_best_report():
    assert run_grid(objective, [{"x": x} for x in CURVES]) == (0.40, 8)


def test_a_search_is_charged_until_its_best_report_reaches_the_target():
    assert search(["a", "b", "c"]) == Outcome(reached_at=6, spent=6, trials=3, best=0.40)
    # within the tolerance counts: 0.31 >= 0.314 - 0.005 at the 4th epoch
    assert search(["a", "b", "c"], target=0.314 - 0.005).reached_at == 4


def test_pruned_trials_are_charged_only_the_epochs_they_ran():
    # below 0.15 at epoch 1 is pruned: "a" and "c" cost 1 epoch each, so 4 epochs pay for 3 trials
    pruned = search(["a", "b", "c"], pruner=optuna.pruners.ThresholdPruner(lower=0.15), budget=4)
    assert pruned == Outcome(reached_at=None, spent=4, trials=3, best=0.31)  # c's 0.40 was pruned away
    assert search(["a", "b", "c"], budget=4) == Outcome(reached_at=None, spent=4, trials=2, best=0.31)


def test_a_search_that_spends_its_budget_has_not_reached():
    outcome = search(["a", "d", "b"], target=0.5, budget=5)
    assert outcome.reached_at is None and outcome.spent == 5


def test_the_median_over_seeds_counts_a_miss_as_infinite():
    hit, miss = Outcome(4, 4, 2, 0.4), Outcome(None, 8, 4, 0.3)
    assert median_ratio([hit, hit, miss], 8) == 0.5
    assert median_ratio([hit, miss, miss], 8) == math.inf


def test_the_grid_is_groups_by_the_paper_ratios_by_inits_in_local_mode():
    points = grid_points(["0,1", "1,2"], ["normal", "magnitude"])
    assert len(points) == 2 * 3 * 2 and {p["mode"] for p in points} == {"local"}
