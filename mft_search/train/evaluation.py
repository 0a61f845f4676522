"""Scoring a model on one rank: validation loss and the domain metric, and evaluate jobs'
variants (the backbone as is, a baseline mask, a learned mask, other weights)."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mft_search.core.backbone import load_model
from mft_search.core.baselines import baseline_masks, kept_counts_for_ratio
from mft_search.core.calibration import calibration_batches
from mft_search.core.distributed import unwrap
from mft_search.core.evaluation.base import Evaluator, Problem, Scores, rank_and_world
from mft_search.core.evaluation.loss import evaluate_loss_items
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.maskfile import load_mask_file, verify_for_model
from mft_search.core.masking import multiply_masks_in, spec_module_names
from mft_search.core.revert import revert_to_pretrained
from mft_search.core.wanda import wanda_masks
from mft_search.train.spec import EvalVariant, TrialJob

LOSS_SETTINGS = "validation loss, mean NLL per scored token of each row"


@dataclass(frozen=True)
class ItemScores:
    """One variant's primary metric per item: `kind` 'fraction' (a benchmark's [0, 1] scores) or
    'loss' (each validation row's mean NLL), and the label of the settings behind them."""

    kind: str
    settings: str
    items: tuple[tuple[str, float], ...]


def evaluate_variants(job: TrialJob, tokenizer, device: torch.device) -> tuple[dict[str, float], dict[str, ItemScores]]:
    """Every variant's metrics, prefixed by its name, and its per-item scores; one model in
    memory at a time."""
    metrics: dict[str, float] = {}
    items: dict[str, ItemScores] = {}
    val_batches = None
    if job.data is not None:  # validation loss too: the metric of a domain without a benchmark
        from mft_search.core.data import tokenized_dataset
        from mft_search.train.batches import rank_batches

        rank, world = rank_and_world()
        dataset = tokenized_dataset(job.data, tokenizer, Path(job.cache_dir), "validation")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        val_batches = rank_batches(dataset, rank, world, job.train.micro_batch_size, pad)
    for variant in job.variants:
        spec = job.backbone
        if variant.weights:  # a safetensors checkpoint, whatever format the backbone came in
            spec = spec.model_copy(update={"source": variant.weights, "gguf_file": None})
        elif variant.mask == "none" and variant.pretrained is not None:  # the pretrained model itself
            spec = variant.pretrained
        model = load_model(spec, job.backbone.torch_dtype(device.type == "cuda"), job.cache_dir).to(device)
        _apply_variant_mask(job, variant, model, tokenizer)  # on the device: wanda calibrates there
        scores, items[variant.name] = evaluate_model_items(job, model, tokenizer, val_batches)
        metrics.update({f"{variant.name}/{k}": v for k, v in scores.items()})
        del model
    return metrics, items


def _apply_variant_mask(job: TrialJob, variant: EvalVariant, model, tokenizer) -> None:
    if variant.mask == "none":
        return
    if variant.mask_file:
        mask_file = load_mask_file(variant.mask_file)
        verify_for_model(mask_file, model)
    if variant.mask == "learned":
        multiply_masks_in(model, mask_file.masks)
        return
    if variant.mask == "revert":
        _revert(job, variant, model, mask_file)
        return
    if variant.mask_file:  # the learned mask's modules and per-module counts (global masks too)
        kept = mask_file.kept
    else:
        names = spec_module_names(model, job.mask)
        kept = kept_counts_for_ratio({n: model.get_submodule(n).weight.shape for n in names}, job.mask.ratio)
    if variant.mask == "wanda":
        masks = wanda_masks(model, kept, _calibration(job, tokenizer, variant.seed))
    else:
        masks = baseline_masks(model, variant.mask, kept, variant.seed)
    multiply_masks_in(model, masks)


def _revert(job: TrialJob, variant: EvalVariant, model, mask_file) -> None:
    """The learned mask's removed positions take the pretrained weights (core.revert)."""
    if variant.pretrained is None:
        raise ValueError("a revert variant needs the pretrained backbone (EvalVariant.pretrained)")
    weight = next(iter(model.parameters()))
    pretrained = load_model(variant.pretrained, weight.dtype, job.cache_dir)
    revert_to_pretrained(model, pretrained, mask_file.masks)
    del pretrained


def _calibration(job: TrialJob, tokenizer, seed: int) -> list[dict[str, torch.Tensor]]:
    """Wanda's calibration sample: seeded sequences of the SFT training split (never the held-out
    data it is scored on), tokenised by the driver into the cache like every trial's."""
    from mft_search.core.data import tokenized_dataset

    if job.calibration is None:
        raise ValueError("a wanda variant needs the job's calibration data (the SFT training data)")
    dataset = tokenized_dataset(job.calibration, tokenizer, Path(job.cache_dir), "train")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return calibration_batches(dataset, seed=seed, batch_size=job.train.micro_batch_size, pad_token_id=pad)


def evaluate_model(job: TrialJob, model, tokenizer, val_batches,
                   report: int | None = None) -> tuple[dict[str, float], ItemScores | None]:
    """Validation loss (when batches are given), the domain metric (`metric`, higher-better) and
    each guard benchmark's primary metric under its key, with the metric's per-item scores.

    `report` is the evaluation point of a training job that is not its last: when
    `job.validation_subsets` names it, the domain metric scores that seeded subset of the items
    (`validation_items` says how many, `validation_subset` is 1); guards score all of theirs.
    """
    fraction = job.validation_subsets.get(report, 1.0) if report is not None else 1.0
    metrics, items = evaluate_model_items(job, model, tokenizer, val_batches, fraction)
    for key, spec in job.guards.items():
        metrics[key] = _primary(spec, score_benchmark(spec, model, tokenizer))
    return metrics, items


def evaluate_model_items(job: TrialJob, model, tokenizer, val_batches,
                         fraction: float = 1.0) -> tuple[dict[str, float], ItemScores | None]:
    """`evaluate_model`'s metrics and the per-item scores of `metric` (the benchmark's when there
    is one, else the validation rows' losses), the benchmark on `fraction` of its items."""
    metrics: dict[str, float] = {}
    items = None
    if val_batches is not None:
        loss, rows = evaluate_loss_items(model, val_batches)
        metrics.update(val_loss=loss["loss"], val_perplexity=loss["perplexity"])
        items = ItemScores("loss", LOSS_SETTINGS, rows)
    if job.evaluation is not None:
        scores, used, total = score_benchmark_subset(job.evaluation, model, tokenizer, fraction,
                                                     job.validation_subset_seed)
        metrics.update({f"eval_{k}": v for k, v in scores.metrics.items()})
        metrics["metric"] = _primary(job.evaluation, scores)
        metrics.update(validation_items=used, validation_subset=int(used < total))
        items = ItemScores("fraction", scores.settings, scores.items)
    elif "val_loss" in metrics:
        metrics["metric"] = -metrics["val_loss"]
    return metrics, items


def score_benchmark(spec: EvalSpec, model, tokenizer) -> Scores:
    """The benchmark `spec` describes, run on `model`: aggregate metrics, the primary metric per
    problem id (`Scores.items`) and the label of the settings that decided them."""
    return score_benchmark_subset(spec, model, tokenizer)[0]


def score_benchmark_subset(spec: EvalSpec, model, tokenizer, fraction: float = 1.0,
                           seed: int = 0) -> tuple[Scores, int, int]:
    """`score_benchmark` on the seeded subset `subset_indices` picks: (scores, items scored, items in all)."""
    evaluator, every = _loaded(spec.model_dump_json())
    problems = [every[i] for i in subset_indices(len(every), fraction, seed)] if fraction < 1.0 else every
    return evaluator.evaluate(unwrap(model), tokenizer, problems, spec.generation()), len(problems), len(every)


def subset_indices(total: int, fraction: float, seed: int) -> list[int]:
    """The first ceil(fraction x total) items of a seeded permutation, in their own order: every
    trial scores the same items at a rung, and a larger fraction keeps the smaller one's items."""
    count = min(total, max(1, math.ceil(fraction * total)))
    return sorted(random.Random(seed).sample(range(total), total)[:count])


def _primary(spec: EvalSpec, scores: Scores) -> float:
    return scores.metrics[_loaded(spec.model_dump_json())[0].metric]


@functools.lru_cache(maxsize=8)  # the metric's benchmark and a few guards
def _loaded(spec_json: str) -> tuple[Evaluator, list[Problem]]:
    """A benchmark's evaluator and problems, read once per process rather than at every evaluation
    point (keyed by the whole block: shots and their source change the prompts)."""
    spec = EvalSpec.model_validate_json(spec_json)
    evaluator = spec.make_evaluator()
    return evaluator, evaluator.load(spec.source, spec.limit, spec.split)
