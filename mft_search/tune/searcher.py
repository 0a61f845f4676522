"""What proposes and stops a study's trials: Optuna through Ray's OptunaSearch, and ASHA.

A Tune-native searcher (ray.tune.search.*) would be built in `make_searcher` instead.
"""

from __future__ import annotations

import os

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mft_search.config.space import enqueue_points
from mft_search.experiment import layout
from mft_search.experiment.guards import constraint_values
from mft_search.experiment.results import selection_metric, trial_status, trial_value
from mft_search.tune.budget import Budget, record_stop
from mft_search.tune.duplicates import MAX_REPEATS, finished_twin, tell_as_twin
from mft_search.tune.guards import guard_limits
from mft_search.tune.rungs import max_reports
from mft_search.tune.sampling import define_by_run, make_sampler
from mft_search.tune.study import Study, journal_path, journal_storage, publish_journal


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records ASHA-stopped trials as PRUNED and failed ones as FAIL.

    Ray's own marks a trial COMPLETE whenever it has a last value, early stop or error alike,
    which feeds TPE and the importance figures with half-trained scores as if they were final.

    A completed trial's value is its best report's metric, the one selection ranks it by
    (experiment.results.best_reports), not its last: the same number in Optuna, optuna-dashboard,
    the console line and the leaderboard.

    With guards (`_guards`, experiment.guards.GuardLimit), a completed or pruned trial carries
    Optuna constraints, each guard's violation at that best report, set with
    `Trial.set_constraint` before it is told: TPE and GP read them from the trial and sample away
    from infeasible points (optuna >= 5.0, where `constraints_func` is deprecated), while ASHA
    still ranks by the metric alone.
    """

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next point, or FINISHED once a budget is spent or the space is exhausted: Tune then
        starts no new trial and ends the stage when the running ones finish (none is stopped,
        none thrown away).

        A drawn point that a finished (COMPLETE or PRUNED) trial of the study already ran is not
        run again (tune.duplicates): its Optuna trial is told the earlier outcome and the sampler
        draws again. Tune never sees the repeat, so `search.num_trials` (Tune's num_samples)
        counts the trials that ran; a repeat counts toward none. MAX_REPEATS repeats in a row
        end the search as a spent budget does, with the reason in the study's stop note: the
        space is exhausted, or the sampler keeps proposing what it ran (GP does, on a small
        discrete space: the repeat's outcome does not move its model).
        """
        budget = self.__dict__.get("_budget")
        if budget is not None:
            budget.start()
            reason = budget.spent()
            if reason is not None:
                budget.record_stop(reason)
                return Searcher.FINISHED
        for _ in range(MAX_REPEATS):
            config = super().suggest(trial_id)
            trial = self._ot_trials[trial_id]
            twin = finished_twin(self._ot_study, trial)
            if twin is None:
                return config
            tell_as_twin(self._ot_study, trial, twin)
            # Forget the told trial: the next super().suggest asks Optuna for a new one under this id.
            del self._ot_trials[trial_id]
        self._record_exhausted()
        return Searcher.FINISHED

    def _record_exhausted(self) -> None:
        note = self.__dict__.get("_stop_note")
        if note is not None:
            record_stop(note, f"the sampler drew {MAX_REPEATS} finished points in a row (the space is exhausted, "
                              "or the sampler keeps returning to what it ran)")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._note_best(trial_id, result)
        self._note_time(trial_id, result)
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished in the journal before a driver restart; Tune replays its end

    def _note_best(self, trial_id: str, result: dict | None) -> None:
        # In __dict__, which OptunaSearch.save pickles: a resumed driver keeps every trial's best so far.
        best = self.__dict__.setdefault("_best_metric", {})
        previous = best.get(trial_id)
        best[trial_id] = trial_value([previous, selection_metric(result or {})])
        limits = self.__dict__.get("_guards")
        if limits and best[trial_id] is not None and best[trial_id] != previous:  # ties: the earlier report
            self.__dict__.setdefault("_constraints", {})[trial_id] = constraint_values(limits, result)

    def _constrain(self, trial_id: str) -> None:
        """Each guard's violation at the trial's best report, on the Optuna trial before it is told."""
        trial = self._ot_trials[trial_id]
        for name, value in self.__dict__.get("_constraints", {}).get(trial_id, {}).items():
            try:
                trial.set_constraint(name, value)
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # told before a driver restart: its constraints went with it

    def _note_time(self, trial_id: str, result: dict | None) -> None:
        budget = self.__dict__.get("_budget")
        if budget is not None:
            budget.note(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            self._tell(trial_id, result, error)
        finally:
            self._publish()

    def save(self, checkpoint_path: str) -> None:
        """Tune saves the searcher (its trials by journal id): the published journal goes first,
        so a restored searcher never names a trial the journal lacks."""
        self._publish()
        super().save(checkpoint_path)

    def _publish(self) -> None:
        journal = self.__dict__.get("_journal")  # (working copy, published copy), see tune.study
        if journal is None or not os.path.exists(journal[0]):
            return
        stat = os.stat(journal[0])
        version = (stat.st_size, stat.st_mtime_ns)  # Tune saves every ~10 s: upload only what changed
        if version != self.__dict__.get("_published"):
            publish_journal(*journal)
            self._published = version

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        self._note_time(trial_id, result)
        status = trial_status(result, error)
        if status != "failed" and trial_id not in self._completed_trials:
            # Tune hands the report that stops a trial (ASHA's, or its last) to on_trial_complete
            # only, never to on_trial_result (ray.tune's TuneController._process_trial_result)
            self._note_best(trial_id, result)
            self._constrain(trial_id)
        if status == "completed" and trial_id not in self._completed_trials:
            result = {**result, "metric": self._best_metric[trial_id]}
        if status == "completed" or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.FAIL if status == "failed" else TrialState.PRUNED
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        except ValueError:  # told before a driver restart: the journal already has its outcome
            pass
        self._completed_trials.add(trial_id)


def make_searcher(study: Study, *, enqueue: bool = True) -> PrunedAwareOptunaSearch:
    """The study's searcher; `enqueue=False` after trials already ran (the first points with them)."""
    search = study.cfg.search
    storage = journal_storage(study)
    _fail_abandoned(storage, study.name)
    searcher = PrunedAwareOptunaSearch(
        space=define_by_run(search.space), metric="metric", mode="max",
        points_to_evaluate=(enqueue_points(search.space, search.enqueue) if enqueue else None) or None,
        sampler=make_sampler(search.algorithm, search.seed, search.space),
        study_name=study.name, storage=storage)
    searcher._journal = (str(journal_path(study)), str(study.dir / layout.JOURNAL))
    searcher._stop_note = str(study.dir / layout.BUDGET_STOP)  # what ended the search early, if anything
    budget = make_budget(study)
    if budget.active:
        searcher._budget = budget  # in __dict__: saved with the searcher, so a restored stage keeps its spending
    if study.domain.guard:
        searcher._guards = guard_limits(study)
    return searcher


def make_budget(study: Study) -> Budget:
    """The probe's budgets; GPU-hours count every GPU of a trial's workers."""
    search, res = study.cfg.search, study.resources
    return Budget(search.time_budget_s, search.max_gpu_hours, res.workers_per_trial * res.gpus_per_worker,
                  note_path=str(study.dir / layout.BUDGET_STOP))


def _fail_abandoned(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Trials a dead driver left RUNNING in the journal: told FAIL, or TPE's constant liar would
    count them as pending forever. (A restored Tune never gets here: it keeps its own searcher.)"""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study yet: a fresh sweep
        return
    for trial in existing.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        existing.tell(trial.number, state=TrialState.FAIL)


def make_scheduler(study: Study):
    asha = study.cfg.search.asha
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric="metric", mode="max", max_t=max_reports(study.cfg),
                         grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)
