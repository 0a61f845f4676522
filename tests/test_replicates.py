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


def _study(tmp_path, baselines, pretrained=True):
    from test_config import base, merged

    from mft_search.config.schema import parse_config
    from mft_search.tune.study import Study

    cfg = parse_config(merged(base(), {"baselines": baselines, "seeds": 3}))
    backbone = cfg.backbones[0]
    return Study(cfg, backbone, cfg.domains[0], tmp_path, pretrained=BackboneSpec(source="pre") if pretrained else None)


def test_each_extra_seed_draws_random_and_wanda_again_at_the_winners_counts_and_reverts_its_own_mask(tmp_path):
    from mft_search.train.spec import EvalVariant
    from mft_search.tune.evaluate import Candidate
    from mft_search.tune.replicates import mask_replicates

    study = _study(tmp_path, ["unmasked", "random", "l1", "wanda", "revert"])
    winner = Candidate("t0", "refine", {}, 0.5, "winner.mask")
    learned = [EvalVariant(name=replicate_name("best_mft", s), mask="learned", mask_file=f"seed{s}.mask") for s in (4, 5)]
    variants = {v.name: v for v in mask_replicates(study, winner, learned)}
    assert sorted(variants) == sorted(replicate_name(b, s) for b in ("random", "wanda", "revert") for s in (4, 5))
    for seed in (4, 5):  # the sweep's seed is 3: the replicates are 4 and 5
        for b in ("random", "wanda"):
            assert (variants[replicate_name(b, seed)].seed, variants[replicate_name(b, seed)].mask_file) == (seed, "winner.mask")
        revert = variants[replicate_name("revert", seed)]
        assert revert.mask_file == f"seed{seed}.mask" and revert.pretrained == BackboneSpec(source="pre")
    # L1 does not depend on a seed; revert needs the pretrained model
    without = mask_replicates(_study(tmp_path, ["unmasked", "l1", "revert"], pretrained=False), winner, learned)
    assert without == []
