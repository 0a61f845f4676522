"""The search benchmark's table and replay accounting, on made-up per-item scores (no training)."""

import math
from pathlib import Path

import optuna
import pytest

from mft_search.bench import search
from mft_search.bench.search import quick_space, strategies
from mft_search.bench.search_replay import Outcome, Replay, UnitCosts, grid_compute, landscape, quantiles
from mft_search.bench.search_table import Epoch, Table, config_key, discretise, grid_points
from mft_search.config.space import FloatRange, SearchSpace, grid_size
from mft_search.tune.duplicates import MAX_REPEATS, REPEAT_OF
from mft_search.tune.sampling import define_by_run

ITEMS = 100


def scores(correct: int) -> tuple[float, ...]:
    return tuple(1.0 if i < correct else 0.0 for i in range(ITEMS))


def epoch(correct: int, train_s: float = 10.0, per_item: float = 0.1) -> Epoch:
    return Epoch(scores(correct), train_s, per_item)


# x: a (best at its 2nd epoch), b (ties a within noise), c (far worse), d (a no-op: keeps every weight)
CURVES = {"a": (40, 60), "b": (30, 59), "c": (10, 20), "d": (70,)}
SPACE = SearchSpace.model_validate({"layer_group": [[0, 1]], "mode": ["local"], "ratio": [0.1]})


def make_table(curves=CURVES, no_op=("d",)) -> Table:
    return Table(items=tuple(f"q{i}" for i in range(ITEMS)), configs=tuple({"x": x} for x in curves),
                 epochs=tuple(tuple(epoch(c) for c in curve) for curve in curves.values()),
                 no_op=tuple(x in no_op for x in curves), about={})


def sample(trial):
    return {"x": trial.suggest_categorical("x", sorted(CURVES))}


def replay(order, pruner=None, subsets=None, budget=100, stop=True):
    return replay_with(_Enqueued(order), pruner, subsets, budget, stop)


def replay_with(sampler, pruner=None, subsets=None, budget=100, stop=True):
    table = make_table()
    run = Replay(table, landscape(table), sample, subsets)
    return run.run(sampler, pruner or optuna.pruners.NopPruner(), budget, stop)


class _Enqueued(optuna.samplers.RandomSampler):
    """Proposes `order` first (a fixed sequence of points), then random ones; keeps the study."""

    def __init__(self, order):
        super().__init__(seed=0)
        self.order = list(order)

    def sample_independent(self, study, trial, name, distribution):
        self.study = study
        if self.order:
            return self.order.pop(0)
        return super().sample_independent(study, trial, name, distribution)


def test_the_target_is_the_best_candidate_report_and_its_ties_within_noise():
    land = landscape(make_table())
    assert land.best == (0, 1)  # a's 60%: the no-op's 70% (the unmasked model) is never a candidate
    assert (1, 1) in land.within  # 59 of 100 against 60: one discordant item is noise
    assert (2, 1) not in land.within and (0, 0) not in land.within  # 20% and 40% are not
    assert land.config_within(make_table()) == [True, True, False, False]


def test_a_search_is_charged_every_epoch_it_runs_until_its_selection_reaches_the_target():
    outcome = replay(["c", "d", "b"])
    # c: 2 epochs, d: 1 (a no-op ends at its first report), b: 2, and b's 59% ties the best
    assert (outcome.epochs_to_target, outcome.trials, outcome.selected) == (5, 3, 1)
    assert outcome.seconds_to_target == pytest.approx(5 * (10.0 + 0.1 * ITEMS))


def test_a_no_op_never_becomes_the_selection_however_high_it_scores():
    outcome = replay(["d", "c"], budget=3)
    assert outcome.epochs_to_target is None and outcome.selected == 2 and outcome.epochs == 3


def test_pruned_trials_are_charged_only_the_epochs_they_ran():
    # below 35% at the first epoch is pruned: c and b cost one epoch each, then a reaches at its 2nd
    outcome = replay(["c", "b", "a"], pruner=optuna.pruners.ThresholdPruner(lower=0.35))
    assert (outcome.epochs_to_target, outcome.trials, outcome.selected) == (4, 3, 0)


def test_a_subset_report_costs_its_items_only_and_is_never_selected():
    # the first epoch scores a quarter of the items: its seconds count 25 items, and a's first
    # report (40%, subset) cannot be the selection; its full last report is
    outcome = replay(["a"], subsets={1: 0.25}, budget=2)
    assert outcome.seconds == pytest.approx(2 * 10.0 + 0.1 * 25 + 0.1 * ITEMS)
    assert outcome.epochs_to_target == 2 and outcome.selected == 0


def test_a_search_that_spends_its_budget_has_not_reached():
    outcome = replay(["c", "d", "b"], budget=4)  # b is cut off after its first epoch (30%)
    assert outcome.epochs_to_target is None and outcome.epochs == 4


def test_without_stopping_at_the_target_a_search_spends_its_budget_and_keeps_the_best():
    outcome = replay(["b", "a", "c"], budget=6, stop=False)
    assert outcome.epochs == 6 and outcome.selected == 0 and outcome.epochs_to_target == 2


def test_a_repeated_point_is_told_its_outcome_and_costs_nothing():
    # c, c again, then b: the sweep runs c once (tune.searcher), so b's target costs 2 + 2 epochs, not 6
    sampler = _Enqueued(["c", "c", "b"])
    outcome = replay_with(sampler)
    assert (outcome.epochs_to_target, outcome.trials, outcome.repeats, outcome.exhausted) == (4, 2, 1, False)
    first, copy, _ = sampler.study.trials
    assert copy.state == first.state == optuna.trial.TrialState.COMPLETE and copy.value == first.value == 0.2
    assert copy.intermediate_values == first.intermediate_values == {1: 0.1, 2: 0.2}
    assert copy.user_attrs == {REPEAT_OF: 0}


def test_a_repeat_of_a_pruned_trial_is_pruned_with_its_reports_and_no_rung_of_its_own():
    # Successive halving (reduction 4) keeps the best of each rung: a passes rung 0, c (10%) and b
    # (30%) are pruned there. c's repeat is PRUNED with c's report but never asked the pruner, so
    # it holds no rung (Ray's ASHA never hears of a repeat in the sweep either).
    sampler = _Enqueued(["a", "c", "c", "b"])
    outcome = replay_with(sampler, pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1), budget=4, stop=False)
    _, pruned, copy, _ = sampler.study.trials
    assert pruned.state == copy.state == optuna.trial.TrialState.PRUNED
    assert copy.intermediate_values == pruned.intermediate_values == {1: 0.1} and copy.value == 0.1
    assert "completed_rung_0" in pruned.system_attrs
    assert not any(k.startswith("completed_rung") for k in copy.system_attrs)
    assert (outcome.epochs, outcome.trials, outcome.repeats) == (4, 3, 1)


def test_a_search_that_exhausts_the_space_stops_and_has_not_reached():
    # Two points, each pruned at its first epoch (below 45%): a random sampler then repeats them
    # forever, at no cost; the search ends after MAX_REPEATS repeats in a row, short of its budget.
    table = make_table({"a": (40, 60), "c": (10, 20)}, no_op=())
    run = Replay(table, landscape(table), lambda t: {"x": t.suggest_categorical("x", ["a", "c"])})
    outcome = run.run(optuna.samplers.RandomSampler(seed=0), optuna.pruners.ThresholdPruner(lower=0.45), 100)
    assert outcome.epochs_to_target is None and (outcome.epochs, outcome.trials) == (2, 2)
    assert outcome.repeats >= MAX_REPEATS and outcome.exhausted


def test_the_grid_compute_counts_every_epoch_and_its_seconds():
    assert grid_compute(make_table()) == (7, pytest.approx(7 * 20.0))


def test_an_epoch_costs_the_tables_median_seconds_whatever_the_load_was_when_it_was_recorded():
    table = make_table()
    slow = tuple(tuple(Epoch(e.scores, 100.0, 1.0) for e in eps) if i == 0 else eps for i, eps in enumerate(table.epochs))
    costs = UnitCosts.of(Table(table.items, table.configs, slow, table.no_op, {}))
    assert (costs.train_s, costs.eval_s_per_item) == (10.0, 0.1)  # 2 slow epochs of 7: the median holds


def test_quantiles_are_values_seeds_had_and_a_miss_sorts_last():
    assert quantiles([4, 1, 3, 2]) == (1, 1, 2, 3, 4)
    assert quantiles([1, math.inf, 2])[2] == 2 and quantiles([1, math.inf, math.inf])[2] == math.inf


DEMO_SPACE = {"layer_group": {"size": 2, "start": {"low": 0, "high": 2}}, "mode": ["local", "global"],
              "ratio": [0.05, 0.1, 0.2], "threshold": {"low": -0.04, "high": -0.01}, "init": ["normal", "magnitude"]}


def test_the_grid_is_the_discretised_space_as_the_sweeps_grid_search_walks_it():
    space = discretise(SearchSpace.model_validate(DEMO_SPACE))
    assert space.threshold == FloatRange(low=-0.04, high=-0.01, step=0.01)
    points = grid_points(space)
    assert len(points) == grid_size(space) == 3 * (3 + 4) * 2  # groups x (ratios + thresholds) x inits
    assert len({config_key(p) for p in points}) == len(points)
    assert sorted({p["threshold"] for p in points if p["mode"] == "global"}) == pytest.approx([-0.04, -0.03, -0.02, -0.01])


def test_every_strategys_samples_are_grid_points():
    space = discretise(SearchSpace.model_validate(DEMO_SPACE))
    keys = {config_key(p) for p in grid_points(space)}
    configs = tuple(grid_points(space))
    table = Table(items=("q0",), configs=configs, epochs=tuple((epoch(1),) * 2 for _ in configs),
                  no_op=(False,) * len(configs),
                  about={"space": space.model_dump(mode="json"), "grace_period": 1, "reduction_factor": 2})

    for name, (sampler, _, _) in strategies(table).items():
        study = optuna.create_study(sampler=sampler(0))
        for _ in range(15):
            trial = study.ask()
            assert config_key(define_by_run(space)(trial)) in keys, name
            study.tell(trial, 0.5)


def test_quick_is_a_four_point_corner_of_the_demo_space():
    space = quick_space(discretise(SearchSpace.model_validate(DEMO_SPACE)))
    assert len(grid_points(space)) == 4 and space.mode == ["local"] and space.threshold is None
    assert SearchSpace.model_validate(space.model_dump(mode="json")) == space  # the replay rebuilds it so


def test_a_loss_table_scores_each_item_by_its_negated_loss_so_higher_is_better_throughout():
    from mft_search.bench.search_table import epochs_of
    from mft_search.train.evaluation import ItemScores

    reports = [{"report": 1, "time_train_s": 2.0, "time_eval_s": 1.0},
               {"report": 2, "time_train_s": 5.0, "time_eval_s": 3.0}]
    items = {1: ItemScores("loss", "loss", (("a", 0.5), ("b", 1.5))),
             2: ItemScores("loss", "loss", (("a", 0.25), ("b", 1.0)))}
    ids, epochs = epochs_of(reports, items)
    assert ids == ["a", "b"] and [e.scores for e in epochs] == [(-0.5, -1.5), (-0.25, -1.0)]
    assert [(e.train_s, e.eval_s_per_item) for e in epochs] == [(2.0, 0.5), (3.0, 1.0)]
    fraction = {1: ItemScores("fraction", "gsm8k", (("a", 1.0), ("b", 0.0)))}
    assert epochs_of(reports[:1], fraction)[1][0].scores == (1.0, 0.0)


def test_a_lower_loss_that_every_item_shares_stands_apart_from_noise():
    # b's loss is lower than a's by 0.05 on every item: a paired difference far outside noise,
    # though far below the item-to-item spread of the losses themselves
    spread = [0.5 + (i % 10) / 5 for i in range(ITEMS)]
    table = Table(items=tuple(f"q{i}" for i in range(ITEMS)), configs=({"x": "a"}, {"x": "b"}),
                  epochs=((Epoch(tuple(-s for s in spread), 1.0, 0.1),),
                          (Epoch(tuple(-s + 0.05 for s in spread), 1.0, 0.1),)),
                  no_op=(False, False), about={"metric": "loss"})
    land = landscape(table)
    assert land.best == (1, 0) and land.within == {(1, 0)}


def test_the_loss_landscape_reads_the_same_validation_problems_as_the_demos_benchmark(tmp_path, monkeypatch):
    from mft_search.bench import search
    from mft_search.bench.search_table import show
    from mft_search.config.schema import DomainSpec

    monkeypatch.setattr(search, "CACHE_DIR", tmp_path / "cache")
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": " a #### 1"}\n')
    (tmp_path / "validation.jsonl").write_text('{"question": "v", "answer": " b #### 2"}\n')
    domain = {"name": "arithmetic",
              "train": {"source": str(tmp_path / "train.jsonl"), "prompt_field": "question", "response_field": "answer"},
              "validation": {"evaluator": "gsm8k", "source": str(tmp_path / "validation.jsonl")}}
    loss = search.loss_domain(domain)
    parsed = DomainSpec.model_validate(loss)
    assert parsed.validation is None and parsed.train.validation_split == "validation"
    data = Path(parsed.train.source)
    assert (data / "validation.jsonl").resolve() == (tmp_path / "validation.jsonl").resolve()
    assert (data / "train.jsonl").resolve() == (tmp_path / "train.jsonl").resolve()
    assert search.loss_domain(domain) == loss  # again: the links are kept, not remade
    assert show(-0.6286, "loss") == "0.6286 nats" and show(0.308, "accuracy") == "30.8%"


def test_two_searches_that_spend_the_same_on_every_seed_are_not_told_apart():
    from mft_search.bench.search import _paired_p
    from mft_search.bench.search_replay import Outcome

    same = [Outcome(4, 1.0, 4, 1.0, 2, 0), Outcome(6, 1.0, 6, 1.0, 3, 0)]
    assert _paired_p(same, same, grid_epochs=10) == 1.0
    faster = [Outcome(e, 1.0, e, 1.0, 1, 0) for e in (1, 2, 1, 2, 1, 2, 1, 2)]
    slower = [Outcome(e, 1.0, e, 1.0, 1, 0) for e in (5, 6, 7, 8, 5, 6, 7, 8)]
    assert _paired_p(faster, slower, grid_epochs=10) < 0.01


def test_the_report_counts_the_searches_that_repeats_ended_short_of_the_target(capsys):
    ended, reached = Outcome(None, None, 2, 4.0, 2, 0, 100, True), Outcome(2, 4.0, 2, 4.0, 1, 0, 100, True)
    search._repeats({"GP": [ended, reached], "TPE": [reached, reached]})
    assert capsys.readouterr().out.endswith(f"{MAX_REPEATS} times in a row and stopped short of the target: "
                                            "GP 1/2, TPE 0/2\n")


def test_the_benchmark_masks_the_best_fft_of_the_demo_run_under_the_storage_it_is_given(tmp_path):
    from mft_search.errors import ConfigError

    with pytest.raises(ConfigError, match=f"no fine-tuned demo backbone in {tmp_path}/demo "):
        search.run(argv=["--storage", str(tmp_path)])
