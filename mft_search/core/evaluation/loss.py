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

import hashlib
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
    return evaluate_loss_items(model, batches)[0]


@torch.no_grad()
def evaluate_loss_items(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
                        ) -> tuple[dict[str, float], tuple[tuple[str, float], ...]]:
    """`evaluate_loss`'s figures, and each row's mean NLL per scored token keyed by a digest of
    the row's tokens: the same id for the same row whichever rank scored it, so variants scored
    on the same batches pair up item by item (core.statistics.paired_gain). Rows with no scored
    token (padding, FSDP's filler rows) are no items."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # float64 sums: millions of per-token NLLs added in fp32 lose digits.
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of NLL, token count]
    rows: list[tuple[str, float]] = []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            per_row = _row_totals(model, batch)
            totals += per_row.sum(dim=0)
            rows += _row_items(batch["input_ids"], per_row)
    finally:
        model.train(was_training)
    if rank_and_world()[1] > 1:
        torch.distributed.all_reduce(totals)
        gathered: list[list[tuple[str, float]]] = [[] for _ in range(rank_and_world()[1])]
        torch.distributed.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    nll, tokens = totals.tolist()
    if tokens == 0:
        raise DataError("validation data: no scored tokens (every label is -100); check the response field mapping")
    loss = nll / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": float(tokens)}, _unique(rows)


def _row_totals(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[rows, 2]: each row's sum of NLL and count of scored tokens."""
    # Packed rows carry restarting position_ids and no attention mask; without a KV cache
    # transformers keeps their examples apart.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    # fp32 for the softmax: bf16 logits round the log-probabilities of large vocabularies.
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX,
                          reduction="none")
    count = (labels != IGNORE_INDEX).sum(dim=1)
    return torch.stack([nll.double().sum(dim=1), count.double()], dim=1)


def _row_items(input_ids: torch.Tensor, per_row: torch.Tensor) -> list[tuple[str, float]]:
    items = []
    for ids, (nll, count) in zip(input_ids.cpu(), per_row.tolist()):
        if count > 0:
            items.append((hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16], nll / count))
    return items


def _unique(rows: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Repeated rows (the same tokens twice) get a suffix in order, so every id is one item."""
    seen: dict[str, int] = {}
    out = []
    for item, score in sorted(rows):  # rank order must not decide which copy is '#1'
        seen[item] = seen.get(item, -1) + 1
        out.append((f"{item}#{seen[item]}" if seen[item] else item, score))
    return tuple(out)
