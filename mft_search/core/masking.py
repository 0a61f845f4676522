"""Mask Fine-Tuning on a frozen Hugging Face causal LM: masked linear layers and their injector.

    model = AutoModelForCausalLM.from_pretrained(...)
    masked = attach_masks(model, MaskSpec(blocks=(20, 21, 22, 23), ratio=0.1))
    optimizer = torch.optim.AdamW(score_parameters(model), lr=2e-5, weight_decay=0.0)
    ...  # ordinary SFT loop: only the scores learn
    masks = current_masks(model)          # {module name: bool tensor}
    materialize(model)                     # W *= M in place, plain nn.Linear / Conv1D again

Each masked module keeps its frozen weight bit-identical and learns an fp32 score tensor of the
same shape. The forward uses W * M(S); the backward is the straight-through estimator through
the top-k or the threshold, but not through the absolute value (Zhang et al. 2025, as their
released code runs it): local mode ranks |S|, so dL/dS = dL/d(W*M) * W * sign(S); global mode
compares raw S with the threshold, so dL/dS = dL/d(W*M) * W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from mft_search.core.architectures import check_blocks, layout_for, model_depth, module_names, resolve_kinds
from mft_search.core.seeds import module_seed
from mft_search.core.topk import MODES, cut_of, select_mask
from mft_search.errors import ConfigError

Mode = Literal["local", "global"]
Init = Literal["normal", "magnitude", "kaiming"]


@dataclass(frozen=True)
class MaskSpec:
    """Which modules to mask and how.

    blocks: transformer block indices (a layer group such as 20..23, or any list).
    kinds: module kinds among q, k, v, o, gate, up, down; None = every kind the model has.
    mode: "local" keeps round((1 - ratio) * numel) weights per module by |score|;
          "global" keeps every weight with score >= threshold.
    init: score initialisation: "normal" N(0, init_std) as the authors ran it, "magnitude"
          |W| (starts from the L1 mask), or "kaiming" (nn.Linear's default init).
    """

    blocks: tuple[int, ...]
    kinds: tuple[str, ...] | None = None
    mode: Mode = "local"
    ratio: float = 0.1
    threshold: float = -0.035
    init: Init = "normal"
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ConfigError("mask.blocks: empty; name at least one transformer block")
        if self.mode not in MODES:
            raise ConfigError(f"mask.mode: '{self.mode}' is not {' or '.join(MODES)}")
        if self.mode == "local" and not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"mask.ratio: {self.ratio} is outside (0, 1); e.g. 0.1 masks 10%")
        if self.init not in ("normal", "magnitude", "kaiming"):
            raise ConfigError(f"mask.init: '{self.init}' is not normal, magnitude or kaiming")


class _StraightThrough(torch.autograd.Function):
    """W * M forward; the mask's gradient passes straight to the scores in backward.

    Local mode: the mask is a top-k of |S|, and the authors apply the straight-through function
    to `scores.abs()`, so autograd carries sign(S): dL/dS = dL/d(W*M) * W * sign(S). Without it
    every negative score moves the wrong way and the weights the loss wants are pruned.
    Global mode: the mask thresholds raw S, so dL/dS = dL/d(W*M) * W.

    W * M and the backward's factor (W * sign(S), or W) are the same for every micro-batch of an
    optimiser step, so the caller forms them once per step (`_StepCache`) and passes them in:
    a micro-batch then costs one product in backward and none in forward (bench core measured
    the per-micro-batch products, sign and bool-to-float casts at 15-20% of a 27M model's MFT
    step at accumulation 16).

    With `defer_score_grads` on (train_step, for every micro-batch but a step's last), backward
    adds its product into the step cache's sum in place (one fused multiply-add, no new tensor)
    instead of handing autograd a product to add into `.grad`; the last micro-batch hands over
    the sum plus its own product, so gradient hooks (DDP's all-reduce) see one gradient per step.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, masked: torch.Tensor, factor: torch.Tensor, cache: _StepCache) -> torch.Tensor:
        ctx.save_for_backward(factor)
        ctx.cache = cache
        # a view, not `masked` itself: autograd would otherwise attach this call's graph to the
        # cached tensor that every micro-batch shares
        return masked.view_as(masked)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (factor,) = ctx.saved_tensors
        cache: _StepCache = ctx.cache
        # fp32 products: a bf16 gradient of a bf16 weight is too coarse for fp32 scores. W*sign(S)
        # is exact in W's dtype, and mul/addcmul compute a mixed bf16/fp32 product in fp32, so a
        # product is grad.float() * W.float() * sign(S) to the bit, without fp32 copies of W.
        if cache.defer:  # a micro-batch before the step's last: sum here, hand autograd nothing
            if cache.grad_sum is None:
                cache.grad_sum = grad_out.float() * factor
            else:
                cache.grad_sum.addcmul_(grad_out, factor)
            return None, None, None, None
        if cache.grad_sum is not None:  # the step's last micro-batch: the sum goes to autograd
            grad, cache.grad_sum = torch.addcmul(cache.grad_sum, grad_out, factor), None
            return grad, None, None, None
        return grad_out.float() * factor, None, None, None


@dataclass
class _StepCache:
    """What one optimiser step's micro-batches share: the mask, and W * M and the backward's
    factor formed from it (lazily, and again if the weight changes in place)."""

    version: int  # the scores' in-place version the mask was computed at
    mask: torch.Tensor
    weight_version: int = -1
    masked: torch.Tensor | None = None  # W * M, in W's dtype
    factor: torch.Tensor | None = None  # W * sign(S) (local) or W (global), in W's dtype
    defer: bool = False  # keep this micro-batch's score gradient in grad_sum (defer_score_grads)
    grad_sum: torch.Tensor | None = None  # fp32: the deferred micro-batches' score gradients


class MaskedLinear(nn.Module):
    """A frozen nn.Linear or GPT-2 Conv1D whose weight is multiplied by a learned binary mask.

    The mask is cached and recomputed only when the scores change, i.e. once per optimiser
    step, not on every forward, micro-batch or activation-checkpoint recompute. A change is seen
    through the scores' in-place version counter, or told by `refresh_masks` (FSDP2 gathers the
    scores into a buffer whose counter does not follow the optimiser's updates of the shards).
    `fixed_mask` overrides the scores (baselines, mask files).
    """

    def __init__(self, base: nn.Module, mode: Mode, ratio: float, threshold: float) -> None:
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self.transposed = isinstance(base, Conv1D)  # Conv1D stores (in, out): y = x @ W + b
        self.mode, self.ratio, self.threshold = mode, ratio, threshold
        self.scores = nn.Parameter(torch.zeros(base.weight.shape, dtype=torch.float32, device=base.weight.device))
        self.fixed_mask: torch.Tensor | None = None
        self.mask_computations = 0  # observable, so tests and benchmarks can count recomputes
        self._cache: _StepCache | None = None
        # No reference to `base` is kept: after FSDP2 shards this module, a kept base would hold
        # the full weight alive on every rank. detach/materialize rebuild a plain module instead.

    def mask(self) -> torch.Tensor:
        """The current binary mask (bool, the weight's shape)."""
        if self.fixed_mask is not None:
            return self.fixed_mask
        return self._step_cache().mask

    def _step_cache(self) -> _StepCache:
        version = self.scores._version
        if self._cache is None or self._cache.version != version:
            with torch.no_grad():
                m = select_mask(self.scores, self.mode, self.ratio, self.threshold)
            self._cache = _StepCache(version, m)
            self.mask_computations += 1
        return self._cache

    def masked_weight(self) -> torch.Tensor:
        if self.fixed_mask is not None or not self.scores.requires_grad:
            return self.weight * self.mask()
        cache = self._step_cache()
        if cache.masked is None or cache.weight_version != self.weight._version:
            # Keyed on the weight's version too: an in-place change of W (or FSDP2's gather into
            # the unsharded weight) forms them again rather than using stale values.
            with torch.no_grad():
                weight = self.weight.detach()
                cache.masked = weight * cache.mask
                cache.factor = weight * self.scores.detach().sign().to(weight.dtype) \
                    if self.mode == "local" else weight
            cache.weight_version = self.weight._version
        return _StraightThrough.apply(self.scores, cache.masked, cache.factor, cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.masked_weight()
        if not self.transposed:
            return F.linear(x, w, self.bias)
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), w)
        return out.view(*x.shape[:-1], w.size(-1))

    def to_plain(self) -> nn.Module:
        """A plain nn.Linear / Conv1D holding this module's own weight and bias (no copy)."""
        out_features, in_features = self.weight.shape[::-1] if self.transposed else self.weight.shape
        with torch.device("meta"):  # built empty: the real tensors are assigned below
            plain = Conv1D(out_features, in_features) if self.transposed else nn.Linear(
                in_features, out_features, bias=self.bias is not None)
        plain.weight, plain.bias = self.weight, self.bias
        return plain

    def extra_repr(self) -> str:
        name, value = cut_of(self.mode, self.ratio, self.threshold)
        return f"shape={tuple(self.weight.shape)}, mode={self.mode}, {name}={value}"


def attach_masks(model: nn.Module, spec: MaskSpec) -> dict[str, MaskedLinear]:
    """Freeze every parameter of `model` and replace the chosen modules with MaskedLinear.

    Returns the masked modules by their full name. Scores are initialised per `spec.init`,
    seeded per module so a module's scores do not depend on which others are masked.
    """
    names = spec_module_names(model, spec)
    model.requires_grad_(False)
    masked: dict[str, MaskedLinear] = {}
    for name in names:
        base = model.get_submodule(name)
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise ConfigError(f"mask.kinds: {name} is a {type(base).__name__}, not a linear layer")
        module = MaskedLinear(base, spec.mode, spec.ratio, spec.threshold)
        _init_scores(module, spec, name)
        _replace(model, name, module)
        masked[name] = module
    return masked


def spec_module_names(model: nn.Module, spec: MaskSpec) -> list[str]:
    """Full names of the modules `spec` masks in `model`, after checking blocks and kinds fit it."""
    model_type = model.config.model_type
    layout_for(model_type)
    check_blocks(model_type, model_depth(model.config), tuple(spec.blocks))
    return module_names(model_type, tuple(spec.blocks), resolve_kinds(model_type, spec.kinds))


def _init_scores(module: MaskedLinear, spec: MaskSpec, name: str) -> None:
    scores, weight = module.scores, module.weight
    gen = torch.Generator(device="cpu").manual_seed(module_seed(spec.seed, name))
    with torch.no_grad():
        if spec.init == "magnitude":
            values = weight.detach().float().abs().cpu()
        elif spec.init == "normal":
            values = torch.randn(scores.shape, generator=gen) * spec.init_std
        else:  # kaiming-uniform with a=sqrt(5), nn.Linear's own default
            fan_in = scores.shape[0] if module.transposed else scores.shape[1]  # Conv1D is (in, out)
            bound = 1.0 / math.sqrt(fan_in)
            values = (torch.rand(scores.shape, generator=gen) * 2 - 1) * bound
        scores.copy_(values)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def masked_modules(model: nn.Module) -> dict[str, MaskedLinear]:
    """Every MaskedLinear in `model`, by full name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


def refresh_masks(model: nn.Module) -> None:
    """Tell every masked module its scores changed: call after each optimiser step."""
    for module in masked_modules(model).values():
        if module._cache is not None and module._cache.grad_sum is not None:
            raise RuntimeError("a deferred score gradient was never handed to autograd: the step's last "
                               "micro-batch must run with defer_score_grads(model, False)")
        module._cache = None


def defer_score_grads(model: nn.Module, defer: bool) -> None:
    """Whether the next backward keeps each masked module's score gradient in its step cache
    (on: every micro-batch of a step but the last) or hands it, with the kept sum, to autograd
    (off: the last). Saves a product's allocation and an add into `.grad` per micro-batch, a few
    percent of a step at 16 micro-batches of 64 tokens (bench core)."""
    for module in masked_modules(model).values():
        if module.fixed_mask is None and module.scores.requires_grad:
            module._step_cache().defer = defer


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable score tensors: the only parameters an MFT optimiser sees."""
    return [m.scores for m in masked_modules(model).values()]


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The binary mask of every masked module, by full name (bool tensors, weight's shape)."""
    return {n: m.mask() for n, m in masked_modules(model).items()}


def set_fixed_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Pin each masked module to a given mask (baselines, loaded mask files)."""
    modules = masked_modules(model)
    for name, mask in masks.items():
        module = modules[name]
        if mask.shape != module.weight.shape:
            raise ConfigError(f"mask: {name} has shape {tuple(mask.shape)}, the weight {tuple(module.weight.shape)}")
        module.fixed_mask = mask.to(device=module.weight.device, dtype=torch.bool)


def kept_fraction(model: nn.Module) -> float:
    """Fraction of the masked modules' weights that the current masks keep."""
    return masks_kept_fraction(current_masks(model))


def masks_kept_fraction(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of all the masks' positions that are kept (1.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total if total else 1.0


def detach_masks(model: nn.Module) -> None:
    """Put the original modules back, weights untouched (the unmasked backbone again)."""
    for name, module in masked_modules(model).items():
        _replace(model, name, module.to_plain())


def multiply_masks_in(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """W *= M for each named plain module: what a masked checkpoint is made of."""
    with torch.no_grad():
        for name, mask in masks.items():
            weight = model.get_submodule(name).weight
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def materialize(model: nn.Module) -> dict[str, torch.Tensor]:
    """Multiply each mask into its weight in place and restore plain nn.Linear / Conv1D.

    Returns the masks that were applied. After this the model needs no mft_search code.
    """
    masks = current_masks(model)
    detach_masks(model)
    multiply_masks_in(model, masks)
    return masks
