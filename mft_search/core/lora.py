"""The LoRA baseline (the paper's "Best LoRA" / "Continued LoRA" rows) with peft.

    peft_model = attach_lora(pretrained_model, LoraSpec())        # wraps it; base frozen
    optimizer = torch.optim.AdamW(lora_parameters(peft_model), lr=2e-4)
    ...  # the FFT's loop, data and schedule: peft_model(**batch).loss.backward(); step
    plain = merge_lora(peft_model)                                 # W + (alpha/r) B A, plain model

Training: after `attach_lora` only the adapters' A and B require grad (peft freezes the base,
bias="none"), so the optimiser takes `lora_parameters` and the loop is the FFT's own. With
gradient checkpointing call `peft_model.enable_input_require_grads()` first (the frozen
embeddings would otherwise cut the graph). Evaluate per epoch on the merged copy or on the
peft model itself (same logits); save with `merge_lora` for a plain checkpoint.

Defaults: DESIGN.md does not state the paper's LoRA setting, so rank 16, alpha 32 (scale 2),
dropout 0.05, on the modules MFT can mask (q, k, v, o, gate, up, down) of every block: LoRA
is a fine-tuning baseline next to FFT, which trains every block, and these are the linear
layers architectures.py knows for each backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from mft_search.core.architectures import check_blocks, model_depth, module_names, resolve_kinds
from mft_search.errors import ConfigError


@dataclass(frozen=True)
class LoraSpec:
    """rank r, alpha (the update is scaled by alpha / r), dropout on the adapter's input, and
    the blocks / module kinds to adapt (None: every block, every kind the model has)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    blocks: tuple[int, ...] | None = None
    kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank: {self.rank}; give a positive rank, e.g. 16")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha: {self.alpha}; give a positive scale, e.g. 32")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: {self.dropout} is outside [0, 1); e.g. 0.05")


def lora_target_modules(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Full names of the linear modules `spec` adapts in `model`."""
    model_type = model.config.model_type
    depth = model_depth(model.config)
    blocks = tuple(range(depth)) if spec.blocks is None else tuple(spec.blocks)
    check_blocks(model_type, depth, blocks)
    return module_names(model_type, blocks, resolve_kinds(model_type, spec.kinds))


def attach_lora(model: nn.Module, spec: LoraSpec = LoraSpec()) -> PeftModel:
    """Wrap a causal LM with LoRA adapters on `spec`'s modules (peft injects them in place:
    `model` itself now carries them). Adapters start as the identity (B = 0)."""
    targets = lora_target_modules(model, spec)
    # Conv1D (GPT-2) stores W as (in, out); peft must know, or it warns and flips the flag itself.
    conv1d = any(isinstance(model.get_submodule(n), Conv1D) for n in targets)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,  # full names: peft matches a listed name exactly
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def lora_parameters(peft_model: PeftModel) -> list[nn.Parameter]:
    """The trainable adapter tensors: the only parameters a LoRA optimiser sees."""
    return [p for p in peft_model.parameters() if p.requires_grad]


def merge_lora(peft_model: PeftModel) -> nn.Module:
    """The plain model with W + (alpha / r) B A merged in and the adapters removed."""
    return peft_model.merge_and_unload()
