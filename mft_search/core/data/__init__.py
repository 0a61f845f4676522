"""SFT data: load examples (hub or local files), format and tokenise them once, batch them.

    spec = DataSpec(source="openai/gsm8k", subset="main", prompt_field="question",
                    response_field="answer", fraction=0.1, validation_fraction=0.05)
    train = tokenized_dataset(spec, tokenizer, cache_dir)        # tokenised once, then cached
    for micro_batches in iterate_batches(train, 128, 4, rank, world_size, epoch, seed=0):
        ...  # one optimiser step: forward/backward each micro-batch, then step

Pure datasets/transformers/torch: no Ray here.
"""

from mft_search.core.data.batching import collate, epoch_permutation, iterate_batches, shard_indices, steps_per_epoch
from mft_search.core.data.cache import fingerprint, tokenized_dataset, tokenizer_fingerprint
from mft_search.core.data.encode import IGNORE, pack, render, tokenize_examples
from mft_search.core.data.load import load_examples, select_examples, split_train_validation
from mft_search.core.data.spec import DataSpec

__all__ = [
    "IGNORE",
    "DataSpec",
    "collate",
    "epoch_permutation",
    "fingerprint",
    "iterate_batches",
    "load_examples",
    "pack",
    "render",
    "select_examples",
    "shard_indices",
    "split_train_validation",
    "steps_per_epoch",
    "tokenize_examples",
    "tokenized_dataset",
    "tokenizer_fingerprint",
]
