"""Examples -> token sequences: formatting, response-only labels, truncation and packing."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from mft_search.core.data.spec import DataSpec
from mft_search.errors import DataError

IGNORE = -100  # label value the HF causal-LM loss skips
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One tokenised example; `truncated` when its response lost its tail to max_length."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def uses_chat_template(spec: DataSpec, tokenizer: PreTrainedTokenizerBase) -> bool:
    return spec.use_chat_template and bool(tokenizer.chat_template)


def conversation(row: Mapping[str, Any], spec: DataSpec) -> list[dict[str, str]]:
    """The row as messages whose last one, the assistant's, is the training target."""
    if spec.messages_field is None:
        return [
            {"role": "user", "content": str(row[spec.prompt_field])},
            {"role": "assistant", "content": str(row[spec.response_field])},
        ]
    messages = row[spec.messages_field]
    if not messages or not all(isinstance(m, Mapping) and {"role", "content"} <= m.keys() for m in messages):
        raise DataError(
            f"data.messages_field: '{spec.messages_field}' holds {str(messages)[:80]!r}, not a "
            "non-empty list of {role, content}; point it at the conversation column"
        )
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"data.messages_field: a conversation ends with role '{messages[-1]['role']}'; "
            "each must end with the assistant's reply, the text trained on"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(row: Mapping[str, Any], spec: DataSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """(prompt text, response text); the prompt is exactly what the model is given at inference."""
    messages = conversation(row, spec)
    if not uses_chat_template(spec, tokenizer):
        context = "\n".join(m["content"] for m in messages[:-1])
        return spec.template.format(prompt=context), messages[-1]["content"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DataError(
            "data.use_chat_template: the chat template does not render the prompt as a prefix "
            "of the conversation, so the response cannot be found; set use_chat_template: false "
            "and a template"
        )
    return prompt, full[len(prompt):]


def encode(prompt_ids: list[int], response_ids: list[int], max_length: int) -> Example | None:
    """Prompt + response cut to max_length from the end; None when the prompt leaves no room."""
    if len(prompt_ids) >= max_length:
        return None
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
    # Nothing predicts the first token; in a packed row this keeps examples from leaking.
    labels[0] = IGNORE
    return Example(ids, labels, len(prompt_ids) + len(response_ids) > max_length)


def tokenize_examples(ds: datasets.Dataset, spec: DataSpec, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
    """Columns input_ids, labels, truncated (+ position_ids when packing), one row a sequence."""
    if len(ds) == 0:
        raise DataError(f"data.source: '{spec.source}' yields no examples; check split, limit and fraction")
    if tokenizer.eos_token_id is None:
        raise DataError("data: the tokenizer has no eos_token; set one so responses can end")
    prompts, responses = zip(*(render(row, spec, tokenizer) for row in ds))
    # Chat templates write their own BOS; plain templates rely on the tokenizer adding it.
    prompt_ids = tokenizer(list(prompts), add_special_tokens=not uses_chat_template(spec, tokenizer))["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    # A chat template may close the turn with eos itself; a second one would teach a stutter.
    encoded = [encode(p, r if eos in r else r + [eos], spec.max_length) for p, r in zip(prompt_ids, response_ids)]
    examples = [e for e in encoded if e is not None]
    _log_losses(len(encoded) - len(examples), sum(e.truncated for e in examples), spec.max_length)
    if not examples:
        raise DataError(f"data.max_length: {spec.max_length} is shorter than every prompt; raise it")
    rows = pack(examples, spec.max_length) if spec.packing else [_row(e) for e in examples]
    return _to_dataset(rows)


def _log_losses(dropped: int, truncated: int, max_length: int) -> None:
    if dropped:
        log.warning("dropped %d examples whose prompt alone fills max_length %d", dropped, max_length)
    if truncated:
        log.warning("truncated the response of %d examples to max_length %d", truncated, max_length)


def _row(example: Example) -> dict[str, Any]:
    return {"input_ids": example.input_ids, "labels": example.labels, "truncated": int(example.truncated)}


def pack(examples: Sequence[Example], max_length: int) -> list[dict[str, Any]]:
    """Whole examples, in order, concatenated into rows of at most max_length tokens.

    position_ids restart at 0 for each example: given them without an attention mask,
    transformers attends only within each example (block-diagonal causal mask).
    """
    rows: list[dict[str, Any]] = []
    current: list[Example] = []
    length = 0
    for example in examples:
        if current and length + len(example.input_ids) > max_length:
            rows.append(_join(current))
            current, length = [], 0
        current.append(example)
        length += len(example.input_ids)
    rows.append(_join(current))
    return rows


def _join(examples: Sequence[Example]) -> dict[str, Any]:
    return {
        "input_ids": [t for e in examples for t in e.input_ids],
        "labels": [t for e in examples for t in e.labels],
        "position_ids": [p for e in examples for p in range(len(e.input_ids))],
        "truncated": sum(e.truncated for e in examples),
    }


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    tokens = pa.list_(pa.int32())  # int32 halves the memory of int64 token ids
    types = {"input_ids": tokens, "labels": tokens, "position_ids": tokens, "truncated": pa.int32()}
    columns = {k: pa.array([r[k] for r in rows], type=types[k]) for k in rows[0]}
    return datasets.Dataset(pa.table(columns))
