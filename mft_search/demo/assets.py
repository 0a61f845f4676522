"""What a demo build is: its size settings and where its finished files lie (no building here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mft_search.demo.pretrain import PretrainSettings

VERSION = "v3"  # bump when the recipe changes: caches of older recipes are then left alone
# v2: the build stops at the pretrained base and writes an FFT-selection split; the sweep's fft
# stage fine-tunes (v1 fine-tuned in the build and picked its epoch on the validation split).
# v3: the base is instruction-tuned on 2000 broad problems, so that the fft stage passes a peak;
# the four splits are v2's files (the instruction problems are drawn after them).
COMPLETE = ".complete"


@dataclass(frozen=True)
class DemoSize:
    """Everything that sets the build's cost; tests shrink it to build in seconds."""

    train: int = 256
    fft_selection: int = 500  # picks the FFT epoch: problems neither validation nor test holds
    validation: int = 500
    test: int = 500
    documents: int = 40_000  # pre-training documents (~65 tokens each)
    vocab_size: int = 400
    hidden: int = 128
    layers: int = 4
    intermediate: int = 384
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    # Instruction tuning after pre-training: the base fine-tuned on this many broad problems (1-3
    # steps, all phrasings), as a released instruct model is before a user's own fine-tuning; 0:
    # none. From such a base the fft stage's narrow data erodes what it does not teach (README).
    instruct: int = 2000
    instruct_epochs: int = 4
    instruct_lr: float = 1e-3
    max_new_tokens: int = 48  # the longest held-out answer is ~40 tokens (demo.yaml's evaluators)
    seed: int = 0


@dataclass(frozen=True)
class DemoAssets:
    """Paths of a finished build."""

    root: Path

    @property
    def pretrained(self) -> Path:
        return self.root / "pretrained"

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def fft_selection(self) -> Path:
        return self.root / "fft_selection.jsonl"

    @property
    def validation(self) -> Path:
        return self.root / "validation.jsonl"

    @property
    def test(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def instruct(self) -> Path:
        return self.root / "instruct.jsonl"

    @property
    def facts_path(self) -> Path:
        return self.root / "facts.json"

    def facts(self) -> dict:
        return json.loads(self.facts_path.read_text(encoding="utf-8"))


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mft_search" / "demo" / VERSION
