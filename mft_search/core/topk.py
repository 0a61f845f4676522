"""Turning scores (or weights) into binary masks: exact top-k and score thresholds.

Kept counts are exact: `round((1 - ratio) * numel)` weights per module, ties broken by flat
index (lowest index kept first), never by counting `>=` a threshold, which keeps every tied
value and so overshoots the count. `kthvalue` finds the cut value in O(n) memory, where a full
sort of a large module would need several copies of it.
"""

from __future__ import annotations

import math

import torch


def kept_count(numel: int, ratio: float) -> int:
    """Weights kept when masking out `ratio` of `numel`: exact, immune to float truncation."""
    return int(round((1.0 - ratio) * numel))


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of `values`' shape keeping exactly the k largest entries; ties by lowest index."""
    flat = values.detach().reshape(-1).float()
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    cut = kth_largest(flat, k)
    keep = flat >= cut
    if int(keep.sum()) == k:  # the usual case with continuous scores: no tie to break at the cut
        return keep.view_as(values)
    above = flat > cut
    tied = flat == cut
    room = k - int(above.sum())
    keep = above | (tied & (torch.cumsum(tied, 0) <= room))
    return keep.view_as(values)


_SAMPLE = 8192


def kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a 1-D tensor, exactly.

    A strided sample brackets the answer in a narrow band [lo, hi]; `kthvalue` then runs on
    the band only (a few percent of the tensor), about twice as fast on CPU as on the whole.
    When the sample misjudges the band the full `kthvalue` answers, so the result is exact.
    """
    n = flat.numel()
    if n < 8 * _SAMPLE:
        return flat.kthvalue(n - k + 1).values
    sample = torch.sort(flat[:: n // _SAMPLE], descending=True).values
    m = sample.numel()
    rank = k * m / n  # expected position of the answer in the sample
    margin = 4 * math.sqrt(m) + 16
    hi = sample[max(int(rank - margin), 0)]
    lo = sample[min(int(rank + margin), m - 1)]
    above_hi = int((flat > hi).sum())
    band = flat[(flat >= lo) & (flat <= hi)]
    r = k - above_hi  # the answer's rank inside the band, largest first
    if not 1 <= r <= band.numel():
        return flat.kthvalue(n - k + 1).values
    return band.kthvalue(band.numel() - r + 1).values


def local_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Local (per-module) MFT mask: keep the largest |score|, exactly."""
    return top_k_mask(scores.abs(), kept_count(scores.numel(), ratio))


def global_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Global MFT mask: keep every weight whose raw score reaches the threshold."""
    return scores.detach() >= threshold


# The one rule that ties each mode to the setting that decides its cut: local keeps the
# top (1 - ratio) of |S| in every module, global keeps every score >= threshold.
CUT_SETTING = {"local": "ratio", "global": "threshold"}
MODES = tuple(CUT_SETTING)


def cut_of(mode: str, ratio: float | None, threshold: float | None) -> tuple[str, float | None]:
    """(name, value) of the setting that decides a `mode` mask's cut."""
    name = CUT_SETTING[mode]
    return name, {"ratio": ratio, "threshold": threshold}[name]


def select_mask(scores: torch.Tensor, mode: str, ratio: float, threshold: float) -> torch.Tensor:
    """The mask an MFT mode selects from one module's scores."""
    return {"local": local_mask, "global": global_mask}[mode](scores, cut_of(mode, ratio, threshold)[1])
