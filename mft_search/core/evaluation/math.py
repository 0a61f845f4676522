"""GSM8K and MATH: answer extraction, normalisation and exact-match scoring.

GSM8K answers are numbers: "strict" takes the number after "#### " (the format the fine-tuning
data teaches), "flexible" the last number anywhere in the completion. MATH answers are LaTeX in
`\\boxed{}`: both sides are normalised (Hendrycks et al.'s `strip_string` rules) and compared as
strings, then as exact rationals when both are plain numbers (0.5 == \\frac{1}{2}).

No symbolic algebra: sympy's `parse_expr` evaluates Python, and `parse_latex` needs antlr4;
neither is safe or dependable on arbitrary model output.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mft_search.core.evaluation.base import GenerationSettings, Problem
from mft_search.core.evaluation.generate import generate
from mft_search.core.evaluation.records import load_benchmark, load_records
from mft_search.errors import DataError

# ---------------------------------------------------------------- GSM8K answers

_STRICT = re.compile(r"####\s*(-?[$0-9.,]*[0-9])")
_NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's "<<48/2=24>>" annotations


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: "$1,200.00" -> "1200", "-0" -> "0"; else stripped text."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return text
    if not value.is_finite():
        return text
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_strict(completion: str) -> str | None:
    """The number after the first "#### ", normalised; None when absent."""
    match = _STRICT.search(completion)
    return normalize_number(match.group(1)) if match else None


def extract_gsm8k_flexible(completion: str) -> str | None:
    """The last number in the completion, normalised; None when there is none."""
    numbers = _NUMBER.findall(completion)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_reference(answer: str) -> str:
    """The gold number of a GSM8K `answer` field ("... #### 72")."""
    if "####" not in answer:
        raise DataError(f"gsm8k answer field lacks '#### N': {answer[-60:]!r}; use the GSM8K release format")
    return normalize_number(answer.rsplit("####", 1)[1])


# ---------------------------------------------------------------- MATH answers

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}, or "\\boxed 5"), nested braces kept."""
    starts = list(_BOX.finditer(text))
    if not starts:
        return None
    pos = starts[-1].end()
    if pos >= len(text):
        return None
    if text[pos] != "{":  # "\boxed 5": the argument runs to the next "$" or whitespace
        return re.split(r"[\s$]", text[pos:], maxsplit=1)[0] or None
    depth = 0
    for i in range(pos, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[pos + 1 : i]
    return None


_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_UNITS = re.compile(r"\\(?:text|mbox)\{\s[^{}]*\}$")
_FRAC_SHORT = re.compile(r"\\frac\s*(\{[^{}]*\}|[0-9a-zA-Z])\s*(\{[^{}]*\}|[0-9a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_SLASH = re.compile(r"^(-?[0-9]+)/([0-9]+)$")


def normalize_latex(answer: str) -> str:
    """A canonical string for a MATH answer: formatting, units and spelling variants removed."""
    s = answer.strip().replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = _UNITS.sub("", s)  # "5 \text{ cm}": a unit after a space
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"^([a-zA-Z]\w?)\s*=\s*", "", s)  # "x = 5" -> "5"
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _FRAC_SHORT.sub(lambda m: "\\frac" + "".join(_braced(g) for g in m.groups()), s)
    s = _SLASH.sub(r"\\frac{\1}{\2}", s)
    s = re.sub(r"(^|[^0-9])\.([0-9])", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    return s.rstrip(".")


def _braced(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"


_RATIONAL = re.compile(r"^(-?)\\frac\{(-?[0-9]+)\}\{([0-9]+)\}$")


def _as_rational(s: str) -> Fraction | None:
    """The exact value of an integer, decimal or \\frac{a}{b}; None for anything else."""
    match = _RATIONAL.match(s)
    try:
        if match:
            sign = -1 if match.group(1) else 1
            return sign * Fraction(int(match.group(2)), int(match.group(3)))
        if re.fullmatch(r"-?[0-9,]*\.?[0-9]+", s):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def math_equivalent(prediction: str | None, reference: str) -> bool:
    """Whether two MATH answers agree after normalisation (exactly, or as rational numbers)."""
    if prediction is None:
        return False
    a, b = normalize_latex(prediction), normalize_latex(reference)
    if a == b:
        return True
    x, y = _as_rational(a), _as_rational(b)
    return x is not None and x == y


# ---------------------------------------------------------------- evaluators

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>", "<|eot_id|>")


class GSM8KEvaluator:
    """GSM8K exact match, zero-shot or with the first `num_fewshot` training problems.

    `accuracy` is the strict "#### N" match (the format GSM8K fine-tuning data teaches) unless
    `strict=False` makes it the flexible last-number match; both are always reported too.
    """

    name = "gsm8k"
    metric = "accuracy"

    def __init__(self, num_fewshot: int = 0, fewshot_source: str | None = None, strict: bool = True):
        self.num_fewshot, self.fewshot_source, self.strict = num_fewshot, fewshot_source, strict

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        rows = load_benchmark("gsm8k", source, ("question", "answer"), split, limit)
        prefix = self._fewshot_prefix()
        return [
            Problem(id=str(i), prompt=prefix + _gsm8k_question(r["question"]), reference=gsm8k_reference(r["answer"]))
            for i, r in enumerate(rows)
        ]

    def _fewshot_prefix(self) -> str:
        if self.num_fewshot == 0:
            return ""
        rows = load_records(self.fewshot_source or "openai/gsm8k", ("question", "answer"), "train", "main")
        shots = rows[: self.num_fewshot]
        return "".join(_gsm8k_question(r["question"]) + " " + _CALCULATOR.sub("", r["answer"]) + "\n\n" for r in shots)

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> dict[str, float]:
        settings = dataclasses.replace(settings, stop=settings.stop or GSM8K_STOP)
        completions = generate(model, tokenizer, [p.prompt for p in problems], settings)
        strict = _mean([extract_gsm8k_strict(c) == p.reference for c, p in zip(completions, problems)])
        flexible = _mean([extract_gsm8k_flexible(c) == p.reference for c, p in zip(completions, problems)])
        primary = strict if self.strict else flexible
        return {"accuracy": primary, "accuracy_strict": strict, "accuracy_flexible": flexible}


def _gsm8k_question(question: str) -> str:
    return f"Question: {question}\nAnswer:"


MATH_PROMPT = (
    "Problem:\n{problem}\n\nSolve the problem step by step and put the final answer in \\boxed{{}}.\n\nSolution:"
)
MATH_STOP = ("Problem:", "</s>", "<|im_end|>", "<|eot_id|>")


class MATHEvaluator:
    """MATH (Hendrycks et al.) exact match of the last \\boxed{} answer after normalisation."""

    name = "math"
    metric = "accuracy"

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        rows = load_benchmark("math", source, ("problem", "solution"), split, limit)
        problems = []
        for i, r in enumerate(rows):
            reference = last_boxed(r["solution"])
            if reference is None:
                raise DataError(f"{source}: row {i} solution has no \\boxed{{}} answer; MATH solutions end in one")
            problems.append(Problem(id=str(i), prompt=MATH_PROMPT.format(problem=r["problem"]), reference=reference))
        return problems

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> dict[str, float]:
        settings = dataclasses.replace(settings, stop=settings.stop or MATH_STOP)
        completions = generate(model, tokenizer, [p.prompt for p in problems], settings)
        return {"accuracy": _mean([math_equivalent(last_boxed(c), p.reference) for c, p in zip(completions, problems)])}


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
