"""`DataSpec`: where the SFT examples live and how they become token sequences.

It is a pydantic model so that the sweep's YAML embeds it as is (`data:` block); every field
name is a YAML key. Static mistakes fail here, at the door; mistakes that need the data itself
(a missing column, a missing file) raise `DataError` when the data is read.
"""

from __future__ import annotations

from string import Formatter

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DataSpec(BaseModel):
    """One SFT dataset, its column mapping, formatting, splitting and length budget.

        DataSpec(source="openai/gsm8k", subset="main", prompt_field="question",
                 response_field="answer", fraction=0.1, validation_fraction=0.05)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        description="Hugging Face hub dataset id (e.g. 'openai/gsm8k'), or a local path: a "
        ".json/.jsonl/.parquet/.arrow file, a directory of such files (split names inferred "
        "from file names, e.g. train.jsonl) or a datasets.save_to_disk directory, or a glob."
    )
    subset: str | None = Field(None, description="Hub configuration name (e.g. 'main' for gsm8k).")
    split: str = Field(
        "train",
        description="Split used for training, for hub ids and directories. A single file or a "
        "glob is read whole, whatever this says.",
    )
    validation_split: str | None = Field(
        None,
        description="Split of the same source used for validation (e.g. 'validation'). Leave "
        "unset to carve validation_fraction out of the training split instead.",
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit). Pin a commit: the tokenised cache is "
        "keyed on this name, not on the hub's current content.",
    )
    prompt_field: str | None = Field(
        None, description="Column holding the prompt text (e.g. 'question'); use with response_field."
    )
    response_field: str | None = Field(
        None, description="Column holding the target text (e.g. 'answer'); use with prompt_field."
    )
    messages_field: str | None = Field(
        None,
        description="Column holding a conversation, a list of {role, content}; the last message "
        "must be the assistant's and is the only one trained on. Alternative to "
        "prompt_field/response_field.",
    )
    use_chat_template: bool = Field(
        True,
        description="Format with the tokenizer's chat template when it has one; false forces "
        "`template` (match how the backbone was fine-tuned).",
    )
    template: str = Field(
        "Question: {prompt}\nAnswer: ",
        description="Prompt format used when the chat template is not: must contain {prompt} "
        "and no other field; the response follows it directly. For messages without a chat "
        "template, {prompt} is the earlier messages' contents joined by newlines.",
    )
    max_length: int = Field(
        2048,
        gt=1,
        description="Tokens per sequence. Longer examples keep the prompt start and lose the "
        "response tail (counted in the `truncated` column); an example whose prompt alone "
        "fills it is dropped.",
    )
    packing: bool = Field(
        False,
        description="Concatenate whole examples into sequences of up to max_length tokens "
        "(position ids restart at each example; no label crosses a boundary).",
    )
    fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Seeded fraction of the training examples kept (the paper's probe stage "
        "uses 0.1). Taken after the validation carve-out, so validation is the same for any "
        "fraction.",
    )
    validation_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Seeded fraction of the training split held out for validation when there "
        "is no validation_split; 0 means no validation set.",
    )
    seed: int = Field(0, description="Seed of the validation carve-out and of the fraction subset.")
    limit: int | None = Field(
        None, gt=0, description="Read only the first `limit` rows of each split (quick runs)."
    )

    @field_validator("template")
    @classmethod
    def _template_has_prompt(cls, template: str) -> str:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
        if fields != {"prompt"}:
            raise ValueError(
                f"data.template: has fields {sorted(fields)}; it needs exactly one, {{prompt}} "
                "(write literal braces as {{ and }})"
            )
        return template

    @model_validator(mode="after")
    def _one_format(self) -> DataSpec:
        pair = (self.prompt_field, self.response_field)
        if self.messages_field is not None and any(pair):
            raise ValueError("data: set messages_field or prompt_field/response_field, not both")
        if self.messages_field is None and not all(pair):
            raise ValueError(
                "data: set both prompt_field and response_field (e.g. question/answer), "
                "or messages_field for conversations"
            )
        if self.validation_split is not None and self.validation_fraction > 0:
            raise ValueError(
                "data: validation_split and validation_fraction both set; keep one of them"
            )
        return self
