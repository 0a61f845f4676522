"""GSM8K and MATH scoring: extraction, normalisation, equivalence, and an end-to-end run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mft_search.errors import DataError
from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.math import (
    GSM8KEvaluator,
    MATHEvaluator,
    gsm8k_filter,
    gsm8k_reference,
    last_boxed,
    math_equivalent,
    score_gsm8k,
)
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from real_data import GSM8K, absent


def _gsm8k(split: str) -> Path:
    """A real GSM8K file, for the tests about its contents (its size, its calculator notes)."""
    path = GSM8K / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(absent(path, "GSM8K"))
    return path


@pytest.fixture(scope="module")
def test_answers() -> list[str]:
    with _gsm8k("test").open() as f:
        return [json.loads(line)["answer"] for line in f]


def test_gsm8k_references_match_themselves(test_answers):
    assert len(test_answers) == 1319
    assert all(score_gsm8k(a, a, "strict") == 1.0 for a in test_answers)
    assert all(score_gsm8k(a, a, "flexible") == 1.0 for a in test_answers)


def test_gsm8k_shuffled_references_rarely_match(test_answers):
    shuffled = test_answers[:]
    random.Random(0).shuffle(shuffled)
    hits = sum(score_gsm8k(a, r, "strict") for a, r in zip(shuffled, test_answers))
    assert hits / len(test_answers) < 0.02


@pytest.mark.parametrize(
    "output, strict, flexible",
    [("so #### 18", 1, 1), ("#### $18", 0, 1), ("####18", 0, 1), ("#### 18.00", 0, 0), ("#### 018", 0, 0),
     ("#### 1,8", 1, 1), ("#### 18.", 1, 1), ("#### 18 then 7", 1, 0), ("#### 18\n#### 7", 1, 0),
     ("The answer is 18.", 0, 1), ("no digits", 0, 0)],
)
def test_gsm8k_is_as_strict_as_lm_eval(output, strict, flexible):
    """lm-eval's rules, not a lenient normaliser: "$18" and "####18" fail strict, 18.00 fails both."""
    answer = "Two steps: 9 * 2 = <<9*2=18>>18.\n#### 18"
    assert (score_gsm8k(output, answer, "strict"), score_gsm8k(output, answer, "flexible")) == (strict, flexible)


def test_gsm8k_filters_and_reference():
    text = "She pays $1,200 in May and 300 in June.\n#### 1,500.\nQuestion: next"
    assert gsm8k_filter(text, "strict") == "1,500."
    assert gsm8k_filter("It costs 3 then 4.5, so 7.50 in all.", "flexible") == "7.50"
    assert gsm8k_filter("The answer is 12.", "strict") == "[invalid]"
    assert gsm8k_reference("a\n#### 1,500") == "1500"
    with pytest.raises(DataError, match="####"):
        gsm8k_reference("no marker 5")


@pytest.mark.parametrize(
    "text, expected",
    [(r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"), (r"\boxed{1} then \boxed{a{b}c}", "a{b}c"),
     (r"\fbox{5}", "5"), (r"$\boxed 7$", "7"), ("no box", None), (r"\boxed{unclosed", None)],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "prediction, reference",
    [("0.5", r"\frac{1}{2}"), (r"\frac12", r"\frac{1}{2}"), (r"\dfrac{3}{4}", r"\tfrac34"), ("1/2", r"\frac{1}{2}"),
     (r"\left( 3, 4 \right)", "(3,4)"), (r"5\text{ cm}", "5"), ("x = 3", "3"), (r"90^\circ", "90"),
     (r"10\%", "10"), (r"\text{(A)}", "(A)"), (".5", "0.5"), (r"\sqrt2", r"\sqrt{2}"), (r"\frac{2}{4}", "0.5"),
     (r"\$5", "5"), ("1,000", "1000"), (r"-\frac{1}{3}", r"\frac{-1}{3}")],
)
def test_math_equivalent(prediction, reference):
    assert math_equivalent(prediction, reference)


@pytest.mark.parametrize(
    "prediction, reference",
    [("3", "4"), (r"\frac{1}{3}", "0.33"), (r"\sqrt{2}", "2"), ("(3,4)", "(4,3)"), (None, "1"), (r"\frac{1}{0}", "1")],
)
def test_math_not_equivalent(prediction, reference):
    assert not math_equivalent(prediction, reference)


def test_math_loads_boxed_reference(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": "1+1?", "solution": r"It is $\boxed{2}$."},
        {"problem": "Half?", "solution": r"$\boxed{\frac12}$"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = MATHEvaluator().load(str(path))
    assert [p.reference for p in problems] == ["2", r"\frac12"]
    assert "1+1?" in problems[0].prompt and "\\boxed{}" in problems[0].prompt


def test_gsm8k_fewshot_prompt_is_lm_evals_format():
    """The answers whole, calculator notes kept, as lm-eval's doc_to_target gives them; a fresh
    draw per problem from one seeded stream, the same for a prefix whatever the limit."""
    evaluator = GSM8KEvaluator(num_fewshot=2, fewshot_source=str(_gsm8k("train")))
    problems = evaluator.load(str(_gsm8k("test")), limit=3)
    assert len(problems) == 3
    assert problems[0].prompt.count("Question:") == 3 and "<<" in problems[0].prompt
    assert problems[0].prompt.endswith("\nAnswer:") and problems[0].prompt.split("Question:")[1] != problems[1].prompt.split("Question:")[1]
    assert [t["role"] for t in problems[0].turns] == ["user", "assistant", "user", "assistant", "user"]
    assert evaluator.load(str(_gsm8k("test")), limit=2)[1].prompt == problems[1].prompt


def test_gsm8k_end_to_end_on_a_tiny_model(problems_dir):
    evaluator = GSM8KEvaluator(num_fewshot=0)
    problems = evaluator.load(str(problems_dir / "test.jsonl"), limit=8)
    settings = GenerationSettings(max_new_tokens=16, batch_size=4)
    result = evaluator.evaluate(tiny_llama(layers=2), tiny_tokenizer(), problems, settings)
    assert set(result.metrics) == {"accuracy", "accuracy_strict", "accuracy_flexible"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.metrics[evaluator.metric] == result.metrics["accuracy_strict"]
    assert [i for i, _ in result.items] == [p.id for p in problems]
    assert sum(s for _, s in result.items) / 8 == result.metrics["accuracy"]
    assert result.settings.startswith("GSM8K test.jsonl, 0-shot, strict (flexible also reported), lm-eval gsm8k v3")


def test_gsm8k_flexible_first_selects(problems_dir):
    evaluator = GSM8KEvaluator(num_fewshot=0, filters=("flexible",))
    problems = evaluator.load(str(problems_dir / "test.jsonl"), limit=2)
    scores = evaluator.score(problems, [["#### 0 so 1"], [problems[1].reference]])
    assert scores[1] == {"accuracy": 1.0, "accuracy_flexible": 1.0}


# Equivalent MATH answers, written for the choice of backend: (prediction, reference).
EQUIVALENT = [
    (r"\frac{1}{2}", "0.5"), (r"\frac12", r"\dfrac{1}{2}"), (r"2\sqrt{2}", r"\sqrt{8}"), (r"x^2+2x+1", r"(x+1)^2"),
    (r"\{1,2\}", r"\{2,1\}"), (r"\pi/2", r"\frac{\pi}{2}"), ("3.0", "3"), (r"10\%", "10"),
    (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"), ("x=5", "5"), (r"5 \text{ cm}", "5"), (r"\$18", "18"),
    ("1000", "1,000"), ("2^{10}", "1024"), (r"\frac{2}{4}", r"\frac{1}{2}"), (r"-\frac{1}{3}", r"\frac{-1}{3}"),
    ("a+b", "b+a"), (r"90^\circ", "90"), (r"6\sqrt{3}", r"\sqrt{108}"), (r"\infty", r"\infty"),
]
DIFFERENT = [("2", "3"), (r"\sqrt{2}", "2"), (r"\frac{1}{3}", "0.33"), ("x+1", "x-1"), (r"\{1,2\}", r"\{1,3\}"),
             ("(1,2)", "[1,2]")]


def test_math_verify_beats_the_normaliser_on_equivalent_answers():
    pytest.importorskip("math_verify")
    from mft_search.core.evaluation.math import equivalence_backend

    verify = equivalence_backend("math-verify")
    by_verify = sum(verify(a, b) for a, b in EQUIVALENT)
    by_normaliser = sum(math_equivalent(a, b) for a, b in EQUIVALENT)
    assert by_verify == len(EQUIVALENT) and by_normaliser == 12
    assert not any(verify(a, b) or math_equivalent(a, b) for a, b in DIFFERENT)
    assert not verify(None, "2")
    assert MATHEvaluator(equivalence="math-verify").score([_math_problem("2")], [[r"so \boxed{\sqrt{4}}"]]) == [
        {"accuracy": 1.0}]


def _math_problem(reference: str):
    from mft_search.core.evaluation.base import Problem

    return Problem(id="0", prompt="", reference=reference)
