"""What one trial runs: a `TrialJob`, built by the sweep, read by every rank.

A job is MFT (learn a mask), FFT (train the weights: the fft stage and the continued-FFT
control), LoRA (train adapters on the frozen backbone: the LoRA baseline) or evaluate (models given as `EvalVariant`s: the backbone as is, with a
random, L1 or learned mask, or other weights). Also here: where a job writes the artefact of
each evaluation point inside its artifact directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mft_search.core.backbone import BackboneSpec
from mft_search.core.data import DataSpec
from mft_search.core.distributed import Strategy
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.files import Location, location
from mft_search.core.masking import MaskSpec
from mft_search.train.step import TrainSettings

Kind = Literal["mft", "fft", "lora", "evaluate"]
WEIGHT_TRAINING = ("fft", "lora")  # kinds whose checkpoints at evaluation points are models
# The mask an evaluated model carries: none, a baseline's (random, l1, wanda) or a learned one;
# revert applies the learned one by setting its removed weights to the pretrained model's.
MaskSource = Literal["none", "random", "l1", "wanda", "learned", "revert"]


class Resources(BaseModel):
    """What one trial occupies (the sweep's `resources:`); Ray places each trial's workers as one group."""

    model_config = ConfigDict(extra="forbid")

    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks) per trial")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker; 0 trains on CPU")
    strategy: Strategy = Field("ddp", description="ddp replicates the backbone; fsdp shards it")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class EvalVariant(BaseModel):
    """One model to evaluate: the backbone as is, with a baseline or learned mask, or other weights."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the metrics' prefix: "<name>/metric"
    mask: MaskSource = "none"
    mask_file: str | None = None  # learned: the mask; random/l1/wanda: match its modules and counts
    weights: str | None = None  # another checkpoint of the same architecture (continued FFT)
    seed: int = 0  # random: the positions' seed; wanda: the calibration sample's (the sweep's seed)
    pretrained: BackboneSpec | None = None  # revert: the model the backbone was fine-tuned from; with
    # mask none: that model is the one scored (the fft stage's "pretrained" row)


class LoraAdapters(BaseModel):
    """A lora job's adapters (core.lora.LoraSpec): rank, alpha (update scaled by alpha / rank), dropout."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1, description="adapter rank r")
    alpha: float = Field(32.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")


class TrialJob(BaseModel):
    """Everything one trial needs; built by the sweep from the config and the sampled point."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    backbone: BackboneSpec
    data: DataSpec | None = None  # SFT data (mft/fft); its validation carve-out gives val_loss
    evaluation: EvalSpec | None = None  # the domain metric; None makes -val_loss the metric
    guards: dict[str, EvalSpec] = {}  # mft: other benchmarks scored at every evaluation point, by metric key
    # Rung-wise validation (search.asha.validation_subset): report number -> fraction of the
    # validation benchmark's items that report scores, a subset seeded by validation_subset_seed
    # (the same items in every trial, each rung's a superset of the last's). Other reports, and a
    # trial's last, score every item: selection ranks those only.
    validation_subsets: dict[int, float] = {}
    validation_subset_seed: int = 0
    mask: MaskSpec | None = None  # mft; for random/l1 without a mask file, the modules and ratio
    variants: list[EvalVariant] = []  # evaluate: the models to score, one after another
    calibration: DataSpec | None = None  # evaluate: SFT data whose training split calibrates wanda
    lora: LoraAdapters | None = None  # lora: the adapters trained on the frozen backbone
    train: TrainSettings = TrainSettings()
    strategy: Strategy = "ddp"
    cache_dir: str  # tokenised data, shared by all trials of a sweep
    artifact_dir: str  # masks (mft) or weights (fft) at every evaluation point


ITEMS_FILE = "items.json"  # in an evaluate job's checkpoint: {variant: ItemScores as a dict}


def report_artifact(artifact_dir: str | Location, report: int) -> Location:
    """Where a job writes its FFT checkpoint of evaluation point `report` (a directory)."""
    return location(artifact_dir) / f"report_{report:03d}"


def mask_artifact(artifact_dir: str | Location, report: int) -> Location:
    """Where a job writes its mask file of evaluation point `report`."""
    return location(artifact_dir) / f"report_{report:03d}.mask.safetensors"
