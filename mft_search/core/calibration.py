"""Calibration activations for one-shot pruning criteria (Wanda): a seeded sample of training
sequences, and the L2 norm of each input feature of chosen linear layers over their tokens.

    batches = calibration_batches(train_dataset, pad_token_id=tok.pad_token_id)   # 128 x <= 2048
    norms = input_feature_norms(model, ["model.layers.20.mlp.down_proj"], batches)

Pure torch: forward hooks, no training, the model's weights untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mft_search.core.data.batching import collate
from mft_search.errors import ConfigError

# Wanda's own setting (Sun et al. 2023, Sec. 4): 128 sequences of 2048 tokens. SFT examples are
# mostly shorter than 2048, so here 2048 is a cap on each sampled example, not a fixed length.
DEFAULT_SEQUENCES = 128
DEFAULT_MAX_LENGTH = 2048


def calibration_batches(
    dataset: Sequence[Mapping[str, Sequence[int]]] | Sequence[Sequence[int]],
    n: int = DEFAULT_SEQUENCES,
    seed: int = 0,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """`n` sequences drawn without replacement (seeded) from a tokenised dataset or a list of
    token-id lists, each cut to `max_length`, right-padded into batches with an attention mask.

    Rows of a tokenised dataset contribute their `input_ids` only (labels and packing do not
    matter to activation statistics). Fewer rows than `n`: every row, once.
    """
    if n < 1 or max_length < 1 or batch_size < 1:
        raise ConfigError(f"calibration: n={n}, max_length={max_length}, batch_size={batch_size}; each must be >= 1")
    if len(dataset) == 0:
        raise ConfigError("calibration: the dataset is empty; give the training split")
    picked = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    rows = []
    for index in picked.tolist():
        row = dataset[index]
        ids = list(row["input_ids"] if isinstance(row, Mapping) else row)[:max_length]
        rows.append({"input_ids": ids, "labels": ids})
    return [collate(rows[i: i + batch_size], pad_token_id) for i in range(0, len(rows), batch_size)]


class _Enough(Exception):
    """Raised by a hook once every hooked module has run: the rest of the forward is not needed."""


def input_feature_norms(
    model: nn.Module, names: Iterable[str], batches: Iterable[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """||X_j||_2 for each named nn.Linear / Conv1D: the L2 norm of input feature j over every
    real (attention-masked-in) calibration token, fp32, on the module's device.

    nn.Linear and Conv1D both take x with the input features last, so one hook serves both.
    The forward stops once every hooked module has run in a batch: later blocks and the LM head
    would only cost time (each linear of a decoder block runs once per forward).
    """
    names = list(dict.fromkeys(names))  # fused kinds may name one module twice
    if not names:
        raise ConfigError("calibration: no modules named; give the masked modules' names")
    sums: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    tokens: dict[str, torch.Tensor | None] = {"mask": None}  # the current batch's real tokens

    def hook_for(name: str):
        def hook(module, args, output):
            x = args[0].detach()
            mask = tokens["mask"]
            x = x[mask] if mask is not None else x.reshape(-1, x.size(-1))  # (tokens, in)
            sq = x.float().pow(2).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
            seen.add(name)
            if len(seen) == len(names):
                raise _Enough

        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout would perturb the statistics
    try:
        with torch.no_grad():
            for batch in batches:
                seen.clear()
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                mask = batch.get("attention_mask")
                tokens["mask"] = mask.bool() if mask is not None else None
                try:
                    model(**batch, use_cache=False)
                except _Enough:
                    pass
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in sums]
    if missing:
        raise ConfigError(f"calibration: no batch reached {missing[:3]}; give at least one non-empty batch")
    return {n: sums[n].sqrt() for n in names}
