"""The demo's synthetic domain: seeded add/subtract word problems with GSM8K-style answers.

    rng = random.Random(0)
    p = word_problem(rng, steps=3, phrasings=TRAIN_PHRASINGS)
    p.question  # "Ava has 12 shells. Ben gives Ava 7 more shells. Ava loses 5 shells. How many ..."
    p.answer    # " Ava has 12 shells. 12 + 7 = 19. 19 - 5 = 14. #### 14"

Training problems use fewer steps and fewer phrasings than validation and test problems, so
that fine-tuning too long on them specialises the model away from what it is judged on: the
overfitting peak an honest MFT demo needs (docs/design.md, "The embedded demo"). The pre-training
corpus uses every phrasing and length, so the skill exists before fine-tuning narrows it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Ava", "Ben", "Cal", "Dora", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Max", "Nia",
         "Omar", "Pia", "Ray", "Sara", "Tom", "Uma")
ITEMS = ("apples", "shells", "coins", "books", "marbles", "stamps", "pens", "cards", "eggs", "beads", "cups",
         "kites")

# Each phrasing is (text, sign); {name} owns the items, {other} is someone else.
Phrasing = tuple[str, int]
TRAIN_PHRASINGS: tuple[Phrasing, ...] = (
    ("{other} gives {name} {n} more {item}.", +1),
    ("{name} buys {n} more {item}.", +1),
    ("{name} gives {n} {item} to {other}.", -1),
    ("{name} loses {n} {item}.", -1),
)
OTHER_PHRASINGS: tuple[Phrasing, ...] = (
    ("{name} finds {n} {item}.", +1),
    ("{other} hands {name} another {n} {item}.", +1),
    ("{name} sells {n} {item}.", -1),
    ("{other} takes {n} {item} from {name}.", -1),
)
ALL_PHRASINGS = TRAIN_PHRASINGS + OTHER_PHRASINGS
MAX_VALUE = 60  # small two-digit totals and changes: learnable by a 1M-parameter model in minutes
MAX_CHANGE = 12


@dataclass(frozen=True)
class WordProblem:
    """One problem: the story, its question, the worked steps and the result."""

    story: list[str]  # first sentence states the start; one sentence per step
    item: str
    name: str
    steps: list[tuple[int, int, int]]  # (before, signed change, after)

    @property
    def value(self) -> int:
        return self.steps[-1][2]

    @property
    def question(self) -> str:
        return " ".join(self.story) + f" How many {self.item} does {self.name} have now?"

    @property
    def answer(self) -> str:
        """Worked answer, leading space included: prompt + answer tokenise as at evaluation."""
        work = " ".join(f"{a} {'+' if d > 0 else '-'} {abs(d)} = {b}." for a, d, b in self.steps)
        return f" {self.name} has {self.steps[0][0]} {self.item}. {work} #### {self.value}"

    def record(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def word_problem(rng: random.Random, steps: int, phrasings: tuple[Phrasing, ...]) -> WordProblem:
    """A problem with `steps` changes whose running total stays within 0..MAX_VALUE."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    total = rng.randint(2, MAX_VALUE - MAX_CHANGE)
    story = [f"{name} has {total} {item}."]
    worked = []
    for _ in range(steps):
        text, sign = rng.choice(phrasings)
        room = MAX_VALUE - total if sign > 0 else total
        if room < 1:  # cannot move this way: flip to the other direction's phrasings
            text, sign = rng.choice([p for p in phrasings if p[1] == -sign])
            room = MAX_VALUE - total if sign > 0 else total
        n = rng.randint(1, min(room, MAX_CHANGE))
        story.append(text.format(name=name, other=other, n=n, item=item))
        worked.append((total, sign * n, total + sign * n))
        total += sign * n
    return WordProblem(story, item, name, worked)


def unique_problems(rng: random.Random, count: int, steps: tuple[int, ...], phrasings: tuple[Phrasing, ...],
                    exclude: set[str]) -> list[WordProblem]:
    """`count` problems whose questions are new (not in `exclude`, which grows with them)."""
    out: list[WordProblem] = []
    while len(out) < count:
        problem = word_problem(rng, rng.choice(steps), phrasings)
        if problem.question not in exclude:
            exclude.add(problem.question)
            out.append(problem)
    return out


@dataclass(frozen=True)
class Splits:
    train: list[WordProblem]
    fft_selection: list[WordProblem]
    validation: list[WordProblem]
    test: list[WordProblem]
    instruct: list[WordProblem]


def make_splits(seed: int, train: int, fft_selection: int, validation: int, test: int, instruct: int = 0) -> Splits:
    """Disjoint splits: narrow training problems (2 steps, half the phrasings), broad held-out ones
    (2-3, all) for each of FFT selection, mask selection and test, and broad instruction-tuning
    problems (1-3 steps, all phrasings). The instruction split is drawn last, so the others are the
    same with it or without it."""
    rng = random.Random(seed)
    seen: set[str] = set()
    return Splits(
        train=unique_problems(rng, train, (2,), TRAIN_PHRASINGS, seen),
        fft_selection=unique_problems(rng, fft_selection, (2, 3), ALL_PHRASINGS, seen),
        validation=unique_problems(rng, validation, (2, 3), ALL_PHRASINGS, seen),
        test=unique_problems(rng, test, (2, 3), ALL_PHRASINGS, seen),
        instruct=unique_problems(rng, instruct, (1, 2, 3), ALL_PHRASINGS, seen),
    )


def pretraining_document(rng: random.Random) -> str:
    """Plain text that teaches reading numbers off a story and adding them up, in no Q/A format.

    Without documents that copy numbers from the text the model never got past 25% (docs/design.md).
    """
    kind = rng.random()
    if kind < 0.15:  # bare arithmetic facts
        facts = []
        for _ in range(4):
            a, b = rng.randint(MAX_CHANGE, MAX_VALUE), rng.randint(1, MAX_CHANGE)
            facts.append(f"{a} - {b} = {a - b}." if rng.random() < 0.5 else f"{a - b} + {b} = {a}.")
        return " ".join(facts)
    problem = word_problem(rng, rng.randint(1, 3), ALL_PHRASINGS)
    if kind < 0.4:  # the computation inline, sentence by sentence
        inline = [problem.story[0]]
        for sentence, (a, d, b) in zip(problem.story[1:], problem.steps):
            inline.append(f"{sentence} Now {problem.name} has {a} {'+' if d > 0 else '-'} {abs(d)} = {b} {problem.item}.")
        return " ".join(inline)
    work = " ".join(f"{a} {'+' if d > 0 else '-'} {abs(d)} = {b}." for a, d, b in problem.steps)
    return " ".join(problem.story) + f" So {work} In the end {problem.name} has {problem.value} {problem.item}."


def pretraining_corpus(seed: int, documents: int) -> list[str]:
    rng = random.Random(seed)
    return [pretraining_document(rng) for _ in range(documents)]
