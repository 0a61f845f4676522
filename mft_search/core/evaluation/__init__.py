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

from mft_search.core.evaluation.base import Evaluator, GenerationSettings, Problem, rank_and_world
from mft_search.errors import ConfigError, did_you_mean


def _gsm8k() -> Evaluator:
    from mft_search.core.evaluation.math import GSM8KEvaluator

    return GSM8KEvaluator()


def _math() -> Evaluator:
    from mft_search.core.evaluation.math import MATHEvaluator

    return MATHEvaluator()


def _ifeval() -> Evaluator:
    from mft_search.core.evaluation.instruction import IFEvalEvaluator

    return IFEvalEvaluator()


def _humaneval(plus: bool) -> Callable[[], Evaluator]:
    def make() -> Evaluator:
        from mft_search.core.evaluation.code import HumanEvalEvaluator

        return HumanEvalEvaluator(plus=plus)

    return make


EVALUATORS: dict[str, Callable[[], Evaluator]] = {
    "gsm8k": _gsm8k,
    "math": _math,
    "ifeval": _ifeval,
    "humaneval": _humaneval(plus=False),
    "humaneval_plus": _humaneval(plus=True),
}


def get_evaluator(name: str) -> Evaluator:
    """A fresh evaluator for benchmark `name` (one of `EVALUATORS`)."""
    if name not in EVALUATORS:
        choices = ", ".join(sorted(EVALUATORS))
        raise ConfigError(f"evaluator: unknown '{name}'{did_you_mean(name, EVALUATORS)}; choose one of {choices}")
    return EVALUATORS[name]()


__all__ = ["EVALUATORS", "Evaluator", "GenerationSettings", "Problem", "get_evaluator", "rank_and_world"]
