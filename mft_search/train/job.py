"""One trial's work on one worker, in plain torch: the train layer's logic without Ray.

A `TrialJob` says what to run: MFT (learn a mask), FFT (train the weights: builds the demo
backbone and the paper's continued-FFT control) or evaluate (the unmasked backbone, a random or
L1 baseline, or a learned mask file). `run_job` runs it on this rank against a `Session` that
reports metrics and checkpoints: ray_train.py gives it Ray Train's, tests give it a local one.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
from mft_search.core.baselines import baseline_masks, kept_counts_for_ratio
from mft_search.train.checkpoint import gather_trainable, load_progress, load_trainable, save_state
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.data import DataSpec
from mft_search.core.evaluation import get_evaluator
from mft_search.core.evaluation.base import rank_and_world
from mft_search.core.evaluation.loss import evaluate_loss
from mft_search.core.maskfile import backbone_fingerprint, load_mask_file, save_mask_file, verify_for_model
from mft_search.core.masking import MaskSpec, attach_masks, fraction_kept, multiply_masks_in, spec_module_names
from mft_search.core.distributed import Strategy, is_sharded, unwrap, wrap_model
from mft_search.core.topk import select_mask
from mft_search.train.step import TrainSettings, make_optimizer, mixed_precision, train_step
from mft_search.train.batches import TrainingData

Kind = Literal["mft", "fft", "evaluate"]
Baseline = Literal["unmasked", "random", "l1", "learned"]


class EvalVariant(BaseModel):
    """One model to evaluate: the backbone as is, with a baseline or learned mask, or other weights."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the metrics' prefix: "<name>/metric"
    baseline: Baseline = "unmasked"
    mask_file: str | None = None  # "learned": the mask; random/l1: match its modules and counts
    weights: str | None = None  # another checkpoint of the same architecture (continued FFT)
    seed: int = 0  # random: the positions' seed (the sweep's seed)


class TrialJob(BaseModel):
    """Everything one trial needs; built by the sweep from the config and the sampled point."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    backbone: BackboneSpec
    data: DataSpec | None = None  # SFT data (mft/fft); its validation carve-out gives val_loss
    evaluation: EvalSpec | None = None  # the domain metric; None makes -val_loss the metric
    mask: MaskSpec | None = None  # mft; for random/l1 without a mask file, the modules and ratio
    variants: list[EvalVariant] = []  # evaluate: the models to score, one after another
    train: TrainSettings = TrainSettings()
    strategy: Strategy = "ddp"
    cache_dir: str  # tokenised data, shared by all trials of a sweep
    artifact_dir: str  # masks (mft) or weights (fft) at every evaluation point


class Session(Protocol):
    """What a job needs from its runtime: placement, reporting, resuming."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint(self) -> Path | None: ...

    def new_checkpoint_dir(self) -> Path: ...


def run_job(job: TrialJob, session: Session) -> None:
    """Run `job` on this rank; every rank calls it, and rank 0's reports are the trial's."""
    started = time.perf_counter()
    torch.manual_seed(job.train.seed)
    tokenizer = load_tokenizer(job.backbone)
    if job.kind == "evaluate":
        metrics = _evaluate_variants(job, tokenizer, session.device)
        checkpoint = None
        if session.rank == 0:  # Ray Train keeps the metrics of checkpointed reports only
            checkpoint = session.new_checkpoint_dir()
            checkpoint.mkdir(parents=True, exist_ok=True)
            (checkpoint / "metrics.json").write_text(json.dumps(metrics))
        session.report(metrics, checkpoint)
        return
    compute_dtype = job.backbone.torch_dtype(session.device.type == "cuda")
    # FFT trains the weights: fp32 masters, computed in the backbone's dtype (mixed_precision).
    model = load_model(job.backbone, torch.float32 if job.kind == "fft" else compute_dtype)
    fingerprint = ""
    if job.kind == "mft":  # masked modules keep their weight, so the backbone's fingerprint holds
        fingerprint = backbone_fingerprint(model, list(attach_masks(model, job.mask)))
    _Trainer(job, session, model.to(session.device), tokenizer, fingerprint, started, compute_dtype).run()


def _evaluate_variants(job: TrialJob, tokenizer, device: torch.device) -> dict[str, float]:
    """Every variant's metrics, prefixed by its name; one model in memory at a time."""
    metrics: dict[str, float] = {}
    val_batches = None
    if job.data is not None:  # validation loss too: the metric of a domain without a benchmark
        from mft_search.core.data import tokenized_dataset
        from mft_search.train.batches import rank_batches

        rank, world = rank_and_world()
        dataset = tokenized_dataset(job.data, tokenizer, Path(job.cache_dir), "validation")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        val_batches = rank_batches(dataset, rank, world, job.train.micro_batch_size, pad)
    for variant in job.variants:
        spec = job.backbone.model_copy(update={"source": variant.weights}) if variant.weights else job.backbone
        model = load_model(spec, job.backbone.torch_dtype(device.type == "cuda"))
        _apply_variant_mask(job, variant, model)
        scores = _evaluate(job, model.to(device), tokenizer, val_batches)
        metrics.update({f"{variant.name}/{k}": v for k, v in scores.items()})
        del model
    return metrics


def _apply_variant_mask(job: TrialJob, variant: EvalVariant, model) -> None:
    if variant.baseline == "unmasked":
        return
    if variant.mask_file:
        mask_file = load_mask_file(variant.mask_file)
        verify_for_model(mask_file, model)
    if variant.baseline == "learned":
        multiply_masks_in(model, mask_file.masks)
        return
    if variant.mask_file:  # the learned mask's modules and per-module counts (global masks too)
        kept = mask_file.kept
    else:
        names = spec_module_names(model, job.mask)
        kept = kept_counts_for_ratio({n: model.get_submodule(n).weight.shape for n in names}, job.mask.ratio)
    multiply_masks_in(model, baseline_masks(model, variant.baseline, kept, variant.seed))


def _evaluate(job: TrialJob, model, tokenizer, val_batches) -> dict[str, float]:
    """Validation loss (when batches are given) and the domain metric; `metric` is higher-better."""
    metrics: dict[str, float] = {}
    if val_batches is not None:
        loss = evaluate_loss(model, val_batches)
        metrics.update(val_loss=loss["loss"], val_perplexity=loss["perplexity"])
    if job.evaluation is not None:
        evaluator = get_evaluator(job.evaluation.evaluator)
        spec = job.evaluation
        problems = _problems(spec.evaluator, spec.source, spec.limit, spec.split)
        scores = evaluator.evaluate(unwrap(model), tokenizer, problems, job.evaluation.generation())
        metrics.update({f"eval_{k}": float(v) for k, v in scores.items()})
        metrics["metric"] = float(scores[evaluator.metric])
    elif "val_loss" in metrics:
        metrics["metric"] = -metrics["val_loss"]
    return metrics


@functools.lru_cache(maxsize=4)
def _problems(evaluator: str, source: str | None, limit: int | None, split: str | None) -> list:
    """A benchmark's problems, read once per process rather than at every evaluation point."""
    return get_evaluator(evaluator).load(source, limit, split)


class _Trainer:
    """The MFT / FFT loop on one rank: steps, evaluation points, checkpoints, resume."""

    def __init__(self, job: TrialJob, session: Session, model, tokenizer, fingerprint: str, started: float,
                 compute_dtype: torch.dtype) -> None:
        self.job, self.session, self.tokenizer, self.fingerprint = job, session, tokenizer, fingerprint
        self.compute_dtype = compute_dtype
        # Only FFT holds fp32 masters under a lower compute dtype; MFT's frozen weights are loaded in it.
        self.autocast = compute_dtype if job.kind == "fft" else None
        self.data = TrainingData(job.data, tokenizer, Path(job.cache_dir), job.train, session.rank,
                                 session.world_size)
        self.total_steps = max(1, math.ceil(job.train.epochs * self.data.steps_per_epoch))
        self.progress: dict[str, Any] = {"step": 0, "report": 0}
        resume = session.latest_checkpoint()
        if resume is not None:
            load_trainable(resume, model, job.kind)
        if job.train.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = wrap_model(model, job.strategy, session.device, self.autocast)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(params, job.train, self.total_steps)
        if resume is not None:
            self.progress = load_progress(resume, self.optimizer, self.scheduler)
        self.eval_every = job.train.eval_every_steps or self.data.steps_per_epoch
        # Where a trial's time goes (bench trial): loading before the first step, then per phase.
        self.seconds = {"time_load_s": time.perf_counter() - started, "time_train_s": 0.0, "time_eval_s": 0.0,
                        "time_save_s": 0.0}

    def run(self) -> None:
        losses: list[float] = []
        start = time.perf_counter()
        self.model.train()
        while self.progress["step"] < self.total_steps and not self.progress.get("no_op"):
            step = self.progress["step"]
            step_start = time.perf_counter()
            micro_batches = self.data.step_batches(step)
            before_step = getattr(self.session, "before_step", None)  # faults.py's test hooks
            try:
                if before_step is not None:
                    before_step(step, self.model)
                loss = train_step(self.model, micro_batches, self.optimizer, self.scheduler, self.job.train,
                                  self.session.device, self.autocast)
            except RuntimeError as e:
                if _is_out_of_memory(e):
                    raise OutOfMemory(f"out of memory at step {step + 1}: lower train.micro_batch_size, turn on "
                                      "train.activation_checkpointing or give the trial more workers") from e
                raise
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss} at step {step + 1}; "
                                         "lower train.lr or check the data")
            losses.append(loss)
            self.seconds["time_train_s"] += time.perf_counter() - step_start
            self.progress["step"] = step + 1
            if (step + 1) % self.eval_every == 0 or step + 1 == self.total_steps:
                self._report(sum(losses) / len(losses), time.perf_counter() - start)
                losses = []
                self.model.train()

    def _report(self, train_loss: float, wall_s: float) -> None:
        self.progress["report"] += 1
        eval_start = time.perf_counter()
        with mixed_precision(self.session.device, self.autocast):
            metrics = _evaluate(self.job, self.model, self.tokenizer, self.data.validation_batches())
        self.seconds["time_eval_s"] += time.perf_counter() - eval_start
        save_start = time.perf_counter()
        metrics.update(train_loss=train_loss, step=self.progress["step"], total_steps=self.total_steps,
                       report=self.progress["report"], epoch=self.progress["step"] / self.data.steps_per_epoch,
                       train_wall_s=wall_s)
        trainable = gather_trainable(self.model, self.job.kind)
        masks = masks_from_scores(trainable, self.job.mask) if self.job.kind == "mft" else {}
        if masks:
            metrics["kept_fraction"] = fraction_kept(masks)
            # A mask that keeps every weight is the unmasked model: the trial ends here, a no-op.
            self.progress["no_op"] = int(metrics["kept_fraction"] >= 1.0)
            metrics["no_op"] = self.progress["no_op"]
        checkpoint = None
        if self.session.rank == 0:
            self._write_artifact(trainable, masks)
            checkpoint = self.session.new_checkpoint_dir()
            save_state(checkpoint, trainable, self.job.kind, self.optimizer, self.scheduler, self.progress,
                       is_sharded(self.model))
        self.seconds["time_save_s"] += time.perf_counter() - save_start
        self.session.report({**metrics, **self.seconds}, checkpoint)

    def _write_artifact(self, trainable: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        """A mask file (MFT) or a safetensors checkpoint (FFT) for this evaluation point."""
        out = report_artifact(Path(self.job.artifact_dir), self.progress["report"])
        model = unwrap(self.model)
        if self.job.kind == "fft":  # in the backbone's dtype, as the user would ship it; masters stay in the state
            weights = {n: t.to(self.compute_dtype) if t.is_floating_point() else t for n, t in trainable.items()}
            model.save_pretrained(out, state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
            return
        spec = self.job.mask
        save_mask_file(mask_artifact(Path(self.job.artifact_dir), self.progress["report"]), masks, fingerprint=self.fingerprint,
                       model_type=model.config.model_type, dtype=model.get_input_embeddings().weight.dtype,
                       mode=spec.mode, ratio=spec.ratio, threshold=spec.threshold,
                       extra={"trial": self.job.name, "step": self.progress["step"]})


def report_artifact(artifact_dir: Path, report: int) -> Path:
    """Where a job writes its FFT checkpoint of evaluation point `report` (a directory)."""
    return artifact_dir / f"report_{report:03d}"


def mask_artifact(artifact_dir: Path, report: int) -> Path:
    """Where a job writes its mask file of evaluation point `report`."""
    return report_artifact(artifact_dir, report).with_suffix(".mask.safetensors")


class OutOfMemory(RuntimeError):
    """A trial that does not fit: deterministic, so the sweep records it failed with this reason."""


def _is_out_of_memory(error: RuntimeError) -> bool:
    # torch.OutOfMemoryError on GPUs; the CPU allocator raises a plain RuntimeError
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def masks_from_scores(scores: dict[str, torch.Tensor], spec: MaskSpec) -> dict[str, torch.Tensor]:
    """The masks full score tensors select (computed from gathered scores: FSDP-safe)."""
    return {n: select_mask(s, spec.mode, spec.ratio, spec.threshold) for n, s in scores.items()}


class LocalSession:
    """A single-process session without Ray: tests, and building the demo backbone."""

    def __init__(self, directory: Path, device: torch.device | None = None) -> None:
        self.rank, self.world_size = 0, 1
        self.device = device or torch.device("cpu")
        self.directory = Path(directory)
        self.reports: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.directory.glob("checkpoint_*"))
        return found[-1] if found else None

    def new_checkpoint_dir(self) -> Path:
        number = len(list(self.directory.glob("checkpoint_*"))) + 1
        return self.directory / f"checkpoint_{number:06d}"
