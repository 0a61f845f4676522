"""The figures' account of noise, read from the Figure objects' artists, never pixels:
importances that say how many trials they rest on."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from mft_search.experiment.items import COLUMNS
from mft_search.report import plots
from mft_search.report.experiment import StudyRecord, Summary, SummaryRow, per_trial
from mft_search.report.importance import FLAGGED_BELOW, WITHHELD_BELOW, param_importances


def _study(cells: list[tuple[str, str, float, float]], unmasked: float | None = None,
           items: pd.DataFrame | None = None) -> StudyRecord:
    """A study whose trials are (stage, layer group, ratio, metric), one completed report each."""
    rows = pd.DataFrame([{"study": "tiny/arith", "stage": stage, "trial_id": f"t{i}", "status": "completed",
                          "report": 1, "metric": metric, "param.layer_group": group, "param.mode": "local",
                          "param.ratio": ratio} for i, (stage, group, ratio, metric) in enumerate(cells)])
    summary = None if unmasked is None else Summary(
        "tiny", "arith", "accuracy", None, None, (SummaryRow("unmasked", unmasked, None),), "")
    return StudyRecord("tiny", "arith", Path("studies/tiny__arith"), rows, per_trial(rows), summary,
                       items if items is not None else pd.DataFrame(columns=COLUMNS))


CELLS = [("probe", "0-3", 0.05, 0.62), ("probe", "0-3", 0.10, 0.75), ("probe", "8-11", 0.05, 0.40)]


def _journal(path: Path, completed: int) -> Path:
    """A journal with `completed` COMPLETE trials over two varying parameters, and one pruned."""
    study = optuna.create_study(study_name="tiny/arith", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(path))))
    distributions = {"layer_group": CategoricalDistribution(["0-3", "8-11"]), "lr": FloatDistribution(1e-6, 1e-4)}
    for i in range(completed + 1):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if i < completed else TrialState.PRUNED, value=i / 100 if i < completed else None,
            params={"layer_group": ("0-3", "8-11")[i % 2], "lr": 1e-6 * (i + 1)}, distributions=distributions))
    return path


def test_importances_below_the_floor_are_withheld_with_the_count(tmp_path: Path) -> None:
    importances = param_importances(_journal(tmp_path / "optuna.journal", WITHHELD_BELOW - 1), "tiny/arith")
    assert importances.values == {} and importances.trials == 1 and importances.flag is None
    assert importances.note == "needs at least 2 completed trials, the study has 1"


@pytest.mark.parametrize("completed", [WITHHELD_BELOW, FLAGGED_BELOW - 1])
def test_importances_on_few_trials_are_shown_but_flagged(tmp_path: Path, completed: int) -> None:
    importances = param_importances(_journal(tmp_path / "optuna.journal", completed), "tiny/arith")
    assert set(importances.values) == {"layer_group", "lr"} and importances.trials == completed
    assert f"rests on only {completed} completed trials" in importances.flag
    title = plots.importance_bars(_study(CELLS), importances).axes[0].get_title()
    assert f"from {completed} completed trials" in title and f"flagged: fewer than {FLAGGED_BELOW}" in title


def test_importances_from_the_flag_threshold_on_are_not_flagged(tmp_path: Path) -> None:
    importances = param_importances(_journal(tmp_path / "optuna.journal", FLAGGED_BELOW), "tiny/arith")
    assert importances.values and importances.trials == FLAGGED_BELOW and importances.flag is None
    title = plots.importance_bars(_study(CELLS), importances).axes[0].get_title()
    assert title.endswith(f"from {FLAGGED_BELOW} completed trials")
