"""The training step MFT and FFT share, in plain torch (no Ray): optimiser, schedule, one step.

The loss of a step is the sum of token losses over the whole global batch divided by its token
count, whatever the number of workers and micro-batches. So a 2-worker run takes the same step
as a 1-worker run over the same global batch (up to float summation order): DDP and FSDP
average gradients over ranks, and each micro-batch's loss is scaled to undo that.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .masking import refresh_masks


class TrainSettings(BaseModel):
    """Optimiser and schedule of a training run (MFT trains scores, FFT trains weights)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-5, gt=0, description="peak learning rate (paper: 2e-5 LLaMA2, 2e-6 LLaMA3.1)")
    epochs: float = Field(2, gt=0, description="passes over the training data; fractions allowed")
    global_batch_size: int = Field(128, ge=1, description="examples per optimiser step, over all workers")
    micro_batch_size: int = Field(4, ge=1, description="examples per forward on one worker")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warm-up, as a fraction of all steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay; 0 for MFT (decay pulls scores to 0)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null for none")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward")
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; null = every epoch")
    seed: int = Field(0, description="data order and initialisation seed")


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up to the peak rate, then linear decay to zero at `total_steps`."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params: Iterable[nn.Parameter], settings: TrainSettings, total_steps: int):
    """AdamW on `params` with the linear schedule; returns (optimizer, scheduler)."""
    optimizer = torch.optim.AdamW(list(params), lr=settings.lr, weight_decay=settings.weight_decay)
    return optimizer, linear_schedule(optimizer, total_steps, settings.warmup_ratio)


def scored_tokens(labels: torch.Tensor) -> int:
    """Tokens that contribute to the causal-LM loss (labels shift by one inside the model)."""
    return int((labels[:, 1:] != -100).sum())


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
               settings: TrainSettings, device: torch.device) -> float:
    """One optimiser step over this rank's micro-batches; returns the global token-mean loss."""
    local_tokens = sum(scored_tokens(b["labels"]) for b in micro_batches)
    global_tokens = max(1.0, _global_sum(local_tokens, device))
    scale = _world_size() / global_tokens  # gradient reducers average over ranks: undo it
    loss_sum = 0.0
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            # use_cache=False: with a KV cache, packed examples would attend to each other
            loss = model(**batch, use_cache=False).loss * scored_tokens(batch["labels"])
            (loss * scale).backward()
        loss_sum += float(loss.detach())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if settings.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    refresh_masks(model)
    return _global_sum(loss_sum, device) / global_tokens
