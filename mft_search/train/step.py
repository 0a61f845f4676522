"""The training step MFT and FFT share, in plain torch (no Ray): optimiser, schedule, one step.

The loss of a step is a weighted sum of token losses over the whole global batch divided by
the global sum of the weights, whatever the number of workers and micro-batches:
- `token` reduction: every response token weighs 1 (the mean over the batch's tokens);
- `example` reduction: each token weighs 1 / its example's token count, so each example's mean
  loss counts once (the authors' runs: micro-batch 1, mean loss, averaged over examples).
So a 2-worker run takes the same step as a 1-worker run over the same global batch (up to
float summation order): DDP and FSDP average gradients over ranks, and each micro-batch's loss
is scaled to undo that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mft_search.core.masking import defer_score_grads, refresh_masks
from mft_search.train.objectives import token_weights, weighted_loss_sum


class TrainSettings(BaseModel):
    """Optimiser and schedule of a training run (MFT trains scores, FFT trains weights)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-5, gt=0, description="peak learning rate (paper: 2e-5 LLaMA2, 2e-6 LLaMA3.1)")
    epochs: float = Field(2, gt=0, description="passes over the training data; fractions allowed")
    global_batch_size: int = Field(128, ge=1, description="examples per optimiser step, over all workers")
    micro_batch_size: int = Field(4, ge=1, description="examples per forward on one worker")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up, as a fraction of all steps")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="after warm-up: linear or cosine decay to 0 (linear: the authors'), or constant")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay; 0 for MFT (decay pulls scores to 0)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null for none")
    loss_reduction: Literal["token", "example"] = Field(
        "token", description="token: mean over the batch's response tokens; example: mean of per-example means")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward")
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; null = every epoch")
    seed: int = Field(0, description="data order and initialisation seed")


# The rate after warm-up, as a fraction of the peak, from (steps since warm-up, steps of decay).
# Linear is written as before the other shapes existed, so its rates are the same to the bit.
_DECAY = {
    "linear": lambda done, span: (span - done) / span,
    "cosine": lambda done, span: 0.5 * (1.0 + math.cos(math.pi * min(1.0, done / span))),
    "constant": lambda done, span: 1.0,
}


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, shape: str = "linear"):
    """Linear warm-up to the peak rate, then `shape`: linear or cosine decay to zero at
    `total_steps`, or the peak rate to the end (a run that must show what training past its
    best epoch does: a decay to 0 lets the last epochs heal what the middle ones broke)."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0
    decay = _DECAY[shape]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, decay(step - warmup, max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params: Iterable[nn.Parameter], settings: TrainSettings, total_steps: int):
    """AdamW on `params` with the settings' schedule; returns (optimizer, scheduler)."""
    optimizer = torch.optim.AdamW(list(params), lr=settings.lr, weight_decay=settings.weight_decay)
    return optimizer, lr_schedule(optimizer, total_steps, settings.warmup_ratio, settings.schedule)


def mixed_precision(device: torch.device, compute_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Compute in `compute_dtype` over fp32 master weights (autocast); nothing when None.

    FFT needs fp32 masters: AdamW at lr 2e-5 on bf16 weights leaves most updates below bf16's
    resolution, and the continued-FFT control would barely train (the authors' DeepSpeed bf16
    runs kept fp32 masters too).
    """
    if compute_dtype is None or compute_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype)


def _global_sum(value: float, device: torch.device) -> float:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def train_step(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], optimizer, scheduler,
               settings: TrainSettings, device: torch.device, compute_dtype: torch.dtype | None = None) -> float:
    """One optimiser step over this rank's micro-batches; returns the global weighted-mean loss.

    compute_dtype: autocast the forward to it over fp32 master weights (FFT under bf16).
    """
    micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
    weights = [token_weights(b, settings.loss_reduction) for b in micro_batches]
    global_weight = max(1e-12, _global_sum(float(sum(w.sum() for w in weights)), device))
    scale = _world_size() / global_weight  # gradient reducers average over ranks: undo it
    loss_sum = 0.0
    # Score gradients are summed in place across micro-batches and handed to autograd with the
    # last (core.masking.defer_score_grads), except under FSDP2 (set_requires_gradient_sync):
    # there the sum would hold each module's unsharded gradient for the whole step, the memory
    # that sharding saves, so every micro-batch's gradient is reduce-scattered as it comes.
    defer = len(micro_batches) > 1 and not hasattr(model, "set_requires_gradient_sync")
    for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
        last = i == len(micro_batches) - 1
        if defer:
            defer_score_grads(model, not last)
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with mixed_precision(device, compute_dtype):
                loss = weighted_loss_sum(model, batch, weight)
            (loss * scale).backward()
        loss_sum += float(loss.detach())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if settings.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    refresh_masks(model)
    return _global_sum(loss_sum, device) / global_weight
