"""GSM8K and MATH: answer extraction, normalisation and exact-match scoring.

GSM8K is scored exactly as lm-eval's gsm8k v3 task scores it: "strict" takes the first number
after "#### " (the format the fine-tuning data teaches), "flexible" the last number-like run
anywhere in the completion; both are compared with the reference after lm-eval's
regexes_to_ignore. MATH answers are LaTeX in
`\\boxed{}`: both sides are normalised (Hendrycks et al.'s `strip_string` rules) and compared as
strings, then as exact rationals when both are plain numbers (0.5 == \\frac{1}{2}).

No symbolic algebra: sympy's `parse_expr` evaluates Python, and `parse_latex` needs antlr4;
neither is safe or dependable on arbitrary model output.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Sequence
from fractions import Fraction

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mft_search.core.evaluation.base import GenerationSettings, Problem, Scores
from mft_search.core.evaluation.conventions import GSM8K_STOP, MATH_STOP
from mft_search.core.evaluation.generate import generate_and_score, uses_chat
from mft_search.core.evaluation.records import data_label, load_benchmark, load_records
from mft_search.errors import ConfigError, DataError

# ---------------------------------------------------------------- GSM8K answers
# lm-eval's gsm8k task, version 3 (lm_eval/tasks/gsm8k/gsm8k.yaml): two regex filters, each
# followed by take_first, then exact_match with ignore_case and these regexes_to_ignore applied,
# in order, to both the filtered output and the reference (the whole `answer` field).
# tests/test_lm_eval_parity.py scores the same outputs with lm-eval's own classes.

GSM8K_RULES = "lm-eval gsm8k v3"
GSM8K_FILTERS = {
    "strict": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),  # the first "#### N"
    "flexible": (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1),  # the last number-like run
}
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"  # lm-eval's fallback when a filter finds nothing


def gsm8k_filter(output: str, name: str) -> str:
    """What lm-eval's `name` filter ("strict" or "flexible") extracts from `output`; "[invalid]"
    when it finds nothing."""
    pattern, select = GSM8K_FILTERS[name]
    matches = pattern.findall(output)
    if not matches:
        return INVALID
    match = matches[select]
    if isinstance(match, tuple):  # several groups: the first non-empty one
        match = next((m for m in match if m), INVALID)
    return match.strip()


def _ignore(text: str) -> str:
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_exact_match(prediction: str, answer: str) -> bool:
    """lm-eval's exact_match of a filtered prediction against a GSM8K `answer` field."""
    return _ignore(prediction) == _ignore(answer)


def score_gsm8k(output: str, answer: str, name: str) -> float:
    """1.0 when `output` (a completion) answers `answer` (GSM8K's "... #### 72") under filter
    `name` ("strict" or "flexible"), as lm-eval's gsm8k v3 scores it; else 0.0."""
    return float(gsm8k_exact_match(gsm8k_filter(output, name), answer))


def gsm8k_reference(answer: str) -> str:
    """The gold number of a GSM8K `answer` field ("... #### 72" -> "72"), as exact_match sees it."""
    if "#### " not in answer:
        raise DataError(f"gsm8k answer field lacks '#### N': {answer[-60:]!r}; use the GSM8K release format")
    return _ignore(answer).strip()


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

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


class GSM8KEvaluator:
    """GSM8K exact match, as lm-eval's gsm8k v3 task builds its prompts and scores them.

    `num_fewshot` examples precede each question, drawn as lm-eval draws them: one
    `random.Random(fewshot_seed)` stream, `sample(train, k)` per test problem in order (so the
    first N problems get the same examples whatever `limit` is). `filters` are reported as
    `accuracy_<filter>`; the first one is also `accuracy`, the selecting metric.
    """

    name = "gsm8k"
    metric = "accuracy"

    def __init__(self, num_fewshot: int = 5, fewshot_source: str | None = None, fewshot_split: str = "train",
                 filters: Sequence[str] = ("strict", "flexible"), fewshot_seed: int = FEWSHOT_SEED):
        unknown = [f for f in filters if f not in GSM8K_FILTERS]
        if unknown or not filters:
            raise ConfigError(f"evaluation filter: {unknown or 'none'} given; choose strict, flexible or both")
        self.num_fewshot, self.fewshot_source, self.fewshot_split = num_fewshot, fewshot_source, fewshot_split
        self.filters, self.fewshot_seed = tuple(filters), fewshot_seed
        self.data = "test"

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        rows = load_benchmark("gsm8k", source, ("question", "answer"), split, limit)
        for row in rows:
            gsm8k_reference(row["answer"])  # every reference has its "#### N"
        self.data = data_label("gsm8k", source, split)
        shots = self._fewshot_rows()
        rnd = random.Random(self.fewshot_seed)
        problems = []
        for i, row in enumerate(rows):
            drawn = rnd.sample(shots, self.num_fewshot) if self.num_fewshot else []
            prompt, turns = gsm8k_prompt(row["question"], drawn)
            problems.append(Problem(id=str(i), prompt=prompt, reference=row["answer"], turns=turns))
        return problems

    def _fewshot_rows(self) -> list[dict]:
        if self.num_fewshot == 0:
            return []
        rows = load_records(self.fewshot_source or "openai/gsm8k", ("question", "answer"), self.fewshot_split, "main")
        if len(rows) < self.num_fewshot:
            raise DataError(f"evaluation fewshot_source: {len(rows)} examples, fewer than num_fewshot "
                            f"{self.num_fewshot}; lower num_fewshot or give the GSM8K train split")
        return rows

    def label(self, settings: GenerationSettings, tokenizer: PreTrainedTokenizerBase) -> str:
        filters = self.filters[0] + "".join(f" ({f} also reported)" for f in self.filters[1:])
        return f"GSM8K {self.data}, {fewshot_label(self.num_fewshot, settings, tokenizer)}, {filters}, {GSM8K_RULES} rules"

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> Scores:
        settings = dataclasses.replace(settings, stop=settings.stop or GSM8K_STOP)
        return generate_and_score(model, tokenizer, problems, settings, self.score, "accuracy",
                                  self.label(settings, tokenizer))

    def score(self, problems: Sequence[Problem], completions: list[list[str]]) -> list[dict[str, float]]:
        """Per problem: `accuracy_<filter>` for each filter, and `accuracy` (the first)."""
        out = []
        for problem, (completion, *_) in zip(problems, completions):
            item = {f"accuracy_{f}": score_gsm8k(completion, problem.reference, f) for f in self.filters}
            out.append({"accuracy": item[f"accuracy_{self.filters[0]}"], **item})
        return out


def gsm8k_prompt(question: str, shots: Sequence[dict]) -> tuple[str, tuple[dict[str, str], ...]]:
    """lm-eval's gsm8k context for `question` after `shots` (rows with question and answer),
    as one text and as chat turns: "Question: q\nAnswer: a\n\n" per shot (the answer field
    whole, calculator notes included), then "Question: q\nAnswer:"."""
    text = "".join(f"{_gsm8k_question(r['question'])} {r['answer']}\n\n" for r in shots)
    turns = [t for r in shots for t in ({"role": "user", "content": _gsm8k_question(r["question"])},
                                         {"role": "assistant", "content": r["answer"]})]
    query = _gsm8k_question(question)
    return text + query, tuple(turns + [{"role": "user", "content": query}])


def _gsm8k_question(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def fewshot_label(num_fewshot: int, settings: GenerationSettings, tokenizer: PreTrainedTokenizerBase) -> str:
    """"5-shot, chat template, few-shot as turns" and the like: how the prompt was built."""
    parts = [f"{num_fewshot}-shot"]
    if uses_chat(tokenizer, settings):
        parts.append("chat template" + (", few-shot as turns" if settings.fewshot_as_multiturn and num_fewshot else ""))
    return ", ".join(parts)


MATH_PROMPT = (
    "Problem:\n{problem}\n\nSolve the problem step by step and put the final answer in \\boxed{{}}.\n\nSolution:"
)
def equivalence_backend(name: str) -> Callable[[str | None, str], bool]:
    """The function deciding whether a predicted MATH answer equals the reference: the string
    normaliser (`math_equivalent`) or math-verify's symbolic check (`equivalence` module)."""
    if name == "normaliser":
        return math_equivalent
    if name == "math-verify":
        from mft_search.core.evaluation.equivalence import math_verify_equivalent, require_math_verify

        require_math_verify()
        return math_verify_equivalent
    raise ConfigError(f"evaluation equivalence: unknown '{name}'; choose normaliser or math-verify")


MATH_RULES = "mft math-1 (last \\boxed{}, Hendrycks normalisation, rationals)"


class MATHEvaluator:
    """MATH (Hendrycks et al.) exact match of the last \\boxed{} answer after normalisation,
    zero-shot with the project's own prompt (no lm-eval counterpart: minerva_math is 4-shot)."""

    name = "math"
    metric = "accuracy"

    def __init__(self, equivalence: str = "normaliser"):
        self.equivalent = equivalence_backend(equivalence)
        self.equivalence, self.data = equivalence, "test"

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        rows = load_benchmark("math", source, ("problem", "solution"), split, limit)
        self.data = data_label("math", source, split)
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
    ) -> Scores:
        settings = dataclasses.replace(settings, stop=settings.stop or MATH_STOP)
        label = f"MATH {self.data}, {fewshot_label(0, settings, tokenizer)}, {self.equivalence} equivalence, {MATH_RULES}"
        return generate_and_score(model, tokenizer, problems, settings, self.score, "accuracy", label)

    def score(self, problems: Sequence[Problem], completions: list[list[str]]) -> list[dict[str, float]]:
        return [{"accuracy": float(self.equivalent(last_boxed(c[0]), p.reference))} for p, c in zip(problems, completions)]
