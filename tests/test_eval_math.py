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
    extract_gsm8k_flexible,
    extract_gsm8k_strict,
    gsm8k_reference,
    last_boxed,
    math_equivalent,
    normalize_number,
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
    refs = [gsm8k_reference(a) for a in test_answers]
    assert all(extract_gsm8k_strict(a) == r for a, r in zip(test_answers, refs))
    assert all(extract_gsm8k_flexible(a) == r for a, r in zip(test_answers, refs))


def test_gsm8k_shuffled_references_rarely_match(test_answers):
    refs = [gsm8k_reference(a) for a in test_answers]
    shuffled = test_answers[:]
    random.Random(0).shuffle(shuffled)
    hits = sum(extract_gsm8k_strict(a) == r for a, r in zip(shuffled, refs))
    assert hits / len(refs) < 0.02


@pytest.mark.parametrize(
    "raw, expected",
    [("$1,200", "1200"), ("1,200.00", "1200"), ("12.0", "12"), ("12.", "12"), ("-0", "0"), ("-0.0", "0"),
     ("0.50", "0.5"), ("-7", "-7"), (" 42 ", "42"), ("seven", "seven")],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_gsm8k_extraction_strict_and_flexible():
    text = "She pays $1,200 in May and 300 in June.\n#### $1,500.\nQuestion: next"
    assert extract_gsm8k_strict(text) == "1500"
    assert extract_gsm8k_flexible("It costs 3 then 4.5, so 7.50 in all.") == "7.5"
    assert extract_gsm8k_strict("The answer is 12.") is None
    assert extract_gsm8k_flexible("no digits") is None
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


def test_gsm8k_fewshot_prompt_strips_calculator_notes():
    problems = GSM8KEvaluator(num_fewshot=2, fewshot_source=str(_gsm8k("train"))).load(str(_gsm8k("test")), limit=3)
    assert len(problems) == 3
    assert problems[0].prompt.count("Question:") == 3 and "<<" not in problems[0].prompt
    assert problems[0].prompt.endswith("\nAnswer:")


def test_gsm8k_end_to_end_on_a_tiny_model(problems_dir):
    evaluator = GSM8KEvaluator()
    problems = evaluator.load(str(problems_dir / "test.jsonl"), limit=8)
    settings = GenerationSettings(max_new_tokens=16, batch_size=4)
    result = evaluator.evaluate(tiny_llama(layers=2), tiny_tokenizer(), problems, settings)
    assert set(result) == {"accuracy", "accuracy_strict", "accuracy_flexible"}
    assert all(0.0 <= v <= 1.0 for v in result.values())
    assert result[evaluator.metric] == result["accuracy_strict"]
