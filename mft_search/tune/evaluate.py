"""After the search: pick the best mask on validation, score it and the baselines on the test
benchmark, and write what the user takes home. Selection never sees the test benchmark."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mft_search.core import files
from mft_search.core.maskfile import load_mask_file
from mft_search.core.statistics import Gain, Unit, selection_decision
from mft_search.experiment import layout
from mft_search.experiment.fft_record import FftPoint, FftRecord, best_of
from mft_search.experiment.guards import GuardLimit, broken_guards
from mft_search.experiment.items import add_items, gains_over, items_path, read_items, split_unit
from mft_search.experiment.results import NOT_CANDIDATES, best_reports, params_of
from mft_search.train.ray_train import JobResult, fit_job, fit_jobs
from mft_search.train.spec import ITEMS_FILE, EvalVariant, LoraAdapters, report_artifact
from mft_search.train.step import TrainSettings
from mft_search.tune.sampling import params_to_trial
from mft_search.tune.study import Study

ROW_ORDER = ("pretrained", "unmasked", "random", "l1", "wanda", "revert", "best_lora", "continued_lora", "continued_fft_best",
             "continued_fft", "best_mft")


@dataclass(frozen=True)
class Candidate:
    """A trial's best report: its params, validation metric and mask file."""

    trial_id: str
    stage: str
    params: dict[str, Any]
    metric: float
    mask_path: str


def best_candidates(frame: pd.DataFrame, study: str, stage: str, k: int,
                    limits: Sequence[GuardLimit] = ()) -> list[Candidate]:
    """The k best non-failed trials of a stage, each at its best report (ties: earlier trial),
    leaving out those whose best report breaks a guard of `limits`."""
    rows = frame[(frame["study"] == study) & (frame["stage"] == stage) & ~frame["status"].isin(NOT_CANDIDATES)]
    best = best_reports(rows)
    if limits and not best.empty:
        best = best[[not broken_guards(row, limits) for _, row in best.iterrows()]]
    out = []
    for _, row in best.head(k).iterrows():
        out.append(Candidate(row["trial_id"], stage, params_of(row), float(row["metric"]), row["mask_path"]))
    return out


@dataclass(frozen=True)
class Scored:
    """What an evaluation job measured, by variant: the benchmark's selecting metric, and every
    other metric it reported (both gsm8k filters, HumanEval+'s base, IFEval's strict and loose)."""

    metric: dict[str, float]
    reported: dict[str, dict[str, float]]


def run_evaluation(study: Study, variants: list[EvalVariant], benchmark, split: str) -> Scored:
    """Jobs that score every variant on `benchmark` (None: validation loss), their per-item
    scores added to items.parquet under `split`. The variants are dealt over as many jobs as
    trials run at once, fitted side by side (fit_all): on the demo's 2 CPUs the validation and
    test evaluations take half as long; multi-worker jobs run in turn."""
    parts = max(1, min(study.cfg.search.max_concurrent_trials, len(variants)))
    shares = [variants[k::parts] for k in range(parts)]
    names = [split] if parts == 1 else [f"{split}-{k + 1}of{parts}" for k in range(parts)]
    jobs = [_evaluation_job(study, share, benchmark, name) for share, name in zip(shares, names)]
    metrics: dict[str, Any] = {}
    for result in fit_all(study, jobs):
        with result.checkpoint.as_directory() as checkpoint:
            scored = json.loads((Path(checkpoint) / ITEMS_FILE).read_text())
        for name, scores in scored.items():
            variant, seed = row_and_seed(name, study.cfg.seed)
            add_items(items_path(study.exp_dir), study.name, split, variant, seed, scores["kind"], scores["settings"],
                      scores["items"])
        metrics.update(result.metrics)
    primary = f"eval_{metric_name(benchmark)}"
    return Scored({v.name: float(metrics.get(f"{v.name}/metric", math.nan)) for v in variants},
                  {v.name: {k.removeprefix(f"{v.name}/eval_"): float(value) for k, value in metrics.items()
                            if k.startswith(f"{v.name}/eval_") and k != f"{v.name}/{primary}"} for v in variants})


def _evaluation_job(study: Study, variants: list[EvalVariant], benchmark, name: str):
    data = study.domain.train if benchmark is None else None
    calibration = study.domain.train if any(v.mask == "wanda" for v in variants) else None
    return study.job("evaluate", layout.run_name(study.slug, name), variants=variants, evaluation=benchmark,
                     data=data, calibration=calibration)


# A seed replicate of a row is scored in the same job as the row, under its own name: the
# evaluate job keys metrics and items by variant name; items.parquet by (row, seed).
REPLICATE = "@seed"


def replicate_name(row: str, seed: int) -> str:
    """The evaluated variant's name of `row` run with `seed` (tune.replicates)."""
    return f"{row}{REPLICATE}{seed}"


def row_and_seed(name: str, base_seed: int) -> tuple[str, int]:
    """(row, seed) of an evaluated variant's name: a replicate's own, else the sweep's seed."""
    row, marked, seed = name.partition(REPLICATE)
    return (row, int(seed)) if marked else (name, base_seed)


def paired_gains(study: Study, split: str, of: str = "best_mft") -> tuple[dict[str, Gain], Unit | None]:
    """{other variant: the gain of `of` over it on `split`}, paired over items.parquet's items,
    and the unit those items are scored in (points or nats; None when none were scored)."""
    frame = read_items(items_path(study.exp_dir))
    return gains_over(frame, study.name, split, of), split_unit(frame, study.name, split)


@dataclass(frozen=True)
class FftCurve:
    """An FFT run's metric per evaluation point, the best and the last: the fft stage's (from
    the pretrained model) or the continued-FFT control's (from the user's checkpoint)."""

    origin: str  # "fft stage" or "continued from the backbone"
    metric_name: str
    points: tuple[FftPoint, ...]
    best: FftPoint
    final: FftPoint

    @classmethod
    def of(cls, origin: str, record: FftRecord) -> FftCurve:
        return cls(origin, record.metric_name, record.points, record.best_point, record.final_point)

    def as_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "metric_name": self.metric_name, "best_epoch": self.best.epoch,
                "final_epoch": self.final.epoch,
                "points": [{"epoch": p.epoch, "metric": p.metric} for p in self.points]}


def continued_fft(study: Study, winner: Candidate, seed: int | None = None) -> FftCurve:
    """FFT continued from the user's backbone at the winner's own (low) learning rate and epochs:
    the control that tells MFT's effect from more training. Its final and best points are both
    reported (the best picked on validation, so it carries the winner's curse as MFT does).
    `seed`: a replicate's (data order), run under its own name; None is the sweep's own run."""
    _, train = params_to_trial(winner.params, study.cfg)
    train, name = _for_seed(study, train, "continued_fft", seed)
    job = study.job("fft", layout.run_name(study.slug, name), data=study.domain.train, train=train)
    return FftCurve.of("continued from the backbone", fft_record(job, fit(study, job).history))


def lora_baseline(study: Study, seed: int | None = None) -> FftCurve:
    """LoRA from the pretrained model on the same SFT data (the paper's LoRA rows), every point
    scored on what picks the FFT's epoch: fft_selection after the fft stage, else validation.
    `seed`: a replicate's (adapter init and data order), run under its own name."""
    job = lora_job(study, seed)
    return lora_curve(job, fit(study, job))


def lora_job(study: Study, seed: int | None = None):
    """The LoRA baseline's job for `seed` (None: the sweep's own run)."""
    settings = study.cfg.lora
    train, name = _for_seed(study, settings.train, "lora", seed)
    selection = study.domain.fft_selection if study.fft is not None else study.domain.validation
    return study.job("lora", layout.run_name(study.slug, name), backbone=study.pretrained_backbone,
                     data=study.domain.train, train=train, evaluation=selection,
                     lora=LoraAdapters(**settings.model_dump(exclude={"train"})))


def lora_curve(job, result: JobResult) -> FftCurve:
    """A finished LoRA job's points, its best picked as the FFT's are."""
    return FftCurve.of("LoRA", fft_record(job, result.history))


def _for_seed(study: Study, train: TrainSettings, name: str, seed: int | None) -> tuple[TrainSettings, str]:
    """A run's schedule and name for `seed`: the data-order seed moved as far from the sweep's as
    `seed` is, and a name of its own; None is the sweep's own run, unchanged."""
    if seed is None:
        return train, name
    return train.model_copy(update={"seed": train.seed + seed - study.cfg.seed}), f"{name}-seed{seed}"


def fft_record(job, history: pd.DataFrame) -> FftRecord:
    """An FFT job's evaluation points (with a finite metric) and its best, from its reports."""
    points = [FftPoint(int(r["report"]), float(r["epoch"]), float(r["metric"]),
                       str(report_artifact(job.artifact_dir, int(r["report"]))))
              for _, r in history.sort_values("report").iterrows() if math.isfinite(float(r["metric"]))]
    if not points:
        raise FloatingPointError(f"{job.name}: no evaluation point reported a finite metric; lower the FFT's lr "
                                 "or check its data")
    return FftRecord(metric_name(job.evaluation), tuple(points), best_of(points))


def fit(study: Study, job) -> JobResult:
    """One job outside Tune (evaluations, continued FFT), retried as trials are; raises its error."""
    return fit_job(job, study.resources, storage=study.run_dir(), max_failures=study.cfg.retries)


def fit_all(study: Study, jobs: list) -> list[JobResult]:
    """`fit` for independent jobs (a seed's replicates), side by side where the cluster has room."""
    return fit_jobs(jobs, study.resources, storage=study.run_dir(), max_failures=study.cfg.retries)


def export_best(study: Study, winner: Candidate) -> files.Location:
    """best/<backbone>/<domain>/: the mask file, its metadata and the exact config behind it."""
    out = layout.best_dir(study.exp_dir, study.backbone.label, study.domain.name)
    mask, train = params_to_trial(winner.params, study.cfg)
    selected = {"trial_id": winner.trial_id, "stage": winner.stage, "validation_metric": winner.metric,
                "params": winner.params, "mask": {**mask, "blocks": list(mask["blocks"])}, "train": train.model_dump(),
                "backbone": study.backbone.model_dump(), "sweep": study.cfg.model_dump(mode="json")}
    # Storage that fills mid-export leaves no best/ with half its files; a resumed sweep
    # re-exports the same selection over the earlier copy.
    with files.atomic_directory(out) as staging:
        (staging / layout.BEST_MASK).write_bytes(files.location(winner.mask_path).read_bytes())
        meta = load_mask_file(staging / layout.BEST_MASK).meta
        (staging / layout.BEST_META).write_text(json.dumps(meta, indent=2))
        (staging / layout.BEST_CONFIG).write_text(yaml.safe_dump(selected, sort_keys=False))
    return out


def write_summary(study: Study, rows: list[dict[str, Any]], verdict: str, *, curve: FftCurve | None = None,
                  lora: FftCurve | None = None, budget: str | None = None, guards: Sequence[dict] = ()) -> files.Location:
    """`curve`, `lora`: the FFT's and the LoRA baseline's points; `budget`: what stopped the probe
    search early, if anything (a caveat, since fewer trials ran); `guards`: each guard's check of
    the best mask (tune.guards.GuardCheck.as_json)."""
    summary = {"study": study.name, "backbone": study.backbone.label, "domain": study.domain.name,
               "metric_name": metric_name(study.domain.validation),
               "validation_benchmark": benchmark_label(study.domain.validation),
               "test_benchmark": benchmark_label(study.domain.test),
               "rows": sorted(rows, key=lambda r: ROW_ORDER.index(r["name"])), "verdict": verdict,
               "caveats": [*study.cfg.caveats(study.domain), *([budget] if budget else [])], "budget_stop": budget,
               "fft": curve.as_json() if curve else None, "lora": lora.as_json() if lora else None,
               "skipped": [why for why in (study.cfg.pretrained_missing(study.backbone),) if why],
               "guards": list(guards)}
    return files.write_text(study.dir / layout.SUMMARY, json.dumps(summary, indent=2))


def metric_name(benchmark) -> str:
    """What a job's `metric` is when `benchmark` (an EvalSpec, or None) scores it."""
    if benchmark is None:
        return "-validation loss"
    from mft_search.core.evaluation import get_evaluator

    return get_evaluator(benchmark.evaluator).metric


def benchmark_label(spec) -> str | None:
    """'gsm8k (path, first 200)': which benchmark on which problems; None for no benchmark."""
    return None if spec is None else f"{spec.evaluator} ({spec.source or 'default'}" + \
        (f", first {spec.limit})" if spec.limit else ")")


def verdict(gain: Gain | None, min_gain: float, unit: Unit | None, candidates: int,
            broken: Sequence[str] = ()) -> tuple[bool, str]:
    """Whether the best mask's validation gain over the unmasked backbone is real: its paired
    lower bound above `min_gain` (core.statistics.selection_decision), and no guard broken
    (`broken`: "breaks guard <name>: <why>" of each, tune.guards), said plainly."""
    among = (f"the best of {candidates} trial(s) on validation, so its validation gain carries the winner's curse; "
             "the test figures are the unbiased ones")
    if gain is None or unit is None:
        return False, "no per-item validation scores for the best mask and the unmasked backbone; nothing exported"
    selected, reason = selection_decision(gain, min_gain, unit=unit)
    if selected and not broken:
        return True, f"best MFT selected ({among}): validation {reason}"
    why = [*broken, f"validation {reason}"] if selected else [f"validation {reason}", *broken]
    return False, f"no mask selected, nothing exported as best: {'; '.join(why)} ({among})"
