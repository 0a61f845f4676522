"""The data side of a training run on one rank: steps by index, so a resumed run picks up
exactly where it stopped, and validation batches for the loss."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import torch

from mft_search.core.data import DataSpec, iterate_batches, shard_indices, steps_per_epoch, tokenized_dataset
from mft_search.core.data.batching import collate
from mft_search.core.data.cache import parts
from mft_search.core.data.encode import IGNORE
from mft_search.errors import DataError
from mft_search.train.step import TrainSettings

Batch = dict[str, torch.Tensor]


class TrainingData:
    """Tokenised (cached) training and validation sets, served step by step to one rank."""

    def __init__(self, spec: DataSpec, tokenizer, cache_dir: Path, settings: TrainSettings, rank: int,
                 world_size: int) -> None:
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train = tokenized_dataset(spec, tokenizer, cache_dir, "train")
        self.validation = tokenized_dataset(spec, tokenizer, cache_dir, "validation") if "validation" in parts(spec) else None
        self.steps_per_epoch = steps_per_epoch(len(self.train), settings.global_batch_size)
        if self.steps_per_epoch == 0:
            raise DataError(f"train.global_batch_size: {settings.global_batch_size} exceeds the "
                            f"{len(self.train)} training examples; lower it")
        self._cursor: tuple[int, Iterator] | None = None  # (next step, iterator positioned at it)

    def step_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of global optimiser step `step` (epochs run back to back)."""
        if self._cursor is None or self._cursor[0] != step:
            epoch, offset = divmod(step, self.steps_per_epoch)
            batches = self._epoch(epoch)
            self._cursor = (step, itertools.islice(batches, offset, None))
        try:
            micro = next(self._cursor[1])
        except StopIteration:  # end of an epoch: the next one starts with a new order
            self._cursor = (step, self._epoch(step // self.steps_per_epoch))
            micro = next(self._cursor[1])
        self._cursor = (step + 1, self._cursor[1])
        return micro

    def _epoch(self, epoch: int) -> Iterator[list[Batch]]:
        s = self.settings
        return iterate_batches(self.train, s.global_batch_size, s.micro_batch_size, self.rank, self.world_size,
                               epoch, s.seed, self.pad_id)

    def validation_batches(self) -> list[Batch] | None:
        """This rank's share of the validation set, in micro-batches (loss is summed over ranks)."""
        if self.validation is None:
            return None
        return rank_batches(self.validation, self.rank, self.world_size, self.settings.micro_batch_size, self.pad_id)


def rank_batches(dataset, rank: int, world_size: int, size: int, pad_id: int) -> list[Batch]:
    """A rank's strided share of a tokenised set, collated `size` rows at a time.

    Every rank gets as many rows as the largest share: the short ones end with a filler row
    whose labels are all ignored, so the loss is unchanged and every rank runs the same number
    of forwards (under FSDP2 each forward is a collective: a missing one deadlocks the others).
    """
    mine = shard_indices(len(dataset), rank, world_size)
    fillers = -(-len(dataset) // world_size) - len(mine)
    columns = [c for c in ("input_ids", "labels", "position_ids") if c in dataset.column_names]
    rows = dataset.select(mine + [0] * fillers).select_columns(columns)
    features = [dict(zip(columns, v)) for v in zip(*(rows[c] for c in columns))]
    for feature in features[len(mine):]:
        feature["labels"] = [IGNORE] * len(feature["labels"])
    return [collate(features[i : i + size], pad_id) for i in range(0, len(features), size)]
