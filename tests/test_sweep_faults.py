"""Trials that really break inside a real sweep: a NaN loss and an out-of-memory allocation.

Both are aimed at enqueued points through MFT_SEARCH_FAULTS (mft_search/train/faults.py). The sweep
must record them failed with their reason, select neither, and finish."""

import json
import os

import optuna
import pandas as pd
import pytest

from mft_search.train import faults
from test_sweep import sweep, write_config

pytestmark = pytest.mark.ray

POINTS = [{"layer_group": [0, 1], "mode": "local", "ratio": r, "init": "normal"} for r in (0.1, 0.2, 0.3)]
PLANNED = [{"match": {"ratio": 0.2}, "nan_at_step": 2}, {"match": {"ratio": 0.3}, "oom_at_step": 1}]


def test_nan_and_out_of_memory_trials_are_recorded_failed_and_never_selected(tmp_path, tiny_backbone, problems_dir):
    search = {"num_trials": 3, "max_concurrent_trials": 2, "enqueue": POINTS,
              "space": {"layer_group": {"size": 2, "start": {"low": 0, "high": 2}}, "mode": ["local"],
                        "ratio": {"low": 0.05, "high": 0.3}, "init": ["normal"]}}
    config = write_config(tmp_path, tiny_backbone, problems_dir, search=search, retries=0,
                          stages={"probe": {"data_fraction": 0.5}, "refine": {"top_k": 0}}, baselines=["unmasked"])
    env = {**os.environ, faults.ENV: json.dumps(PLANNED)}
    result = sweep("--config", str(config), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    exp = tmp_path / "runs" / "e2e"
    frame = pd.read_parquet(exp / "results.parquet")
    trials = frame.groupby("trial_id").agg(ratio=("param.ratio", "first"), status=("status", "last"),
                                           error=("error", "last"))
    by_ratio = trials.set_index("ratio")
    assert by_ratio.loc[0.1, "status"] in ("completed", "pruned")
    assert by_ratio.loc[0.2, "status"] == "failed" and "training loss became nan at step 2" in by_ratio.loc[0.2, "error"]
    assert by_ratio.loc[0.3, "status"] == "failed" and "out of memory at step 1" in by_ratio.loc[0.3, "error"]

    summary = json.loads((exp / "studies" / "tiny__gsm" / "summary.json").read_text())
    best = next(row for row in summary["rows"] if row["name"] == "best_mft")
    assert best["params"]["ratio"] == 0.1, "a broken trial was selected"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "studies" / "tiny__gsm" / "optuna.journal")))
    states = {t.params["ratio"]: t.state.name for t in optuna.load_study(study_name="tiny/gsm", storage=storage).trials}
    assert states[0.2] == states[0.3] == "FAIL"
    leaderboard = (exp / "leaderboard.md").read_text()
    assert "out of memory" in leaderboard and "nan" in leaderboard.lower()
