"""Wanda pruning (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs") at an MFT
mask's per-module kept counts: a one-shot criterion that uses activations, no training.

Score of weight (i, j), output row i, input feature j: |W_ij| * ||X_j||_2, X_j the j-th input
feature over every calibration token. The paper compares scores within each output row.

Kept counts. An MFT mask keeps K weights of a module with R output rows; Wanda here keeps exactly
K too, spread over the rows as evenly as possible: every row keeps q = K // R, and the K % R
(< R) remaining weights go one each to the rows whose best not-yet-kept weight scores highest
(ties by lowest row index). So each row keeps q or q + 1: the paper's per-row comparison to
within one weight, with the criterion, not the row order, deciding which rows get the extra
one; when K is a multiple of R (a local mask whose ratio divides the row) it is exactly the
paper's uniform per-row sparsity. Within a row, ties go to the lowest column index (topk.py).

Calibration runs block by block in block order, as the authors' code does: a block's inputs
come through the earlier blocks already pruned. The model's weights are restored bit-identical
afterwards; only the masks are returned (apply them with masking.multiply_masks_in).

GPT-2's Conv1D stores W as (in, out): its output rows are the stored columns, so its scores are
computed on W.T and the mask transposed back to the stored shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from mft_search.core.architectures import LAYOUTS
from mft_search.core.calibration import input_feature_norms
from mft_search.core.topk import top_k_mask
from mft_search.errors import ConfigError


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """|W| * ||X_j|| in (out, in) orientation, fp32; `transposed` for a Conv1D's (in, out) weight."""
    w = weight.detach().float()
    w = w.t() if transposed else w
    if norms.numel() != w.size(1):
        raise ConfigError(f"wanda: {norms.numel()} input norms for a weight with {w.size(1)} input features")
    return w.abs() * norms.float().to(w.device).view(1, -1)


def row_quotas(scores: torch.Tensor, kept: int) -> torch.Tensor:
    """Weights each output row keeps: q = kept // rows everywhere, plus one in the kept % rows
    rows whose (q + 1)-th best score is highest (ties by lowest row index). Sums to `kept`."""
    rows, cols = scores.shape
    if not 0 <= kept <= rows * cols:
        raise ConfigError(f"wanda: kept count {kept} is outside 0..{rows * cols} for a {rows}x{cols} weight")
    q, extra = divmod(kept, rows)
    quotas = torch.full((rows,), q, dtype=torch.long, device=scores.device)
    if extra:  # q < cols here, so every row has a (q + 1)-th score
        next_best = scores.kthvalue(cols - q, dim=1).values
        quotas += top_k_mask(next_best, extra).long()
    return quotas


def row_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask keeping the k largest scores of every row; ties by lowest column index."""
    rows, cols = scores.shape
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(scores, dtype=torch.bool)
    cut = scores.kthvalue(cols - k + 1, dim=1, keepdim=True).values
    above, tied = scores > cut, scores == cut
    room = k - above.sum(1, keepdim=True)
    return above | (tied & (torch.cumsum(tied, 1) <= room))


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, kept: int, transposed: bool = False) -> torch.Tensor:
    """One module's Wanda mask keeping exactly `kept` weights, in the weight's stored shape."""
    scores = wanda_scores(weight, norms, transposed)
    quotas = row_quotas(scores, kept)
    q = int(quotas.min())
    mask = row_top_k(scores, q)
    if int(quotas.max()) > q:  # the rows with one extra weight
        mask = torch.where((quotas > q).view(-1, 1), row_top_k(scores, q + 1), mask)
    return mask.t() if transposed else mask


def wanda_masks(
    model: nn.Module, kept: dict[str, int], calibration_batches: Iterable[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Wanda masks of the named nn.Linear / Conv1D modules of a plain `model`, exactly
    `kept[name]` weights each, from one calibration pass per transformer block (block order,
    earlier blocks pruned). The model's weights are left as they were."""
    batches = list(calibration_batches)  # one pass per block: a generator would be used up
    modules = {name: _linear(model, name) for name in kept}
    saved = {name: m.weight.detach().clone() for name, m in modules.items()}
    masks: dict[str, torch.Tensor] = {}
    try:
        for group in _block_groups(model, list(kept)):
            norms = input_feature_norms(model, group, batches)
            for name in group:
                module = modules[name]
                masks[name] = wanda_mask(module.weight, norms[name], kept[name], isinstance(module, Conv1D))
                with torch.no_grad():  # later blocks see this one pruned, as in the paper
                    module.weight.mul_(masks[name].to(module.weight.device, module.weight.dtype))
    finally:
        with torch.no_grad():
            for name, module in modules.items():
                module.weight.copy_(saved[name])
    return masks


def _linear(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"wanda: the model has no module '{name}'; give the mask's module names") from None
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise ConfigError(f"wanda: {name} is a {type(module).__name__}, not a linear layer")
    return module


def _block_groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    """The names grouped by transformer block, in block order; one group when the model's
    architecture is not in the layout table (a bare module, as in tests)."""
    layout = LAYOUTS.get(getattr(getattr(model, "config", None), "model_type", None))
    if layout is None:
        return [names]
    prefix = layout.blocks + "."
    groups: dict[int, list[str]] = {}
    for name in names:
        if not name.startswith(prefix):
            raise ConfigError(f"wanda: {name} is not inside a transformer block ({prefix}N); mask only block modules")
        groups.setdefault(int(name[len(prefix):].split(".")[0]), []).append(name)
    return [groups[b] for b in sorted(groups)]
