"""The sweep's searcher never starts a Tune trial for a point a finished trial already ran
(tune.duplicates): driven by hand, as Tune drives it, on an in-memory Optuna study, no Ray actors."""

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from mft_search.experiment.guards import GuardLimit, guard_metric
from mft_search.tune.budget import budget_stop
from mft_search.tune.duplicates import MAX_REPEATS, REPEAT_OF
from mft_search.tune.searcher import PrunedAwareOptunaSearch


class _Scripted(optuna.samplers.RandomSampler):
    """Draws `order` first, then at random (from a two-point space: soon only repeats)."""

    def __init__(self, order):
        super().__init__(seed=0)
        self.order = list(order)

    def sample_independent(self, study, trial, name, distribution):
        return self.order.pop(0) if self.order else super().sample_independent(study, trial, name, distribution)


def _searcher(order, name="repeats", stop_note=None):
    storage = optuna.storages.InMemoryStorage()
    search = PrunedAwareOptunaSearch(space={"x": CategoricalDistribution(["a", "b"])}, metric="metric", mode="max",
                                     sampler=_Scripted(order), study_name=name, storage=storage)
    if stop_note is not None:
        search._stop_note = str(stop_note)
    return search, lambda: optuna.load_study(study_name=name, storage=storage).trials


def _run(search, trial_id, metrics):
    for step, metric in enumerate(metrics, start=1):
        search.on_trial_result(trial_id, {"metric": metric, "training_iteration": step})
    search.on_trial_complete(trial_id, {"metric": metrics[-1], "training_iteration": len(metrics), "done": True})


def test_a_repeat_of_a_completed_point_never_reaches_tune_and_the_study_holds_its_outcome():
    search, trials = _searcher(["a", "a", "b"])
    assert search.suggest("t1") == {"x": "a"}
    _run(search, "t1", [0.3, 0.5, 0.4])
    assert search.suggest("t2") == {"x": "b"}  # a again is told, not handed to Tune
    first, copy, second = trials()
    assert copy.state == TrialState.COMPLETE and copy.value == first.value == 0.5
    assert copy.intermediate_values == first.intermediate_values == {1: 0.3, 2: 0.5, 3: 0.4}
    assert copy.user_attrs == {REPEAT_OF: 0} and second.state == TrialState.RUNNING
    _run(search, "t2", [0.6])  # Tune's t2 is the trial that ran b
    assert [t.value for t in trials()] == [0.5, 0.5, 0.6]


def test_a_repeat_of_a_pruned_point_is_pruned_with_its_reports_and_constraints():
    search, trials = _searcher(["a", "a", "b"], name="pruned")
    search._guards = [GuardLimit("ifeval", 0.60, 2.0)]
    search.suggest("t1")
    search.on_trial_result("t1", {"metric": 0.2, guard_metric("ifeval"): 0.55, "training_iteration": 1})
    search.on_trial_complete("t1", {"metric": 0.2, guard_metric("ifeval"): 0.55, "step": 1, "total_steps": 4})
    assert search.suggest("t2") == {"x": "b"}
    pruned, copy, _ = trials()
    assert pruned.state == copy.state == TrialState.PRUNED and copy.value == pruned.value == 0.2
    assert copy.constraints == pruned.constraints == {"ifeval": pytest.approx(0.03)}


def test_a_point_that_is_running_or_failed_is_run_again():
    search, trials = _searcher(["a", "a", "a"], name="unfinished")
    assert search.suggest("t1") == {"x": "a"}
    assert search.suggest("t2") == {"x": "a"}  # t1 is running: no outcome to copy
    search.on_trial_complete("t1", error=True)
    search.on_trial_complete("t2", error=True)
    assert search.suggest("t3") == {"x": "a"}  # both failed: a failure is tried again
    assert [t.state for t in trials()] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]


def test_an_exhausted_space_finishes_the_search_and_says_why(tmp_path):
    note = tmp_path / "budget_stop.json"
    search, trials = _searcher(["a", "b"], name="exhausted", stop_note=note)
    for trial_id, metric in (("t1", 0.5), ("t2", 0.6)):
        search.suggest(trial_id)
        _run(search, trial_id, [metric])
    assert search.suggest("t3") == Searcher.FINISHED
    assert "t3" not in search._ot_trials  # nothing left for Tune to run or tell
    told = trials()[2:]
    assert len(told) == MAX_REPEATS and all(t.state == TrialState.COMPLETE for t in told)
    assert "finished points in a row" in json.loads(note.read_text())["reason"] and budget_stop(tmp_path) is not None
