"""Seed replicates without Ray: how their variants are named and read back, how a job is
re-seeded, and which report a replicate's mask is taken at."""

import math
from dataclasses import replace

import pandas as pd
import pytest

from mft_search.core.backbone import BackboneSpec
from mft_search.core.masking import MaskSpec
from mft_search.train.spec import TrialJob
from mft_search.train.step import TrainSettings
from mft_search.tune.evaluate import replicate_name, row_and_seed
from mft_search.tune.replicates import best_report, reseeded


def _job() -> TrialJob:
    return TrialJob(name="s-refine-t0-seed1", kind="mft", backbone=BackboneSpec(source="x"),
                    mask=MaskSpec(blocks=(0, 1), seed=7), train=TrainSettings(seed=7), cache_dir="c", artifact_dir="a")


@pytest.mark.parametrize("row", ["best_mft", "random", "continued_fft"])
def test_a_replicate_name_reads_back_as_its_row_and_seed(row):
    assert row_and_seed(replicate_name(row, 2), base_seed=0) == (row, 2)
    assert row_and_seed(row, base_seed=5) == (row, 5)  # the sweep's own run: its seed


def test_reseeding_moves_the_score_init_and_the_data_order_and_nothing_else():
    job = _job()
    moved = reseeded(job, 2)
    assert moved.mask == replace(job.mask, seed=9) and moved.train.seed == 9
    assert moved.train.model_dump(exclude={"seed"}) == job.train.model_dump(exclude={"seed"})
    assert job.mask.seed == 7 and job.train.seed == 7  # the original is untouched


def test_a_replicates_mask_is_taken_at_its_best_report_earliest_of_ties():
    history = pd.DataFrame({"report": [1, 2, 3, 4], "metric": [0.2, 0.5, math.nan, 0.5]})
    assert best_report(_job(), history) == 2


def test_a_replicate_without_a_finite_metric_says_it_diverged():
    history = pd.DataFrame({"report": [1, 2], "metric": [math.nan, math.inf]})
    with pytest.raises(FloatingPointError, match="s-refine-t0-seed1: no report had a finite metric"):
        best_report(_job(), history)
