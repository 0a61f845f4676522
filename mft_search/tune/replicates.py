"""Seed replicates (`seeds: N`): after selection, the selected configuration, the random mask and
the continued-FFT control run again with seeds seed+1 .. seed+N-1, so that the leaderboard shows
mean ± std over seeds beside the paired intervals, as the paper's tables do.

The sweep's own runs are the first seed: the search and the paired intervals use them. The
replicates are scored in the same evaluation jobs as those runs, named `<row>@seed<s>`
(tune.evaluate.replicate_name), and items.parquet keeps their scores under their own seed.

    variants = mft_replicates(study, winner)     # N-1 more MFT runs of the winner's point
    variants += random_replicates(study, winner) # the random mask drawn with N-1 more seeds
    variants, finals = fft_replicates(study, winner)  # continued FFT, N-1 more data orders
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from mft_search.train.spec import EvalVariant, TrialJob, mask_artifact
from mft_search.tune.evaluate import Candidate, continued_fft, fit, replicate_name
from mft_search.tune.study import Study


def extra_seeds(study: Study) -> list[int]:
    """The seeds of the replicates: none when `seeds` is 1."""
    return [study.cfg.seed + k for k in range(1, study.cfg.seeds)]


def mft_replicates(study: Study, winner: Candidate, log=print) -> list[EvalVariant]:
    """The winner's point trained again from a score init and data order of each extra seed, on
    the winner's stage's data; each replicate's mask is taken at its best report, as the winner's was."""
    variants = []
    for seed in extra_seeds(study):
        log(f"[{study.name}] seed {seed}: the selected configuration trained again")
        # Unguarded: the guards judge the selected mask, which is the first seed's
        job = reseeded(study.mft_job(winner.params, f"{winner.trial_id}-seed{seed}", winner.stage, guarded=False),
                       seed - study.cfg.seed)
        report = best_report(job, fit(study, job).history)
        variants.append(EvalVariant(name=replicate_name("best_mft", seed), mask="learned",
                                    mask_file=str(mask_artifact(Path(job.artifact_dir), report))))
    return variants


def random_replicates(study: Study, winner: Candidate) -> list[EvalVariant]:
    """The random mask at the winner's modules and kept counts, drawn with each extra seed."""
    if "random" not in study.cfg.baselines:
        return []
    return [EvalVariant(name=replicate_name("random", seed), mask="random", mask_file=winner.mask_path, seed=seed)
            for seed in extra_seeds(study)]


def fft_replicates(study: Study, winner: Candidate, log=print) -> tuple[list[EvalVariant], dict[str, float]]:
    """The continued-FFT control from the user's backbone with each extra seed's data order: its
    final points to score on test, and their validation metrics from their own runs (as the first
    seed's are). None after the fft stage: Continued FFT is then that stage's one run, and running
    the stage again would change the backbone every other row is measured on."""
    if study.fft is not None or "continued_fft" not in study.cfg.baselines:
        return [], {}
    variants, validation = [], {}
    for seed in extra_seeds(study):
        log(f"[{study.name}] seed {seed}: the continued-FFT control again")
        final = continued_fft(study, winner, seed).final
        name = replicate_name("continued_fft", seed)
        variants.append(EvalVariant(name=name, weights=final.checkpoint))
        validation[name] = final.metric
    return variants, validation


def reseeded(job: TrialJob, offset: int) -> TrialJob:
    """`job` with its score-init and data-order seeds moved by `offset`."""
    return job.model_copy(update={"mask": dataclasses.replace(job.mask, seed=job.mask.seed + offset),
                                  "train": job.train.model_copy(update={"seed": job.train.seed + offset})})


def best_report(job: TrialJob, history: pd.DataFrame) -> int:
    """The report with the best metric (ties: the earliest), as a trial's best report is picked."""
    finite = history[history["metric"].map(lambda m: m is not None and math.isfinite(float(m)))]
    if finite.empty:
        raise FloatingPointError(f"{job.name}: no report had a finite metric; this seed diverged")
    ranked = finite.sort_values(["metric", "report"], ascending=[False, True], kind="stable")
    return int(ranked["report"].iloc[0])
