"""Resumable training state: what a restarted worker needs, never the frozen weights.

MFT: the fp32 scores (safetensors), the optimiser and schedule state, and the progress
counters. FFT trains the weights themselves, so its checkpoint holds them (safetensors); LoRA
holds its adapters' weights.
Everything loads without unpickling: safetensors, JSON, and `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mft_search.core.distributed import full_tensor, unwrap
from mft_search.core.masking import masked_modules

SCORES, WEIGHTS, OPTIMIZER, PROGRESS = "scores.safetensors", "weights.safetensors", "optimizer.pt", "progress.json"


def gather_trainable(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Full CPU copies of what is trained (a collective under FSDP: call on every rank)."""
    base = unwrap(model)
    if kind == "mft":
        return {n: full_tensor(m.scores.detach()).cpu() for n, m in masked_modules(base).items()}
    # LoRA trains its adapters only: the frozen base is the backbone's, reloaded on resume.
    return {n: full_tensor(p.detach()).cpu().contiguous() for n, p in base.named_parameters()
            if kind != "lora" or p.requires_grad}


def save_state(directory: Path, trainable: dict[str, torch.Tensor], kind: str, optimizer, scheduler,
               progress: dict[str, Any], sharded: bool) -> None:
    """Write a checkpoint directory (rank 0). Sharded optimiser state is not saved: see load."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(trainable, directory / (SCORES if kind == "mft" else WEIGHTS))
    if not sharded:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER)
    (directory / PROGRESS).write_text(json.dumps(progress))


def load_trainable(directory: Path, model: nn.Module, kind: str) -> None:
    """Restore scores (MFT) or weights (FFT) into a model that is not yet wrapped."""
    tensors = load_file(directory / (SCORES if kind == "mft" else WEIGHTS))
    with torch.no_grad():
        if kind == "mft":
            for name, module in masked_modules(model).items():
                module.scores.copy_(tensors[name])
        else:
            model.load_state_dict(tensors, strict=False)


def load_progress(directory: Path, optimizer, scheduler) -> dict[str, Any]:
    """Optimiser/schedule state (when saved) and the progress counters."""
    progress = json.loads((directory / PROGRESS).read_text())
    state_path = directory / OPTIMIZER
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    else:  # FSDP run: moments restart, the schedule resumes at the saved step
        for _ in range(progress["step"]):
            scheduler.step()
    return progress


