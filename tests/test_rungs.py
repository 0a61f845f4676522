"""Rung-wise validation without Ray: which report is which ASHA rung, the subset each scores, the
trial spec that carries them, and selection that never ranks a subset score."""

import pandas as pd
import pytest
from ray.tune.schedulers.async_hyperband import _Bracket  # Ray's bookkeeping only: no cluster starts

from mft_search.config.schema import AshaSettings
from mft_search.core.files import location
from mft_search.experiment.results import best_reports, selection_metric
from mft_search.train.evaluation import subset_indices
from mft_search.tune.rungs import milestones, validation_subsets


@pytest.mark.parametrize("grace, rf, max_t", [(1, 2, 2), (1, 2, 8), (1, 3, 10), (2, 2, 16), (1, 2, 10_000), (3, 2, 2)])
def test_the_rungs_are_where_rays_asha_places_them(grace, rf, max_t):
    ray_rungs = [milestone for milestone, _ in reversed(_Bracket(grace, max_t, rf, 0)._rungs)]
    assert milestones(AshaSettings(grace_period=grace, reduction_factor=rf), max_t) == ray_rungs


def test_early_rungs_score_a_growing_fraction_and_the_last_rung_all():
    asha = AshaSettings(grace_period=1, reduction_factor=2, validation_subset=0.25)
    assert validation_subsets(asha, 2) == {1: 0.25}  # the demo: epoch 2 is the last rung
    assert validation_subsets(asha, 8) == {1: 0.25, 2: 0.5}  # rung 4's fraction is 1: every item
    assert validation_subsets(asha.model_copy(update={"validation_subset": None}), 8) == {}
    assert validation_subsets(None, 8) == {}


def test_a_seeded_subset_is_the_same_for_every_trial_and_grows_by_keeping_its_items():
    quarter, half = subset_indices(100, 0.25, seed=3), subset_indices(100, 0.5, seed=3)
    assert len(quarter) == 25 and len(half) == 50 and set(quarter) <= set(half)
    assert quarter == subset_indices(100, 0.25, seed=3) != subset_indices(100, 0.25, seed=4)
    assert subset_indices(3, 0.01, seed=0) != [] and subset_indices(10, 1.0, seed=0) == list(range(10))


def test_selection_never_ranks_a_report_scored_on_a_subset():
    rows = pd.DataFrame([
        {"stage": "probe", "trial_id": "a", "report": 1, "metric": 0.9, "validation_subset": 1.0},  # lucky quarter
        {"stage": "probe", "trial_id": "a", "report": 2, "metric": 0.5, "validation_subset": 0.0},
        {"stage": "probe", "trial_id": "b", "report": 1, "metric": 0.6, "validation_subset": 1.0},  # pruned there
        {"stage": "refine", "trial_id": "c", "report": 1, "metric": 0.4, "validation_subset": float("nan")},
    ])
    best = best_reports(rows)
    assert list(zip(best["trial_id"], best["report"])) == [("a", 2), ("c", 1)]
    assert selection_metric({"metric": 0.9, "validation_subset": 1}) is None
    assert selection_metric({"metric": 0.5, "validation_subset": 0}) == 0.5 == selection_metric({"metric": 0.5})


def test_the_asha_setting_is_checked():
    with pytest.raises(ValueError, match="validation_subset"):
        AshaSettings(validation_subset=1.5)


def test_a_probe_trial_carries_its_rungs_subsets_and_a_refine_trial_none(tmp_path):
    from test_config import base, merged

    from mft_search.config.schema import describe_plan, parse_config
    from mft_search.tune.study import Study

    raw = merged(base(), {"search": {"asha": {"grace_period": 1, "reduction_factor": 2, "validation_subset": 0.25}},
                          "train": {"epochs": 4}})
    cfg = parse_config(raw)
    study = Study(cfg, cfg.backbones[0], cfg.domains[0], location(tmp_path))
    point = {"layer_group": "0-1", "mode": "local", "ratio": 0.1}
    probe = study.mft_job(point, "t0", "probe")
    assert probe.validation_subsets == {1: 0.25, 2: 0.5} and probe.validation_subset_seed == cfg.seed == 3
    assert study.mft_job(point, "t0", "refine").validation_subsets == {}
    assert "ASHA grace 1, reduction 2 (rung-wise validation from 25% of the items)" in describe_plan(cfg, {})


def test_results_parquet_records_how_many_items_each_report_scored(tmp_path):
    from mft_search.experiment.results import ResultsTable

    table = ResultsTable(tmp_path / "results.parquet")
    base = {"study": "s", "stage": "probe", "trial_id": "t"}
    table.add_report(base, {}, {"report": 1, "metric": 0.3, "validation_items": 125, "validation_subset": 1})
    table.add_report(base, {}, {"report": 2, "metric": 0.4, "validation_items": 500, "validation_subset": 0})
    table.flush()
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert list(frame["validation_items"]) == [125, 500] and list(frame["validation_subset"]) == [1, 0]
