"""Pre-training the demo's base model: a plain causal-LM loop over packed documents.

The SFT machinery (job.py) trains on prompt/response pairs; pre-training is language modelling
on every token of a corpus, so it gets its own short loop here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mft_search.train.step import lr_schedule


@dataclass(frozen=True)
class PretrainSettings:
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.1
    seed: int = 0


def pack_documents(tokenizer: PreTrainedTokenizerBase, documents: list[str], seq_len: int) -> torch.Tensor:
    """Documents joined by EOS and cut into rows of `seq_len` tokens (the ragged tail dropped)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [eos])
    rows = len(stream) // seq_len
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def pretrain(model: PreTrainedModel, rows: torch.Tensor, settings: PretrainSettings,
             log: Callable[[str], None] = print) -> float:
    """Train `model` on random batches of `rows`; returns the mean loss of the last 10% of steps."""
    torch.manual_seed(settings.seed)
    order = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  betas=(0.9, 0.95))
    scheduler = lr_schedule(optimizer, settings.steps, settings.warmup_ratio)  # linear, as it always was
    model.train()
    tail = max(1, settings.steps // 10)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(settings.steps):
        batch = rows[order.sample(range(len(rows)), min(settings.batch_size, len(rows)))]
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == settings.steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            log(f"  pre-train step {step + 1}/{settings.steps}: loss {recent:.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return sum(losses[-tail:]) / tail
