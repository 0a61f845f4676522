"""Data-parallel wrapping of a (masked) model: DDP, or FSDP2 with weights and scores sharded.

torch.distributed must already be initialised (Ray Train does it: gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import gc
from typing import Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mft_search.core.architectures import layout_for

# ddp replicates the backbone on every worker; fsdp (FSDP2) shards weights and scores per block.
Strategy = Literal["ddp", "fsdp"]


def wrap_model(model: nn.Module, strategy: Strategy, device: torch.device,
               compute_dtype: torch.dtype | None = None) -> nn.Module:
    """The model ready for data-parallel training on this rank (unchanged when alone).

    compute_dtype: fp32 master weights computed in this dtype; FSDP2 then gathers parameters in
    it and reduces gradients in fp32 (DDP relies on the caller's autocast alone).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    if torch.distributed.get_world_size() == 1:
        return model
    if strategy == "ddp":
        # Frozen weights are skipped by DDP's reducer: only scores (MFT) or weights (FFT) sync.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _fully_shard(model, compute_dtype)


def _fully_shard(model: nn.Module, compute_dtype: torch.dtype | None) -> nn.Module:
    # One FSDP unit per transformer block, then the root: a block's frozen weight and its
    # trainable scores live in the same unit and are gathered together.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if compute_dtype is not None and compute_dtype != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    blocks = model.get_submodule(layout_for(model.config.model_type).blocks)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def release_memory(device: torch.device) -> int:
    """Free what the last trial left for the allocator; returns the bytes still allocated.

    A reused trial actor (Tune's reuse_actors) keeps its CUDA caching allocator: without this
    the next trial starts with the last one's cached blocks reserved.
    """
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying Hugging Face model (DDP wraps it; FSDP2 shards it in place)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank must call it), else the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
