"""The MFT / FFT training loop on one rank: steps, evaluation points, artefacts, checkpoints, resume."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch

from mft_search.core.distributed import is_sharded, unwrap, wrap_model
from mft_search.core.lora import merge_lora
from mft_search.core.maskfile import save_mask_file
from mft_search.core.masking import MaskSpec, masks_kept_fraction
from mft_search.core.topk import select_mask
from mft_search.train.batches import TrainingData
from mft_search.train.checkpoint import gather_trainable, load_progress, load_trainable, save_state
from mft_search.train.evaluation import evaluate_model
from mft_search.train.session import Session
from mft_search.train.spec import WEIGHT_TRAINING, TrialJob, mask_artifact, report_artifact
from mft_search.train.step import make_optimizer, mixed_precision, train_step


class TrainingLoop:
    """The MFT / FFT loop on one rank: steps, evaluation points, checkpoints, resume."""

    def __init__(self, job: TrialJob, session: Session, model, tokenizer, fingerprint: str, started: float,
                 compute_dtype: torch.dtype) -> None:
        self.job, self.session, self.tokenizer, self.fingerprint = job, session, tokenizer, fingerprint
        self.compute_dtype = compute_dtype
        # FFT and LoRA hold fp32 masters under a lower compute dtype; MFT's frozen weights are loaded in it.
        self.autocast = compute_dtype if job.kind in WEIGHT_TRAINING else None
        self.data = TrainingData(job.data, tokenizer, Path(job.cache_dir), job.train, session.rank,
                                 session.world_size)
        self.total_steps = max(1, math.ceil(job.train.epochs * self.data.steps_per_epoch))
        self.progress: dict[str, Any] = {"step": 0, "report": 0}
        resume = session.latest_checkpoint()
        if resume is not None:
            load_trainable(resume, model, job.kind)
        if job.train.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if job.kind == "lora":  # the frozen embeddings would otherwise cut the graph (core.lora)
                model.enable_input_require_grads()
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
            last = self.progress["step"] >= self.total_steps  # the trial's final score: always every item
            metrics, items = evaluate_model(self.job, self.model, self.tokenizer, self.data.validation_batches(),
                                            None if last else self.progress["report"])
        record_items = getattr(self.session, "record_items", None)  # bench search's table of per-item scores
        if record_items is not None:
            record_items(self.progress["report"], items)
        self.seconds["time_eval_s"] += time.perf_counter() - eval_start
        save_start = time.perf_counter()
        metrics.update(train_loss=train_loss, step=self.progress["step"], total_steps=self.total_steps,
                       report=self.progress["report"], epoch=self.progress["step"] / self.data.steps_per_epoch,
                       train_wall_s=wall_s)
        trainable = gather_trainable(self.model, self.job.kind)
        masks = masks_from_scores(trainable, self.job.mask) if self.job.kind == "mft" else {}
        if masks:
            metrics["kept_fraction"] = masks_kept_fraction(masks)
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
        """A mask file (MFT) or a safetensors checkpoint (FFT, LoRA merged) for this evaluation point."""
        out = report_artifact(self.job.artifact_dir, self.progress["report"])
        model = unwrap(self.model)
        if self.job.kind == "lora":  # a plain checkpoint: the adapters merged into a copy, training goes on
            model = merge_lora(copy.deepcopy(model))
            trainable = {n: t.detach() for n, t in model.named_parameters()}
        if self.job.kind in WEIGHT_TRAINING:  # in the backbone's dtype, as the user would ship it; masters stay in the state
            weights = {n: t.to(self.compute_dtype) if t.is_floating_point() else t for n, t in trainable.items()}
            with out.atomic_directory() as staging:  # whole files only, on a bucket as on a disk
                model.save_pretrained(staging, state_dict=weights, safe_serialization=True)
                self.tokenizer.save_pretrained(staging)
            return
        spec = self.job.mask
        save_mask_file(mask_artifact(self.job.artifact_dir, self.progress["report"]), masks, fingerprint=self.fingerprint,
                       model_type=model.config.model_type, dtype=model.get_input_embeddings().weight.dtype,
                       mode=spec.mode, ratio=spec.ratio, threshold=spec.threshold,
                       extra={"trial": self.job.name, "step": self.progress["step"]})


class OutOfMemory(RuntimeError):
    """A trial that does not fit: deterministic, so the sweep records it failed with this reason."""


def _is_out_of_memory(error: RuntimeError) -> bool:
    # torch.OutOfMemoryError on GPUs; the CPU allocator raises a plain RuntimeError
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def masks_from_scores(scores: dict[str, torch.Tensor], spec: MaskSpec) -> dict[str, torch.Tensor]:
    """The masks full score tensors select (computed from gathered scores: FSDP-safe)."""
    return {n: select_mask(s, spec.mode, spec.ratio, spec.threshold) for n, s in scores.items()}
