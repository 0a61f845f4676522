"""Response-token loss: hand-computed cross entropy, token weighting across batches and ranks."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mft_search.errors import DataError
from mft_search.core.evaluation.loss import evaluate_loss, evaluate_loss_items
from mft_search.demo.tiny import tiny_gpt2


def _batch(seed: int, rows: int, length: int, scored_from: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 400, (rows, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0  # right padding on one row, never scored
    labels = input_ids.clone()
    labels[:, :scored_from] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


BATCHES = [_batch(0, 2, 10, 3), _batch(1, 3, 7, 5), _batch(2, 1, 12, 2), _batch(3, 2, 6, 4)]


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(layers=2)


def _by_hand(model, batches) -> tuple[float, int]:
    """Sum of -log p(label t | tokens < t) over every scored token, one token at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for row in range(logits.shape[0]):
                for t in range(1, logits.shape[1]):
                    label = int(b["labels"][row, t])
                    if label != -100:
                        total += F.cross_entropy(logits[row, t - 1][None], torch.tensor([label])).item()
                        count += 1
    return total, count


def test_matches_hand_computation_token_weighted(model):
    total, count = _by_hand(model, BATCHES)
    result = evaluate_loss(model, BATCHES)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    batch_means = [evaluate_loss(model, [b])["loss"] for b in BATCHES]
    # The batches differ in scored tokens, so a mean of batch means would differ.
    assert abs(sum(batch_means) / len(batch_means) - result["loss"]) > 1e-4


def test_per_row_items_are_each_rows_mean_and_keyed_by_its_tokens(model):
    # items.parquet pairs variants item by item: a row's id must not depend on its batch or order
    figures, items = evaluate_loss_items(model, BATCHES)
    rows = [{k: v[i:i + 1] for k, v in b.items()} for b in BATCHES for i in range(len(b["input_ids"]))]
    by_hand = [_by_hand(model, [row]) for row in rows]
    rows = [row for row, (_, count) in zip(rows, by_hand) if count]  # a row of padding only is no item
    assert sorted(score for _, score in items) == pytest.approx(sorted(t / c for t, c in by_hand if c), rel=1e-5)
    assert dict(evaluate_loss_items(model, rows[::-1])[1]) == pytest.approx(dict(items), rel=1e-5)
    assert len({item for item, _ in items}) == len(rows)
    twice = evaluate_loss_items(model, [BATCHES[0], BATCHES[0]])[1]
    assert len({item for item, _ in twice}) == 2 * len(evaluate_loss_items(model, [BATCHES[0]])[1])  # twice: two items
    assert figures == evaluate_loss(model, BATCHES)


def test_single_batch_equals_the_models_own_shifted_loss(model):
    b = BATCHES[0]
    with torch.no_grad():
        expected = model(**b).loss.item()
    assert evaluate_loss(model, [b])["loss"] == pytest.approx(expected, rel=1e-5)


def test_no_scored_tokens_is_a_data_error(model):
    b = dict(BATCHES[0], labels=torch.full_like(BATCHES[0]["labels"], -100))
    with pytest.raises(DataError, match="no scored tokens"):
        evaluate_loss(model, [b])


def test_training_mode_restored(model):
    model.train()
    evaluate_loss(model, BATCHES[:1])
    assert model.training
    model.eval()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result, items = evaluate_loss_items(tiny_gpt2(layers=2), BATCHES[rank::world])  # uneven tokens per rank
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({**result, "items": items}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_equal_one_process(model, tmp_path):
    expected, items = evaluate_loss_items(model, BATCHES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["tokens"] == expected["tokens"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert dict(got["items"]) == pytest.approx(dict(items), rel=1e-5)  # every rank has every row
