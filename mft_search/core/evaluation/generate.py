"""Batched greedy generation shared by every generating evaluator.

Under torch.distributed each rank generates a strided shard of the prompts and the texts are
gathered back into the original order on every rank. A full copy per rank generates on its
own; an FSDP-sharded model's forwards are collectives, so its ranks run in lockstep: as many
batches as the largest shard (filler prompts, dropped after) and as many decoding steps as the
longest batch on any rank (`synced_gpus`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from mft_search.core.distributed import is_sharded
from mft_search.core.evaluation.base import GenerationSettings, rank_and_world


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, settings: GenerationSettings) -> str:
    """The text the model sees: the chat template when asked for and present, else the template."""
    if settings.use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # replace, not str.format: few-shot and LaTeX prompts contain literal braces.
    return settings.prompt_template.replace("{prompt}", prompt)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (excluding) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenerationSettings,
) -> list[str]:
    """Greedy completions of `prompts`, in order, identical on every rank."""
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
    prompts: list[str],
    settings: GenerationSettings,
    lockstep: bool = False,
) -> list[str]:
    texts = [format_prompt(tokenizer, p, settings) for p in prompts]
    chat = settings.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    # A chat template already writes BOS; adding special tokens again would double it.
    add_special = not chat
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
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
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
