"""Seed replicates (`seeds: N`): after selection, the selected configuration and every baseline a
seed changes (random, Wanda, revert, LoRA, the continued-FFT control) run again with seeds
seed+1 .. seed+N-1, so that the leaderboard shows mean ± std over seeds beside the paired
intervals, as the paper's tables do. The unmasked model and the L1 mask do not depend on a seed.

The sweep's own runs are the first seed: the search and the paired intervals use them. The
replicates are scored in the same evaluation jobs as those runs, named `<row>@seed<s>`
(tune.evaluate.replicate_name), and items.parquet keeps their scores under their own seed.

    learned = mft_replicates(study, winner)                # N-1 more MFT runs of the winner's point
    masks = mask_replicates(study, winner, learned)        # random, Wanda and revert with each seed
    adapters = lora_replicates(study)                      # LoRA, N-1 more runs
    variants, finals = fft_replicates(study, winner)       # continued FFT, N-1 more data orders
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from mft_search.experiment.results import ranked_reports
from mft_search.train.spec import EvalVariant, TrialJob, mask_artifact
from mft_search.tune.evaluate import Candidate, continued_fft, fit_all, lora_curve, lora_job, replicate_name
from mft_search.tune.study import Study


def extra_seeds(study: Study) -> list[int]:
    """The seeds of the replicates: none when `seeds` is 1."""
    return [study.cfg.seed + k for k in range(1, study.cfg.seeds)]


def mft_replicates(study: Study, winner: Candidate, log=print) -> list[EvalVariant]:
    """The winner's point trained again from a score init and data order of each extra seed, on
    the winner's stage's data; each replicate's mask is taken at its best report, as the winner's was."""
    seeds = extra_seeds(study)
    if seeds:
        log(f"[{study.name}] {_listed(seeds)}: the selected configuration trained again")
    # Unguarded: the guards judge the selected mask, which is the first seed's
    jobs = [reseeded(study.mft_job(winner.params, f"{winner.trial_id}-seed{seed}", winner.stage, guarded=False),
                     seed - study.cfg.seed) for seed in seeds]
    variants = []
    for seed, job, result in zip(seeds, jobs, fit_all(study, jobs)):
        report = best_report(job, result.history)
        variants.append(EvalVariant(name=replicate_name("best_mft", seed), mask="learned",
                                    mask_file=str(mask_artifact(job.artifact_dir, report))))
    return variants


def mask_replicates(study: Study, winner: Candidate, learned: list[EvalVariant]) -> list[EvalVariant]:
    """The baseline masks again with each extra seed: random and Wanda drawn with it (positions,
    calibration sample) at the winner's modules and kept counts, as their first seed's are, and
    revert of that seed's learned mask (`learned`: mft_replicates' variants, in seed order)."""
    baselines, variants = study.cfg.baselines, []
    for seed, mask in zip(extra_seeds(study), learned):
        variants += [EvalVariant(name=replicate_name(b, seed), mask=b, mask_file=winner.mask_path, seed=seed)
                     for b in ("random", "wanda") if b in baselines]
        if "revert" in baselines and study.pretrained_backbone is not None:
            variants.append(EvalVariant(name=replicate_name("revert", seed), mask="revert", mask_file=mask.mask_file,
                                        pretrained=study.pretrained_backbone))
    return variants


def lora_replicates(study: Study, log=print) -> list[EvalVariant]:
    """LoRA trained again from the pretrained model with each extra seed (adapter init, data
    order): its best and final points, each picked on its own curve as the first seed's are."""
    if "lora" not in study.cfg.baselines or study.pretrained_backbone is None:
        return []
    seeds = extra_seeds(study)
    if seeds:
        log(f"[{study.name}] {_listed(seeds)}: the LoRA baseline again")
    jobs = [lora_job(study, seed) for seed in seeds]
    variants = []
    for seed, job, result in zip(seeds, jobs, fit_all(study, jobs)):
        curve = lora_curve(job, result)
        variants += [EvalVariant(name=replicate_name("best_lora", seed), weights=curve.best.checkpoint),
                     EvalVariant(name=replicate_name("continued_lora", seed), weights=curve.final.checkpoint)]
    return variants


def _listed(seeds: list[int]) -> str:
    """"seed 1", or "seeds 1, 2 (side by side ...)": replicates are fitted together (fit_all)."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return "seeds " + ", ".join(map(str, seeds)) + " (side by side where the cluster has room)"


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
    return int(ranked_reports(finite)["report"].iloc[0])
