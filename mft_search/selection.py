"""Turning scores (or weights) into binary masks: exact top-k and score thresholds.

Kept counts are exact: `round((1 - ratio) * numel)` weights per module, ties broken by flat
index (lowest index kept first), never by counting `>=` a threshold, which keeps every tied
value and so overshoots the count. `kthvalue` finds the cut value in O(n) memory, where a full
sort of a large module would need several copies of it.
"""

from __future__ import annotations

import torch


def kept_count(numel: int, ratio: float) -> int:
    """Weights kept when masking out `ratio` of `numel`: exact, immune to float truncation."""
    return int(round((1.0 - ratio) * numel))


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of `values`' shape keeping exactly the k largest entries; ties by lowest index."""
    flat = values.detach().reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    # The k-th largest is the (n - k + 1)-th smallest.
    cut = flat.float().kthvalue(n - k + 1).values
    above = flat > cut
    tied = flat == cut
    room = k - int(above.sum())
    keep = above | (tied & (torch.cumsum(tied, 0) <= room))
    return keep.view_as(values)


def local_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Local (per-module) MFT mask: keep the largest |score|, exactly."""
    return top_k_mask(scores.abs(), kept_count(scores.numel(), ratio))


def global_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Global MFT mask: keep every weight whose raw score reaches the threshold."""
    return scores.detach() >= threshold
