"""Keeping training and evaluation sets apart: a hash of each prompt, and a refusal when two sets share one.

A prompt's fingerprint is the sha256 of its text after Unicode NFC normalisation, with every run
of whitespace (spaces, tabs, newlines) collapsed to one space and the ends stripped: a problem
re-wrapped or re-indented in another copy of a dataset is still the same problem. Case and
punctuation are kept; they can change what is asked.

    train = prompt_fingerprints(ex["prompt"] for ex in training_examples)   # 32 bytes a prompt
    check_disjoint({"train": train, "validation": val_prompts, "test": test_prompts})
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping

from mft_search.errors import DataError

EXAMPLE_CHARS = 80  # how much of a shared prompt the error quotes


class Fingerprints(frozenset):
    """The fingerprints of one set's prompts: what check_disjoint compares, without the texts."""


def normalise(text: str) -> str:
    """The text that is hashed: NFC, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def prompt_fingerprint(text: str) -> bytes:
    """The sha256 digest of the normalised prompt (bytes: half the memory of its hex)."""
    return hashlib.sha256(normalise(text).encode("utf-8")).digest()


def prompt_fingerprints(texts: Iterable[str], name: str = "prompts") -> Fingerprints:
    """The fingerprint set of `texts` (read once, so a generator over a large set will do)."""
    return Fingerprints(prompt_fingerprint(_text(text, name, i)) for i, text in enumerate(texts))


def check_disjoint(sets: Mapping[str, Iterable[str] | Fingerprints]) -> None:
    """Refuse (DataError) any two of `sets` (name -> prompts, or their Fingerprints) that share a
    prompt. Texts are read once; only the fingerprints of sets already read are held, and the
    first shared text of each pair is kept to quote."""
    seen: dict[str, Fingerprints] = {n: s for n, s in sets.items() if isinstance(s, Fingerprints)}
    examples: dict[frozenset[str], str] = {}
    for name, texts in sets.items():
        if not isinstance(texts, Fingerprints):
            seen[name] = _read(name, texts, seen, examples)
    order = list(sets)  # report pairs in the caller's order of the sets
    shared = [(a, b, len(seen[a] & seen[b])) for i, a in enumerate(order) for b in order[i + 1:]]
    shared = [(a, b, n) for a, b, n in shared if n]
    if shared:
        raise DataError(_message(shared, examples))


def _read(name: str, texts: Iterable[str], seen: Mapping[str, Fingerprints],
          examples: dict[frozenset[str], str]) -> Fingerprints:
    """The fingerprints of one set's texts, noting the first text it shares with each set in `seen`."""
    own: set[bytes] = set()
    for i, text in enumerate(texts):
        digest = prompt_fingerprint(_text(text, name, i))
        for other, prints in seen.items():
            if digest in prints:
                examples.setdefault(frozenset((name, other)), text)
        own.add(digest)
    return Fingerprints(own)


def _text(text: object, name: str, index: int) -> str:
    if not isinstance(text, str):
        raise DataError(f"{name}: prompt {index} is {type(text).__name__}, not text; map the prompt field to a "
                        "column of strings")
    return text


def _message(shared: list[tuple[str, str, int]], examples: Mapping[frozenset[str], str]) -> str:
    a, b, n = shared[0]
    example = examples.get(frozenset((a, b)))
    quoted = f", e.g. {_truncate(normalise(example))!r}" if example is not None else ""
    message = (f"'{a}' and '{b}' share {n} prompt{'s' if n != 1 else ''} (same sha256 of the whitespace-"
               f"collapsed text){quoted}; take them from different splits or sources, or remove the shared "
               f"prompts from one of them")
    if len(shared) > 1:
        message += "; also overlapping: " + ", ".join(f"'{x}' and '{y}' ({m})" for x, y, m in shared[1:])
    return message


def _truncate(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 3] + "..."
