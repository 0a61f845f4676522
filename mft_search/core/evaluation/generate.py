"""Batched generation shared by every generating evaluator, and the one generate-score-aggregate
loop they all run (`generate_and_score`).

Under torch.distributed each rank generates a strided shard of the prompts and the texts are
gathered back into the original order on every rank. A full copy per rank generates on its
own; an FSDP-sharded model's forwards are collectives, so its ranks run in lockstep: as many
batches as the largest shard (filler prompts, dropped after) and as many decoding steps as the
longest batch on any rank (`synced_gpus`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Union

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from mft_search.core.distributed import is_sharded
from mft_search.core.evaluation.base import GenerationSettings, Problem, Scores, rank_and_world

# A prompt: one user message's text, or a conversation (chat turns) ending in a user turn.
Prompt = Union[str, Sequence[dict[str, str]]]


def uses_chat(tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings) -> bool:
    """Whether prompts go through the chat template: asked for, and the tokenizer has one."""
    return settings.use_chat_template and bool(getattr(tokenizer, "chat_template", None))


def model_input(problem: Problem, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings) -> Prompt:
    """The problem's chat turns under a chat template with fewshot_as_multiturn, else its prompt
    (few-shot examples collapsed into one user message, as lm-eval does)."""
    if problem.turns and settings.fewshot_as_multiturn and uses_chat(tokenizer, settings):
        return list(problem.turns)
    return problem.prompt


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, settings: GenerationSettings) -> str:
    """The text the model sees: the chat template when asked for and present, else the template."""
    if uses_chat(tokenizer, settings):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ValueError("chat turns need a chat template; pass the problem's prompt text instead")
    # replace, not str.format: few-shot and LaTeX prompts contain literal braces.
    return settings.prompt_template.replace("{prompt}", prompt)


ItemScores = dict[str, float]


def mean_metrics(items: Sequence[ItemScores]) -> dict[str, float]:
    """Each metric's mean over problems (0 for none)."""
    keys = list(items[0]) if items else []
    return {k: sum(i[k] for i in items) / len(items) for k in keys}


def generate_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    settings: GenerationSettings,
    score: Callable[[Sequence[Problem], list[list[str]]], list[ItemScores]],
    primary: str,
    label: str,
    aggregate: Callable[[Sequence[ItemScores]], dict[str, float]] = mean_metrics,
) -> Scores:
    """Generate `settings.num_samples` completions per problem, score each problem
    (`score(problems, completions)`: one dict of metrics per problem, `primary` among them),
    and aggregate (by default the mean of each metric)."""
    prompts = [model_input(p, tokenizer, settings) for p in problems]
    completions = generate_samples(model, tokenizer, prompts, settings)
    per_item = score(problems, completions)
    metrics = {k: float(v) for k, v in aggregate(per_item).items()}
    items = tuple((p.id, float(s[primary])) for p, s in zip(problems, per_item))
    return Scores(metrics=metrics, items=items, settings=label)


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
) -> list[list[str]]:
    """`settings.num_samples` completions of each prompt (one when greedy: they would be equal)."""
    n = settings.num_samples if settings.temperature > 0 else 1
    flat = generate(model, tokenizer, [p for p in prompts for _ in range(n)], settings)
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (excluding) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
) -> list[str]:
    """Completions of `prompts` (greedy, or sampled at `settings.temperature`), in order,
    identical on every rank."""
    rank, world = rank_and_world()
    shard = list(range(rank, len(prompts), world))
    mine = [prompts[i] for i in shard]
    lockstep = world > 1 and is_sharded(model)
    if lockstep and prompts:
        mine += [prompts[0]] * (-(-len(prompts) // world) - len(mine))
    local = _generate_local(model, tokenizer, mine, settings, lockstep)[: len(shard)]
    if world == 1:
        return local
    gathered: list[list[tuple[int, str]] | None] = [None] * world
    torch.distributed.all_gather_object(gathered, list(zip(shard, local)))
    out = [""] * len(prompts)
    for pairs in gathered:
        for i, text in pairs:
            out[i] = text
    return out


def _generate_local(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    settings: GenerationSettings,
    lockstep: bool = False,
) -> list[str]:
    texts = [format_prompt(tokenizer, p, settings) for p in prompts]
    # A chat template already writes BOS; adding special tokens again would double it.
    add_special = not uses_chat(tokenizer, settings)
    if settings.temperature > 0:  # each rank its own stream, so shards do not repeat each other
        torch.manual_seed(settings.seed + rank_and_world()[0])
    lengths = [len(tokenizer(t, add_special_tokens=add_special).input_ids) for t in texts]
    # Longest first: similar lengths share a batch (less padding), and memory peaks at once.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = [""] * len(texts)
    with _padding_left(tokenizer), _eval_mode(model):
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            completions = _generate_batch(model, tokenizer, [texts[i] for i in idx], settings, add_special,
                                          lockstep)
            for i, text in zip(idx, completions):
                out[i] = text
    return out


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    settings: GenerationSettings,
    add_special: bool,
    lockstep: bool,
) -> list[str]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(model.device)
    prompt_len = enc.input_ids.shape[1]
    eos = model.generation_config.eos_token_id
    # A fresh config: the checkpoint's own may ask for sampling (temperature, top_p).
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                "top_k": 0} if settings.temperature > 0 else {"do_sample": False}
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        **sampling,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
    )
    criteria = [_StopStrings(tokenizer, settings.stop, prompt_len)] if settings.stop else None
    output = model.generate(**enc, generation_config=config, stopping_criteria=criteria, synced_gpus=lockstep)
    decoded = tokenizer.batch_decode(output[:, prompt_len:], skip_special_tokens=True)
    return [truncate_at_stop(t, settings.stop) for t in decoded]


class _StopStrings(StoppingCriteria):
    """Finishes each sequence once its completion contains a stop string.

    Only the last few tokens are decoded: a stop string of n characters spans at most n + 1
    tokens. The final text is truncated separately, so this only saves steps.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, tuple(stop), prompt_len
        self.window = max(len(s) for s in self.stop) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@contextmanager
def _padding_left(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Left padding (decoder-only models continue from the last position), pad = EOS if unset."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while generating; the caller's training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
