"""results.parquet: upserts by (study, stage, trial, report), statuses, atomic rewrites."""

import os

from mft_search.experiment.results import ResultsTable, trial_status


def test_reports_upsert_and_survive_a_reload_in_numeric_order(tmp_path):
    path = tmp_path / "results.parquet"
    table = ResultsTable(path)
    base = {"study": "b/d", "stage": "probe", "trial_id": "t1"}
    for report in (2, 10, 1, 2):  # report 2 twice: a replay after a restart
        table.add_report(base, {"mode": "local"}, {"report": report, "metric": report / 10, "step": report})
    table.finish(base, {"mode": "local"}, "completed")
    table.flush()
    frame = ResultsTable(path).frame()
    assert frame["report"].tolist() == [1, 2, 10]
    assert set(frame["status"]) == {"completed"} and frame["param.mode"].tolist() == ["local"] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # others on a shared volume can read it


def test_a_trial_that_never_reported_is_still_recorded_as_failed(tmp_path):
    table = ResultsTable(tmp_path / "r.parquet")
    table.finish({"study": "b/d", "stage": "probe", "trial_id": "t9"}, {"ratio": 0.2}, "failed", "CUDA out of memory")
    (row,) = table.frame().to_dict("records")
    assert row["status"] == "failed" and row["error"] == "CUDA out of memory"
    assert row["param.ratio"] == 0.2, "which configuration failed must be on record"


def test_status_tells_pruned_from_completed_and_failed():
    assert trial_status({"step": 3, "total_steps": 6}, errored=False) == "pruned"
    assert trial_status({"step": 6, "total_steps": 6}, errored=False) == "completed"
    assert trial_status({"step": 6, "total_steps": 6}, errored=True) == "failed"
    assert trial_status(None, errored=False) == "completed"


def test_a_trial_on_record_as_ended_is_replayed_not_retrained(tmp_path):
    # Tune may restore a trial as unfinished when the driver died after our record of its end
    from types import SimpleNamespace

    from mft_search.tune.stage import _recorded_end

    table = ResultsTable(tmp_path / "results.parquet")
    base = {"study": "b/d", "stage": "probe", "trial_id": "t1"}
    for report in (1, 2):
        table.add_report(base, {"mode": "local"}, {"report": report, "metric": report / 10, "step": report,
                                                   "total_steps": 4, "time_train_s": 1.5})
    study = SimpleNamespace(exp_dir=tmp_path, name="b/d")
    table.flush()
    assert _recorded_end(study, "probe", "t1") is None  # still running on record: train it
    table.finish(base, {"mode": "local"}, "pruned")
    table.flush()
    replay = _recorded_end(study, "probe", "t1")
    assert replay["report"] == 2 and replay["metric"] == 0.2 and replay["replayed"] and replay["time_train_s"] == 1.5
    assert trial_status(replay, errored=False) == "pruned"


def test_closing_a_stage_marks_trials_still_running_as_interrupted(tmp_path):
    table = ResultsTable(tmp_path / "r.parquet")
    for trial_id in ("done", "lost"):
        table.add_report({"study": "b/d", "stage": "probe", "trial_id": trial_id}, {}, {"report": 1, "metric": 0.1})
    table.finish({"study": "b/d", "stage": "probe", "trial_id": "done"}, {}, "completed")
    table.add_report({"study": "b/d", "stage": "refine", "trial_id": "other"}, {}, {"report": 1, "metric": 0.1})
    assert table.close_stage("b/d", "probe") == ["lost"]
    statuses = {(r["stage"], r["trial_id"]): r["status"] for r in table.frame().to_dict("records")}
    assert statuses == {("probe", "done"): "completed", ("probe", "lost"): "interrupted", ("refine", "other"): "running"}


def test_selection_never_takes_a_failed_or_no_op_trial():
    import pandas as pd

    from mft_search.tune.evaluate import best_candidates

    frame = pd.DataFrame([
        {"study": "b/d", "stage": "probe", "trial_id": t, "status": status, "report": 1, "metric": metric,
         "mask_path": f"{t}.mask", "param.mode": "global"}
        for t, status, metric in (("t1", "no-op", 0.9), ("t2", "failed", 0.8), ("t3", "completed", 0.5))])
    assert [c.trial_id for c in best_candidates(frame, "b/d", "probe", 3)] == ["t3"]


def test_selection_finds_nothing_when_no_trial_ever_reported():
    import pandas as pd

    from mft_search.tune.evaluate import best_candidates

    frame = pd.DataFrame([{"study": "b/d", "stage": "probe", "trial_id": "t1", "status": "failed", "report": 0}])
    assert best_candidates(frame, "b/d", "probe", 2) == []


def test_the_recorder_pickles_after_something_replaced_builtins_print(tmp_path, monkeypatch):
    # Ray's tqdm_ray replaces builtins.print in the driver (safe_print); Tune then pickles the
    # next stage's callbacks with its Tuner, and a Recorder holding the original print failed
    # with "Can't pickle <built-in function print>: it's not the same object as builtins.print".
    import builtins
    import pickle
    from types import SimpleNamespace

    from mft_search.tune.recorder import Recorder

    recorder = Recorder(tmp_path / "results.parquet", SimpleNamespace(name="b/d"), "refine")
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: None)
    restored = pickle.loads(pickle.dumps(recorder))
    lines = []
    monkeypatch.setattr(builtins, "print", lines.append)
    restored.log("trial t1 completed")
    assert lines == ["trial t1 completed"] and restored.table.path == tmp_path / "results.parquet"


def test_a_rows_point_is_its_present_params_as_python_values(tmp_path):
    from mft_search.experiment.results import params_of

    table = ResultsTable(tmp_path / "r.parquet")
    for trial_id, params in (("t1", {"mode": "local", "ratio": 0.1}), ("t2", {"mode": "global", "threshold": -0.03})):
        table.add_report({"study": "b/d", "stage": "probe", "trial_id": trial_id}, params, {"report": 1, "metric": 0.1})
    rows = table.frame().set_index("trial_id")
    assert params_of(rows.loc["t1"]) == {"mode": "local", "ratio": 0.1}  # t2's threshold column: NaN here, left out
    assert params_of(rows.loc["t2"]) == {"mode": "global", "threshold": -0.03}
    assert type(params_of(rows.loc["t1"])["ratio"]) is float


def test_a_trial_has_one_value_its_best_report_in_optuna_and_selection():
    # Optuna used to record the last report (0.4) while the leaderboard ranked the trial by its
    # best (0.5): importances, optuna-dashboard and TPE saw another number than selection.
    import optuna
    from optuna.distributions import FloatDistribution

    from mft_search.experiment.results import trial_value
    from mft_search.tune.searcher import PrunedAwareOptunaSearch

    storage = optuna.storages.InMemoryStorage()
    search = PrunedAwareOptunaSearch(space={"x": FloatDistribution(0.0, 1.0)}, metric="metric", mode="max",
                                     study_name="one-value", storage=storage)
    search.suggest("t1")
    for step, metric in enumerate((0.3, 0.5, 0.4), start=1):
        search.on_trial_result("t1", {"metric": metric, "training_iteration": step})
    search.on_trial_complete("t1", {"metric": 0.4, "training_iteration": 3, "done": True})
    (trial,) = optuna.load_study(study_name="one-value", storage=storage).trials
    assert trial.value == 0.5 == trial_value([0.3, 0.5, float("nan"), None, 0.4])
    assert trial_value([None, float("nan")]) is None
