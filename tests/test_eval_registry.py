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
