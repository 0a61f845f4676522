"""Batches for data-parallel training whose global composition does not depend on world size.

Each epoch shuffles the examples with (seed, epoch); consecutive `global_batch_size` slices are
optimiser steps; each step is cut into micro-batches in a fixed order, and rank r takes its
contiguous run of them. One worker accumulating k * W micro-batches therefore sees exactly the
micro-batches that W workers with k each see, padded alike: averaging the micro-batch losses
over accumulation steps (loss / k before backward) and DDP's mean over ranks gives the same
gradient as one worker with loss / (k * W).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import datasets
import numpy as np
import torch

from mft_search.core.data.encode import IGNORE
from mft_search.errors import ConfigError


def collate(features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row.

    Packed rows (with position_ids) get no attention mask: transformers then builds a
    per-example causal mask from the restarting position ids, and the padding, numbered as one
    more sequence, stays apart from the real tokens. It does so only without a KV cache: call
    the model with use_cache=False, or packed examples attend to each other.
    """
    width = max(len(f["input_ids"]) for f in features)

    def pad(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([list(f[key]) + [fill] * (width - len(f[key])) for f in features])

    batch = {"input_ids": pad("input_ids", pad_token_id), "labels": pad("labels", IGNORE)}
    if "position_ids" in features[0]:
        batch["position_ids"] = torch.tensor(
            [list(f["position_ids"]) + list(range(width - len(f["position_ids"]))) for f in features]
        )
    else:
        lengths = [len(f["input_ids"]) for f in features]
        batch["attention_mask"] = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return batch


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Rank's share of range(n) (strided): disjoint across ranks, together covering all once.
    For evaluation, where shards may differ in size by one and metrics are summed."""
    _check_rank(rank, world_size)
    return list(range(rank, n, world_size))


def epoch_permutation(n: int, epoch: int, seed: int) -> list[int]:
    """The example order of one epoch: the same on every rank and in every process."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def steps_per_epoch(n: int, global_batch_size: int) -> int:
    """Optimiser steps in an epoch; the last partial global batch is dropped (it differs each epoch)."""
    return n // global_batch_size


def iterate_batches(
    dataset: datasets.Dataset,
    global_batch_size: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    pad_token_id: int = 0,
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """For each optimiser step of `epoch`, this rank's micro-batches (collated tensors).

    pad_token_id only fills positions that are masked and unlabelled, so its value is inert.
    """
    _check_batching(len(dataset), global_batch_size, micro_batch_size, rank, world_size)
    order = epoch_permutation(len(dataset), epoch, seed)
    per_rank = global_batch_size // world_size
    columns = [c for c in ("input_ids", "labels", "position_ids") if c in dataset.column_names]
    for step in range(steps_per_epoch(len(dataset), global_batch_size)):
        start = step * global_batch_size + rank * per_rank
        mine = order[start : start + per_rank]
        yield [
            collate(_rows(dataset, mine[i : i + micro_batch_size], columns), pad_token_id)
            for i in range(0, per_rank, micro_batch_size)
        ]


def _rows(dataset: datasets.Dataset, indices: list[int], columns: list[str]) -> list[dict[str, list[int]]]:
    batch = dataset.select_columns(columns)[indices]
    return [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")


def _check_batching(n: int, global_batch_size: int, micro_batch_size: int, rank: int, world_size: int) -> None:
    _check_rank(rank, world_size)
    if micro_batch_size < 1 or global_batch_size % (micro_batch_size * world_size):
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size "
            f"{micro_batch_size} x {world_size} workers; choose sizes that divide it"
        )
    if n < global_batch_size:
        raise ConfigError(
            f"global_batch_size {global_batch_size} exceeds the {n} training sequences; lower it "
            "or raise data.fraction"
        )
