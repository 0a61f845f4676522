"""The paper's baselines, on the same modules and with the same kept counts as an MFT mask.

- random: exactly the kept count, positions drawn from a seeded generator;
- l1: drop the smallest |W| (keep the largest magnitudes), exactly the kept count.

For a local mask the kept count of each module is round((1 - ratio) * numel); for a global mask
pass the MFT mask's own per-module kept counts so the comparison is at equal sparsity.
"""

from __future__ import annotations

import torch

from mft_search.core.seeds import module_seed
from mft_search.core.topk import kept_count, top_k_mask


def kept_counts_for_ratio(shapes: dict[str, torch.Size], ratio: float) -> dict[str, int]:
    """Per-module kept counts of a local mask at `ratio`."""
    return {name: kept_count(shape.numel(), ratio) for name, shape in shapes.items()}


def random_masks(shapes: dict[str, torch.Size], kept: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Random masks keeping exactly `kept[name]` weights of each module, seeded per module."""
    masks = {}
    for name, shape in shapes.items():
        gen = torch.Generator().manual_seed(module_seed(seed, name))
        order = torch.randperm(shape.numel(), generator=gen)
        flat = torch.zeros(shape.numel(), dtype=torch.bool)
        flat[order[: kept[name]]] = True
        masks[name] = flat.view(shape)
    return masks


def l1_masks(weights: dict[str, torch.Tensor], kept: dict[str, int]) -> dict[str, torch.Tensor]:
    """Magnitude masks keeping the `kept[name]` largest |W| of each module (ties by index)."""
    return {name: top_k_mask(w.detach().float().abs(), kept[name]) for name, w in weights.items()}


def baseline_masks(model: torch.nn.Module, kind: str, kept: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random or L1 masks for the named modules of a plain `model`, at the given kept counts."""
    weights = {name: model.get_submodule(name).weight for name in kept}
    if kind == "random":
        return random_masks({n: w.shape for n, w in weights.items()}, kept, seed)
    if kind == "l1":
        return l1_masks(weights, kept)
    raise ValueError(f"unknown baseline {kind!r}")
