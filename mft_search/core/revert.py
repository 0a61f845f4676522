"""The revert baseline: a mask's removed positions get the pretrained weight instead of zero.

It tells "removing these weights" (MFT: W * M) from "undoing their fine-tuning" (here:
W where M, W_pretrained elsewhere). Every kept weight, and every weight of an unmasked module,
stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mft_search.errors import ConfigError


def revert_to_pretrained(
    model: nn.Module, pretrained: Mapping[str, torch.Tensor] | nn.Module, masks: Mapping[str, torch.Tensor]
) -> None:
    """In place: for each masked module of the plain (fine-tuned) `model`, the positions its
    mask removes (False) take the pretrained weight; the rest is untouched.

    `pretrained` is the pretrained backbone, or its state dict (keys "<module>.weight"). Every
    name and shape is checked before anything changes; a pretrained weight in another dtype is
    cast to the model's (the reverted positions only).
    """
    plan = [(_weight(model, name), _pretrained_weight(pretrained, name), mask, name) for name, mask in masks.items()]
    for weight, pre, mask, name in plan:
        for what, shape in (("mask", mask.shape), ("pretrained weight", pre.shape)):
            if shape != weight.shape:
                raise ConfigError(
                    f"revert: {name}'s {what} has shape {tuple(shape)}, the model's weight {tuple(weight.shape)}; "
                    "give the pretrained backbone this model was fine-tuned from, and its own mask"
                )
    with torch.no_grad():
        for weight, pre, mask, _ in plan:
            removed = ~mask.to(device=weight.device, dtype=torch.bool)
            weight[removed] = pre.to(device=weight.device, dtype=weight.dtype)[removed]


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_submodule(name).weight
    except AttributeError:
        raise ConfigError(
            f"revert: the model has no module '{name}' with a weight; the mask is for another backbone"
        ) from None


def _pretrained_weight(pretrained: Mapping[str, torch.Tensor] | nn.Module, name: str) -> torch.Tensor:
    if isinstance(pretrained, nn.Module):
        try:
            return pretrained.get_submodule(name).weight.detach()
        except AttributeError:
            pass
    elif f"{name}.weight" in pretrained:
        return pretrained[f"{name}.weight"]
    raise ConfigError(
        f"revert: the pretrained backbone has no weight '{name}.weight'; give the pretrained model of "
        "the same architecture as the fine-tuned one"
    )
