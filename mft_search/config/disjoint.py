"""Held-out data kept apart: a domain's training prompts, FFT-selection problems (with the fft
stage), validation problems and test problems must not share a prompt (core.data.overlap compares sha256 digests of the normalised text).

Checked before any trial on the sets that are local files; hub sources are left out (checking
them would download them on the driver before the run), and a validation carve-out of the
training source is disjoint from what trains by construction.
"""

from __future__ import annotations

from mft_search.core.data import load_examples
from mft_search.core.data.load import local_files
from mft_search.core.data.overlap import check_disjoint
from mft_search.core.evaluation.records import benchmark_questions, is_local
from mft_search.errors import DataError


def check_splits_disjoint(cfg) -> None:
    """DataError naming the domain and the two sets when they share a prompt."""
    for i, domain in enumerate(cfg.domains):
        sets = {}
        if local_files(domain.train.source) is not None:
            sets["train"] = training_prompts(domain.train)
        for name in ("fft_selection", "validation", "test"):
            spec = getattr(domain, name)
            if spec is not None and spec.source is not None and is_local(spec.source):
                sets[name] = benchmark_questions(spec.evaluator, spec.source, spec.split, spec.limit)
        try:
            check_disjoint(sets)
        except DataError as exc:
            raise DataError(f"domains[{i}] ({domain.name}): {exc}") from None


def training_prompts(spec) -> list[str]:
    """The prompt text of every training example: the prompt field, or a conversation's earlier
    turns joined (what the model is asked, not what it answers)."""
    rows = load_examples(spec)
    if spec.prompt_field is not None:
        return [str(p) for p in rows[spec.prompt_field]]
    return ["\n".join(m["content"] for m in messages[:-1]) for messages in rows[spec.messages_field]]
