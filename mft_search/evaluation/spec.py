"""Which benchmark to run, on which problems, decoded how: one block of the sweep's YAML."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .base import GenerationSettings


class EvalSpec(BaseModel):
    """A benchmark evaluation: a validation metric for selection, or the held-out test."""

    model_config = ConfigDict(extra="forbid")

    evaluator: str = Field(description="gsm8k, math, humaneval, humaneval_plus or ifeval")
    source: str | None = Field(None, description="local file or hub id of the problems; null = the benchmark's own")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N problems")
    max_new_tokens: int = Field(256, ge=1, description="generation budget per problem")
    batch_size: int = Field(16, ge=1, description="prompts decoded together")
    prompt_template: str = Field("{prompt}", description="wraps each prompt when the tokenizer has no chat template")
    use_chat_template: bool = Field(True, description="use the tokenizer's chat template when it has one")

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                  use_chat_template=self.use_chat_template, prompt_template=self.prompt_template)
