"""The SFT objective MFT and FFT train with: per-token weights and their weighted cross-entropy.

A new objective for the mask (a preference loss, say) belongs beside these two, so that the
step, the data and the evaluation need not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def token_weights(batch: dict[str, torch.Tensor], reduction: str) -> torch.Tensor:
    """Each predicted token's weight in the loss, shape (rows, length - 1); 0 where unlabelled.

    `example`: 1 / the token count of the example the label belongs to. Packed rows hold several
    examples, told apart by their restarting position ids.
    """
    scored = (batch["labels"][:, 1:] != -100).float()
    if reduction == "token":
        return scored
    if "position_ids" in batch:
        example = torch.cumsum(batch["position_ids"] == 0, dim=1)[:, 1:]
    else:
        example = torch.zeros_like(batch["labels"][:, 1:])
    rows = torch.arange(example.size(0), device=example.device).unsqueeze(1)
    flat = (rows * (int(example.max()) + 1) + example).reshape(-1)
    counts = torch.zeros(int(flat.max()) + 1, device=scored.device).index_add_(0, flat, scored.reshape(-1))
    return scored / counts[flat].clamp(min=1).view_as(scored)


def weighted_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Sum over predicted tokens of weight * cross-entropy, in fp32 whatever the compute dtype."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    # use_cache=False: with a KV cache, packed examples would attend to each other
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                             reduction="none")
    return (losses * weights.reshape(-1)).sum()
