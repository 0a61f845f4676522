"""Benchmark evaluators behind one registry.

>>> from mft_search.core.evaluation import get_evaluator
>>> get_evaluator("gsm8k").metric
'accuracy'

Each evaluator module is imported on demand, so a benchmark whose dependencies are missing
(HumanEval's sandbox, IFEval's checkers) breaks only itself. Validation loss
(`mft_search.core.evaluation.loss.evaluate_loss`) is not here: it scores tokenised batches, not
generated answers, and lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mft_search.core.evaluation.base import Evaluator, GenerationSettings, Problem, Scores, rank_and_world
from mft_search.errors import ConfigError, did_you_mean


def _gsm8k(**options: Any) -> Evaluator:
    from mft_search.core.evaluation.math import GSM8KEvaluator

    return GSM8KEvaluator(**options)


def _math(**options: Any) -> Evaluator:
    from mft_search.core.evaluation.math import MATHEvaluator

    return MATHEvaluator(**options)


def _ifeval(**options: Any) -> Evaluator:
    from mft_search.core.evaluation.instruction import IFEvalEvaluator

    return IFEvalEvaluator(**options)


def _humaneval(plus: bool) -> Callable[..., Evaluator]:
    def make(**options: Any) -> Evaluator:
        from mft_search.core.evaluation.code import HumanEvalEvaluator

        return HumanEvalEvaluator(plus=plus, **options)

    return make


EVALUATORS: dict[str, Callable[..., Evaluator]] = {
    "gsm8k": _gsm8k,
    "math": _math,
    "ifeval": _ifeval,
    "humaneval": _humaneval(plus=False),
    "humaneval_plus": _humaneval(plus=True),
}


def get_evaluator(name: str, **options: Any) -> Evaluator:
    """A fresh evaluator for benchmark `name` (one of `EVALUATORS`), built with `options`
    (`EvalSpec.evaluator_options()`; none: the benchmark's lm-eval defaults)."""
    if name not in EVALUATORS:
        choices = ", ".join(sorted(EVALUATORS))
        raise ConfigError(f"evaluator: unknown '{name}'{did_you_mean(name, EVALUATORS)}; choose one of {choices}")
    return EVALUATORS[name](**options)


__all__ = ["EVALUATORS", "Evaluator", "GenerationSettings", "Problem", "Scores", "get_evaluator", "rank_and_world"]
