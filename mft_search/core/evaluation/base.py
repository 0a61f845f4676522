"""The one interface every benchmark evaluator implements.

An evaluator loads its problems once (from a local file or a hub id), then scores a model on
them. `evaluate` may be called on every rank of a torch.distributed group: each rank generates
for its shard of the problems, the results are gathered, and every rank returns the same
metrics. Nothing here knows about Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings shared by every generating evaluator: greedy unless `temperature` > 0."""

    max_new_tokens: int = 256
    batch_size: int = 16
    stop: tuple[str, ...] = ()
    use_chat_template: bool = True  # used only when the tokenizer has one
    prompt_template: str = "{prompt}"  # applied when no chat template is used
    # With the chat template, few-shot examples as user/assistant turns rather than one message.
    fewshot_as_multiturn: bool = False
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_samples: int = 1  # completions per problem (pass@k's n)
    seed: int = 0  # sampling seed


@dataclass(frozen=True)
class Scores:
    """What an evaluation measured, per problem, and under which settings.

    `metrics` holds the aggregate figures (the primary one under the evaluator's `metric`);
    `items` the primary metric per problem id, in [0, 1] (correct or not, pass@k, all
    instructions followed); `settings` says what decided the score, e.g.
    "GSM8K test, 5-shot, strict (lm-eval gsm8k v3 rules)", so a figure is never quoted bare.
    """

    metrics: dict[str, float]
    items: tuple[tuple[str, float], ...]
    settings: str


@dataclass(frozen=True)
class Problem:
    """One benchmark item: the prompt the model sees and whatever the scorer needs."""

    id: str
    prompt: str
    reference: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The same prompt as chat turns (few-shot examples as user/assistant pairs, then the
    # question), used instead of `prompt` when a chat template applies with fewshot_as_multiturn.
    turns: tuple[dict[str, str], ...] = ()


class Evaluator(Protocol):
    name: str  # the benchmark, e.g. "gsm8k"
    metric: str  # the key of the primary metric in `evaluate`'s result; higher is better

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        """Problems from `source` (a local path or hub id; None = the evaluator's default), at
        `split` of a hub dataset (None = the split the benchmark reports)."""
        ...

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> Scores:
        """Scores on `problems`, identical on every rank when torch.distributed is initialised."""
        ...


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
