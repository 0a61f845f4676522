"""Which benchmark to run, on which problems, prompted and scored how: one block of the sweep's YAML.

Every field that decides a score is here (shots, answer filter, chat template, stops, budget,
sampling); those left out take the `preset`'s value (`conventions.PRESETS`; `lm-eval`, the
default, follows lm-evaluation-harness's task definitions).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.conventions import FEWSHOT_BENCHMARKS, Convention, convention
from mft_search.errors import did_you_mean

FILTERS = ("strict", "flexible")


def _is_local(source: str) -> bool:
    from mft_search.core.evaluation.records import is_local

    return is_local(source)
CODE_BENCHMARKS = ("humaneval", "humaneval_plus")


class EvalSpec(BaseModel):
    """A benchmark run on generated answers: the selection metric (validation) or the report (test)."""

    model_config = ConfigDict(extra="forbid")

    evaluator: str = Field(description="benchmark: gsm8k, math, humaneval, humaneval_plus or ifeval")
    source: str | None = Field(None, description="local file or hub id of the problems; null = the evaluator's default")
    split: str | None = Field(None, description="split of a hub dataset; null = the benchmark's test split")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N problems; null = all")
    preset: Literal["lm-eval", "olmes-paper"] = Field(
        "lm-eval", description="where unset fields take their values: lm-eval's task definitions, or the MFT "
                               "authors' olmes settings")
    num_fewshot: int | None = Field(None, ge=0, description="examples before each problem (gsm8k); null = the preset's, "
                                                             "or 0 for a local source without a fewshot_source")
    fewshot_source: str | None = Field(None, description="local file or hub id the examples come from; null = the benchmark's hub id")
    fewshot_split: str = Field("train", description="split the examples are drawn from; never the evaluated one")
    fewshot_seed: int = Field(1234, description="seed of the examples' draw (lm-eval's default fewshot seed)")
    filter: list[Literal["strict", "flexible"]] | None = Field(
        None, description="gsm8k answer filter(s): strict ('#### N'), flexible (last number), or both as a list, "
                          "all reported and the first selecting; null = the preset's")
    max_new_tokens: int | None = Field(None, ge=1, description="generation budget per problem; null = the preset's")
    batch_size: int = Field(16, ge=1, description="prompts per generate call on one worker")
    prompt_template: str = Field("{prompt}", description="wraps each prompt when no chat template is used")
    use_chat_template: bool | None = Field(None, description="format prompts with the tokenizer's chat template when "
                                                             "it has one; null = the preset's (on)")
    fewshot_as_multiturn: bool | None = Field(None, description="with the chat template, few-shot examples as "
                                                                "user/assistant turns; null = the preset's")
    stop: list[str] | None = Field(None, description="strings that end a completion; null or empty = the benchmark's own")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; > 0 samples (humaneval pass@k)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass when temperature > 0")
    num_samples: int = Field(1, ge=1, description="completions per problem, the n of pass@k (humaneval)")
    pass_k: list[int] = Field([1], description="the k of each pass@k reported (humaneval); each <= num_samples")
    equivalence: Literal["normaliser", "math-verify"] = Field(
        "normaliser", description="math answer equivalence: the string normaliser or math-verify (optional package)")

    @field_validator("evaluator")
    @classmethod
    def _known(cls, name: str) -> str:
        from mft_search.core.evaluation import EVALUATORS  # lazily: each evaluator pulls its own dependencies

        if name not in EVALUATORS:
            raise ValueError(f"unknown '{name}'{did_you_mean(name, EVALUATORS)}; choose one of {', '.join(sorted(EVALUATORS))}")
        return name

    @field_validator("filter", mode="before")
    @classmethod
    def _one_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("filter")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("give strict, flexible, or both once each as a list, e.g. [flexible, strict]")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError(f"'{template}' lacks {{prompt}}; e.g. 'Question: {{prompt}}\\nAnswer:'")
        return template

    @model_validator(mode="after")
    def _fits_the_benchmark(self) -> EvalSpec:
        # Non-default values, not model_fields_set: a dumped block (all fields) must validate again.
        name = self.evaluator
        set_ = {k for k, f in type(self).model_fields.items() if getattr(self, k) != f.get_default() and k != "num_fewshot"}
        if name not in FEWSHOT_BENCHMARKS:
            if self.num_fewshot:
                raise ValueError(f"num_fewshot: {name} is evaluated 0-shot here (few-shot: {', '.join(FEWSHOT_BENCHMARKS)}); "
                                 "set num_fewshot: 0 or remove it")
            extra = sorted({"fewshot_source", "fewshot_split", "fewshot_as_multiturn"} & set_)
            if extra:
                raise ValueError(f"{extra[0]}: {name} takes no few-shot examples; remove it")
        if self.filter is not None and name != "gsm8k":
            raise ValueError(f"filter: only gsm8k has answer filters, not {name}; remove it")
        if "equivalence" in set_ and name != "math":
            raise ValueError(f"equivalence: only math compares answers by equivalence, not {name}; remove it")
        self._check_sampling(name, set_)
        if self.fewshot_as_multiturn and self.use_chat_template is False:
            raise ValueError("fewshot_as_multiturn: needs the chat template; set use_chat_template: true or drop it")
        if self.num_fewshot and self._offline_problems():
            raise ValueError(f"fewshot_source: {self.num_fewshot}-shot prompts would draw their examples from the hub's "
                             f"{self.evaluator} {self.fewshot_split} split, but source is a local file; give "
                             "fewshot_source (e.g. a local GSM8K train.jsonl) or set num_fewshot: 0")
        if self.shots() and self._fewshot_is_evaluated():
            raise ValueError(f"fewshot_split: '{self.fewshot_split}' is the evaluated split; draw examples from "
                             "another (GSM8K: train), or give fewshot_source")
        return self

    def _check_sampling(self, name: str, set_: set[str]) -> None:
        extra = sorted({"num_samples", "pass_k", "temperature", "top_p"} & set_)
        if extra and name not in CODE_BENCHMARKS:
            raise ValueError(f"{extra[0]}: sampling several completions is for humaneval(_plus), not {name}; remove it")
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError(f"temperature: {self.num_samples} greedy samples would be equal; set temperature > 0 "
                             "(e.g. 0.8) or num_samples: 1")
        bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
        if bad:
            raise ValueError(f"pass_k: {bad} outside 1..num_samples ({self.num_samples}); raise num_samples or lower k")

    def _fewshot_is_evaluated(self) -> bool:
        """Whether the examples would come from the problems evaluated (same file, or same hub
        dataset and split; unset sources are the benchmark's hub id)."""
        from mft_search.core.evaluation.records import BENCHMARK_DATA

        default = BENCHMARK_DATA[self.evaluator]
        shots, problems = self.fewshot_source or default.source, self.source or default.source
        if shots != problems:
            return False
        return _is_local(problems) or self.fewshot_split == (self.split or default.split)

    # ------------------------------------------------------------ resolved settings

    def convention(self) -> Convention:
        return convention(self.preset, self.evaluator)

    def shots(self) -> int:
        """num_fewshot, else the preset's; 0 for local problems without a local fewshot_source
        (the preset's examples live on the hub; the settings label says 0-shot)."""
        if self.num_fewshot is not None:
            return self.num_fewshot
        return 0 if self._offline_problems() else self.convention().num_fewshot

    def _offline_problems(self) -> bool:
        return self.fewshot_source is None and self.source is not None and _is_local(self.source)

    def filters(self) -> tuple[str, ...]:
        return tuple(self.filter) if self.filter is not None else self.convention().filter

    def generation(self) -> GenerationSettings:
        """The decoding settings, each unset field at its preset's value."""
        c = self.convention()
        chat = c.use_chat_template if self.use_chat_template is None else self.use_chat_template
        turns = c.fewshot_as_multiturn if self.fewshot_as_multiturn is None else self.fewshot_as_multiturn
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens or c.max_new_tokens, batch_size=self.batch_size,
            stop=tuple(self.stop or c.stop or ()), use_chat_template=chat, prompt_template=self.prompt_template,
            fewshot_as_multiturn=turns and chat, temperature=self.temperature, top_p=self.top_p,
            num_samples=self.num_samples, seed=self.fewshot_seed,
        )

    def evaluator_options(self) -> dict[str, Any]:
        """What `get_evaluator` needs beyond the name to score as this block says."""
        if self.evaluator == "gsm8k":
            return {"num_fewshot": self.shots(), "fewshot_source": self.fewshot_source,
                    "fewshot_split": self.fewshot_split, "filters": self.filters(), "fewshot_seed": self.fewshot_seed}
        if self.evaluator == "math":
            return {"equivalence": self.equivalence}
        if self.evaluator in CODE_BENCHMARKS:
            return {"ks": tuple(self.pass_k)}
        return {}

    def make_evaluator(self):  # noqa: ANN201 (an Evaluator; its module is imported on demand)
        """The evaluator this block describes (its problems still to load)."""
        from mft_search.core.evaluation import get_evaluator

        return get_evaluator(self.evaluator, **self.evaluator_options())

