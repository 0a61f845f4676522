"""Validation loss and perplexity on response tokens only.

Batches follow the Hugging Face convention: `labels` equal `input_ids` where a token is scored
and -100 elsewhere (prompt, padding), and position t's logits predict label t + 1. The mean is
over tokens, not over batches or ranks: batches with more response tokens weigh more, exactly
as if the whole set were one batch.

This is not registered in `get_evaluator`: it takes tokenised batches (from the data module),
not generation `Problem`s, and lower is better, whereas an Evaluator's metric is higher-better.
Under torch.distributed an FSDP-sharded model needs the same number of batches on every rank
(its forwards are collective); a full copy per rank does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from mft_search.core.evaluation.base import rank_and_world
from mft_search.errors import DataError

IGNORE_INDEX = -100


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """{"loss": mean NLL per scored token, "perplexity": exp(loss), "tokens": scored tokens}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # float64 sums: millions of per-token NLLs added in fp32 lose digits.
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of NLL, token count]
    try:
        for batch in batches:
            totals += _batch_totals(model, {k: v.to(device) for k, v in batch.items()})
    finally:
        model.train(was_training)
    if rank_and_world()[1] > 1:
        torch.distributed.all_reduce(totals)
    nll, tokens = totals.tolist()
    if tokens == 0:
        raise DataError("validation data: no scored tokens (every label is -100); check the response field mapping")
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": float(tokens)}


def _batch_totals(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    # Packed rows carry restarting position_ids and no attention mask; without a KV cache
    # transformers keeps their examples apart.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    # fp32 for the softmax: bf16 logits round the log-probabilities of large vocabularies.
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = (labels != IGNORE_INDEX).sum()
    return torch.stack([nll.double(), count.double()])
