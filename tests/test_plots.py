"""The figures' account of noise, read from the Figure objects' artists and norms, never pixels:
the heatmap centred on the unmasked model with cells within noise marked, importances that say
how many trials they rest on, and the history's stages."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
from matplotlib.colors import TwoSlopeNorm
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from mft_search.experiment.items import COLUMNS
from mft_search.report import plots
from mft_search.report.experiment import StudyRecord, Summary, SummaryRow, per_trial
from mft_search.report.importance import FLAGGED_BELOW, WITHHELD_BELOW, param_importances
from mft_search.report.noise import noise_half_width, unmasked_reference
from mft_search.tune.duplicates import REPEAT_OF

# 400 validation items, 240 of them correct: p = 0.6, so std**2 = p(1 - p) = 0.24 and the band's
# half-width is 1.96 * sqrt(2) * sqrt(0.24) / sqrt(400) = 0.0679, 6.8 points.
CORRECT, ITEMS = 240, 400
HALF_WIDTH = 1.96 * math.sqrt(2) * math.sqrt(0.24) / math.sqrt(ITEMS)


def _items(variant_scores: dict[tuple[str, int], list[float]], kind: str = "fraction") -> pd.DataFrame:
    """Validation rows of items.parquet: {(variant, seed): scores}."""
    return pd.DataFrame([{"study": "tiny/arith", "split": "validation", "variant": variant, "seed": seed,
                          "item": f"p{i}", "score": score, "kind": kind, "settings": "validation"}
                         for (variant, seed), scores in variant_scores.items() for i, score in enumerate(scores)],
                        columns=COLUMNS)


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


# 0.62 is 2 points above the unmasked 0.60, within the 6.8-point band; 0.75 and 0.40 are far outside.
CELLS = [("probe", "0-3", 0.05, 0.62), ("probe", "0-3", 0.10, 0.75), ("probe", "8-11", 0.05, 0.40)]
UNMASKED_ITEMS = {("unmasked", 0): [1.0] * CORRECT + [0.0] * (ITEMS - CORRECT)}


def test_noise_half_width_is_the_95_percent_band_of_two_independent_means() -> None:
    assert noise_half_width([1.0] * CORRECT + [0.0] * (ITEMS - CORRECT)) == pytest.approx(HALF_WIDTH)
    assert noise_half_width([1.0, 1.0, 1.0, 0.0]) == pytest.approx(1.96 * math.sqrt(2) * math.sqrt(0.75 * 0.25) / 2)


def test_loss_reference_is_the_lowest_seeds_nll_spread_around_the_negated_metric() -> None:
    nll = [1.2, 1.5, 1.8, 2.1]  # std = sqrt((0.45**2 + 0.15**2) / 2)
    items = _items({("unmasked", 0): nll, ("unmasked", 1): [5.0, 0.0, 5.0, 0.0], ("best_mft", 0): [9.0] * 4}, "loss")
    reference = unmasked_reference(_study(CELLS, unmasked=-1.65, items=items))
    assert reference.value == -1.65 and reference.items == 4
    assert reference.half_width == pytest.approx(1.96 * math.sqrt(2) * math.sqrt((0.45**2 + 0.15**2) / 2) / 2)


def test_heatmap_diverges_from_the_unmasked_model_and_marks_cells_within_noise() -> None:
    study = _study(CELLS, unmasked=0.60, items=_items(UNMASKED_ITEMS))
    figure = plots.ratio_heatmap(study, percent=True, reference=unmasked_reference(study))
    axes = figure.axes[0]
    norm = axes.images[0].norm
    assert isinstance(norm, TwoSlopeNorm) and norm.vcenter == pytest.approx(60.0)
    assert norm.vmin + norm.vmax == pytest.approx(120.0)  # symmetric: a shade means one distance either side
    assert sorted(t.get_text() for t in axes.texts) == ["40.0", "75.0", "≈62.0"]
    title = axes.get_title()
    assert "centred on the unmasked model (60.0)" in title and "≈: within ±6.8 pts of it" in title
    assert f"{ITEMS} validation items" in title and "paired test would be narrower" in title


def test_heatmap_without_per_item_scores_is_centred_but_marks_nothing() -> None:
    study = _study(CELLS, unmasked=0.60)
    axes = plots.ratio_heatmap(study, percent=True, reference=unmasked_reference(study)).axes[0]
    assert axes.images[0].norm.vcenter == pytest.approx(60.0)
    assert not any("≈" in t.get_text() for t in axes.texts)
    assert "no per-item validation scores yet, so no noise band" in axes.get_title()


def test_heatmap_before_evaluation_keeps_a_sequential_map() -> None:
    study = _study(CELLS)
    assert unmasked_reference(study) is None
    axes = plots.ratio_heatmap(study, percent=True, reference=None).axes[0]
    assert not isinstance(axes.images[0].norm, TwoSlopeNorm)
    assert sorted(t.get_text() for t in axes.texts) == ["40.0", "62.0", "75.0"]
    assert "unmasked reference not yet available (evaluation pending)" in axes.get_title()


@pytest.mark.parametrize("stages", [("probe",), ("probe", "refine")])
def test_history_names_each_stage_over_its_span(stages: tuple[str, ...]) -> None:
    cells = [(stage, "0-3", 0.05, 0.5 + k / 10) for stage in stages for k in range(3)]
    axes = plots.history(_study(cells), percent=True, reference=None).axes[0]
    names = axes.child_axes[0]  # the axis above the plot
    assert [label.get_text() for label in names.get_xticklabels()] == list(stages)
    assert list(names.get_xticks()) == [2.0, 5.0][:len(stages)]  # the middle of trials 1-3 and 4-6
    assert [line.get_xdata()[0] for line in axes.lines if line.get_linestyle() == ":"] == [3.5][:len(stages) - 1]


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


def test_importances_count_only_the_trials_that_ran_not_their_repeats(tmp_path: Path) -> None:
    path = _journal(tmp_path / "optuna.journal", FLAGGED_BELOW - 1)
    study = optuna.load_study(study_name="tiny/arith", storage=JournalStorage(JournalFileBackend(str(path))))
    first = study.trials[0]
    for _ in range(3):  # the sweep's record of a point drawn again: told, not run (tune.duplicates)
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=first.value, params=first.params,
                                     distributions=first.distributions, user_attrs={REPEAT_OF: first.number}))
    importances = param_importances(path, "tiny/arith")
    assert importances.values and importances.trials == FLAGGED_BELOW - 1 and importances.flag is not None


def test_importances_from_the_flag_threshold_on_are_not_flagged(tmp_path: Path) -> None:
    importances = param_importances(_journal(tmp_path / "optuna.journal", FLAGGED_BELOW), "tiny/arith")
    assert importances.values and importances.trials == FLAGGED_BELOW and importances.flag is None
    title = plots.importance_bars(_study(CELLS), importances).axes[0].get_title()
    assert title.endswith(f"from {FLAGGED_BELOW} completed trials")
