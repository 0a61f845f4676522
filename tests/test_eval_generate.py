"""Batched greedy generation: batching, ordering, stop strings and rank sharding change nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.generate import format_prompt, generate, truncate_at_stop
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer

PROMPTS = [
    "Question: Tom has 12 apples. He buys 7 more. How many apples does he have?\nAnswer:",
    "The quick brown fox",
    "0 1 2",
    "Question: How many?\nAnswer: 12 + 7 =",
    "The lazy dog jumps over the quick brown fox. Tom has 3 apples and buys 4 more.",
    "####",
    "Answer: 19",
]
SETTINGS = GenerationSettings(max_new_tokens=12, batch_size=3)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=2)


def test_batched_equals_one_at_a_time(model, tok):
    batched = generate(model, tok, PROMPTS, SETTINGS)
    single = [generate(model, tok, [p], dataclasses.replace(SETTINGS, batch_size=1))[0] for p in PROMPTS]
    assert batched == single
    assert any(batched), "a random model still emits some text"


def test_order_preserved_whatever_the_batching(model, tok):
    forward = generate(model, tok, PROMPTS, SETTINGS)
    backward = generate(model, tok, PROMPTS[::-1], dataclasses.replace(SETTINGS, batch_size=4))
    assert backward[::-1] == forward


def test_stop_strings_truncate_and_stop_early(model, tok):
    full = generate(model, tok, PROMPTS, SETTINGS)
    # Choose, per output, a stop string that occurs in it: a character from its middle.
    stop = tuple(sorted({t[len(t) // 2] for t in full if len(t) > 2}))
    stopped = generate(model, tok, PROMPTS, dataclasses.replace(SETTINGS, stop=stop))
    assert stopped == [truncate_at_stop(t, stop) for t in full]
    assert all(not any(s in t for s in stop) for t in stopped)


def test_truncate_at_stop_takes_the_earliest():
    assert truncate_at_stop("a b\n\nQuestion: c", ("Question:", "\n\n")) == "a b"
    assert truncate_at_stop("no stop here", ("###",)) == "no stop here"
    assert truncate_at_stop("x", ()) == "x"


def test_prompt_template_keeps_literal_braces(tok):
    settings = GenerationSettings(prompt_template="Q: {prompt} \\boxed{}", use_chat_template=False)
    assert format_prompt(tok, "1+1", settings) == "Q: 1+1 \\boxed{}"


def test_chat_template_used_when_present(tok):
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}A:"
    assert format_prompt(chat_tok, "hi", GenerationSettings()) == "<s>hi</s>A:"
    assert format_prompt(chat_tok, "hi", GenerationSettings(use_chat_template=False)) == "hi"
    assert format_prompt(tok, "hi", GenerationSettings()) == "hi"


def test_tokenizer_and_model_state_restored(model, tok):
    model.train()
    generate(model, tok, PROMPTS[:2], SETTINGS)
    assert model.training and tok.padding_side == "right"
    model.eval()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        texts = generate(tiny_llama(layers=2), tiny_tokenizer(), PROMPTS, SETTINGS)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(texts, f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(model, tok, tmp_path):
    expected = generate(model, tok, PROMPTS, SETTINGS)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected


def test_tokenizer_without_pad_token_pads_with_eos(model):
    no_pad = tiny_tokenizer()
    no_pad.pad_token = None
    texts = generate(model, no_pad, PROMPTS[:3], SETTINGS)
    assert len(texts) == 3 and no_pad.pad_token is None
