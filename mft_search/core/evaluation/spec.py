"""Which benchmark to run, on which problems, decoded how: one block of the sweep's YAML."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mft_search.core.evaluation.base import GenerationSettings
from mft_search.errors import did_you_mean


class EvalSpec(BaseModel):
    """A benchmark run on generated answers: the selection metric (validation) or the report (test)."""

    model_config = ConfigDict(extra="forbid")

    evaluator: str = Field(description="benchmark: gsm8k, math, humaneval, humaneval_plus or ifeval")
    source: str | None = Field(None, description="local file or hub id of the problems; null = the evaluator's default")
    split: str | None = Field(None, description="split of a hub dataset; null = the benchmark's test split")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N problems; null = all")
    max_new_tokens: int = Field(256, ge=1, description="generation budget per problem")
    batch_size: int = Field(16, ge=1, description="prompts per generate call on one worker")
    prompt_template: str = Field("{prompt}", description="wraps each prompt when no chat template is used")
    use_chat_template: bool = Field(True, description="format prompts with the tokenizer's chat template when it has one")
    stop: list[str] = Field([], description="strings that end a completion; empty = the benchmark's own")

    @field_validator("evaluator")
    @classmethod
    def _known(cls, name: str) -> str:
        from mft_search.core.evaluation import EVALUATORS  # lazily: each evaluator pulls its own dependencies

        if name not in EVALUATORS:
            raise ValueError(f"unknown '{name}'{did_you_mean(name, EVALUATORS)}; choose one of {', '.join(sorted(EVALUATORS))}")
        return name

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError(f"'{template}' lacks {{prompt}}; e.g. 'Question: {{prompt}}\\nAnswer:'")
        return template

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, stop=tuple(self.stop),
                                  use_chat_template=self.use_chat_template, prompt_template=self.prompt_template)
