"""What a demo build is: its size settings and where its finished files lie (no building here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mft_search.demo.pretrain import PretrainSettings

VERSION = "v3"  # bump when the recipe changes: caches of older recipes are then left alone
# v2: the build stops at the pretrained base and writes an FFT-selection split; the sweep's fft
# stage fine-tunes (v1 fine-tuned in the build and picked its epoch on the validation split).
# v3: v2 plus train_noisy.jsonl, the training problems with label noise (DemoSize.label_noise),
# which the demo fine-tunes on; every other file is v2's recipe.
SAME_BASE = ("v2",)  # older versions whose pre-trained base is this version's recipe: reused, not rebuilt
COMPLETE = ".complete"


@dataclass(frozen=True)
class DemoSize:
    """The build's settings: all but label_noise set its cost; tests shrink them to build in seconds."""

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
    max_new_tokens: int = 48  # the longest held-out answer is ~40 tokens (demo.yaml's evaluators)
    seed: int = 0
    # train_noisy.jsonl: this fraction of the training problems get one wrong step (seeded), so
    # that fine-tuning long enough memorises wrong answers and passes a peak (README, "The FFT's
    # overfitting peak"). The base and every other file do not depend on it.
    label_noise: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"DemoSize.label_noise is {self.label_noise}: give a fraction in [0, 1)")

    def base_settings(self) -> dict:
        """What the pre-trained base depends on: every setting but the label noise."""
        settings = asdict(self)
        del settings["label_noise"]
        return settings


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
    def train_noisy(self) -> Path:
        """train.jsonl with DemoSize.label_noise of its problems given a wrong step: what the demo fine-tunes on."""
        return self.root / "train_noisy.jsonl"

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
    def facts_path(self) -> Path:
        return self.root / "facts.json"

    def facts(self) -> dict:
        return json.loads(self.facts_path.read_text(encoding="utf-8"))


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mft_search" / "demo" / VERSION
