"""Evaluation under FSDP2 on CPU/gloo with shards of unequal size: every rank must run the same
number of collective forwards, or the ranks deadlock. Three ranks, seven rows or prompts."""

import json
import os
import socket

import datasets
import pytest
import torch
import torch.multiprocessing as mp

from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.generate import generate
from mft_search.core.evaluation.loss import evaluate_loss
from mft_search.core.masking import MaskSpec, attach_masks
from mft_search.core.distributed import wrap_model
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from mft_search.train.batches import rank_batches

WORLD, ROWS, MICRO = 3, 7, 2  # shards of 3, 2, 2 rows: 2, 1, 1 micro-batches without padding
PROMPTS = [f"Tom has {n} apples. He buys {n + 3} more." for n in range(ROWS)]
SETTINGS = GenerationSettings(max_new_tokens=6, batch_size=2)


def _dataset() -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(ROWS):
        ids = torch.randint(4, 400, (5 + 3 * i,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return datasets.Dataset.from_list(rows)


def _model():
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(1, 2)))
    return model


def _evaluate(model, rank, world):
    loss = evaluate_loss(model, rank_batches(_dataset(), rank, world, MICRO, 0))["loss"]
    return {"loss": loss, "texts": generate(model, tiny_tokenizer(), PROMPTS, SETTINGS)}


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = wrap_model(_model(), "fsdp", torch.device("cpu"))
        result = _evaluate(model, rank, WORLD)
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uneven_shards_under_fsdp2_evaluate_as_one_process_does(tmp_path):
    context = mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    for _ in range(60):  # a deadlock shows as ranks that never finish: fail, do not hang
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("ranks did not finish within 60 s: a collective forward is missing on some rank")
    alone = _evaluate(_model(), 0, 1)
    for rank in range(WORLD):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["loss"] == pytest.approx(alone["loss"], rel=1e-5)
        assert result["texts"] == alone["texts"]
