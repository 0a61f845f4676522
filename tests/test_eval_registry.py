"""The evaluator registry: names resolve lazily, unknown names get a one-line fix."""

from __future__ import annotations

import importlib.util

import pytest

from mft_search.errors import ConfigError
from mft_search.core.evaluation import get_evaluator


@pytest.mark.parametrize(
    "name, metric", [("gsm8k", "accuracy"), ("math", "accuracy"), ("ifeval", "prompt_strict_accuracy")]
)
def test_known_names_give_their_evaluator(name, metric):
    evaluator = get_evaluator(name)
    assert (evaluator.name, evaluator.metric) == (name, metric)
    assert get_evaluator(name) is not evaluator, "each call builds a fresh evaluator"


def test_unknown_name_names_the_closest_and_all_choices():
    with pytest.raises(ConfigError, match=r"evaluator: unknown 'gsm8' .*'gsm8k'.*; choose one of .*humaneval_plus"):
        get_evaluator("gsm8")


@pytest.mark.skipif(importlib.util.find_spec("mft_search.core.evaluation.code") is None, reason="code.py not written yet")
@pytest.mark.parametrize("name", ["humaneval", "humaneval_plus"])
def test_humaneval_is_imported_on_demand(name):
    evaluator = get_evaluator(name)
    assert evaluator.name.startswith("humaneval") and evaluator.metric


@pytest.mark.parametrize(
    "block, message",
    [({"evaluator": "ifeval", "num_fewshot": 3}, "num_fewshot: ifeval is evaluated 0-shot"),
     ({"evaluator": "ifeval", "filter": "strict"}, "filter: only gsm8k"),
     ({"evaluator": "gsm8k", "fewshot_split": "test"}, "fewshot_split: 'test' is the evaluated split"),
     ({"evaluator": "gsm8k", "source": "t.jsonl", "num_fewshot": 5}, "fewshot_source: 5-shot prompts"),
     ({"evaluator": "gsm8k", "filter": ["strict", "strict"]}, "both once each"),
     ({"evaluator": "gsm8k", "use_chat_template": False, "fewshot_as_multiturn": True}, "needs the chat template"),
     ({"evaluator": "humaneval", "num_samples": 5}, "temperature: 5 greedy samples"),
     ({"evaluator": "humaneval", "num_samples": 5, "temperature": 0.8, "pass_k": [10]}, "pass_k: \\[10\\]"),
     ({"evaluator": "gsm8k", "temperature": 0.8}, "temperature: sampling several"),
     ({"evaluator": "gsm8k", "equivalence": "math-verify"}, "equivalence: only math")],
)
def test_eval_block_names_the_field_and_the_fix(block, message):
    from pydantic import ValidationError

    from mft_search.core.evaluation.spec import EvalSpec

    with pytest.raises(ValidationError, match=message):
        EvalSpec(**block)


def test_eval_block_presets_and_round_trip():
    from mft_search.core.evaluation.spec import EvalSpec

    olmes = EvalSpec(evaluator="gsm8k", preset="olmes-paper")
    assert (olmes.shots(), olmes.filters(), olmes.generation().fewshot_as_multiturn) == (8, ("flexible", "strict"), True)
    flexible = EvalSpec(evaluator="gsm8k", filter="flexible")
    assert flexible.filters() == ("flexible",) and flexible.make_evaluator().filters == ("flexible",)
    local = EvalSpec(evaluator="gsm8k", source="t.jsonl")  # the preset's shots are on the hub: 0-shot, said so
    assert local.shots() == 0 and EvalSpec.model_validate_json(local.model_dump_json()) == local
