"""A study: one (backbone, domain) pair of a sweep, the jobs its trials run, and its Optuna storage.

The Optuna study is a JournalStorage file on the driver's local disk (it appends under a file lock,
which an object store cannot do), published whole into the study's directory (a bucket or a
shared directory) after every trial and before Tune saves its searcher, and restored from there
when a stage starts: a driver lost with its disk loses at most the trials running then, which
--resume marks failed, and optuna-dashboard opens the published copy."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna

from mft_search.config.schema import DomainSpec, SweepConfig
from mft_search.core.backbone import BackboneSpec
from mft_search.core.data import DataSpec
from mft_search.core.files import Location, location
from mft_search.core.masking import MaskSpec
from mft_search.experiment import layout
from mft_search.experiment.fft_record import FftRecord
from mft_search.experiment.guards import guard_metric
from mft_search.experiment.storage import Storage
from mft_search.train.spec import Resources, TrialJob
from mft_search.tune.rungs import max_reports, validation_subsets
from mft_search.tune.sampling import params_to_trial

Stage = Literal["probe", "refine"]


@dataclass(frozen=True)
class Study:
    """One (backbone, domain) pair of a sweep and where its files go."""

    cfg: SweepConfig
    backbone: BackboneSpec
    domain: DomainSpec
    exp_dir: Location
    storage: Storage | None = None  # checked by the Recorder before it writes results
    pretrained: BackboneSpec | None = None  # what the fft stage fine-tuned `backbone` from
    fft: FftRecord | None = None  # that stage's points, when it ran

    def __post_init__(self) -> None:
        # A caller may hand a plain directory (benchmarks, tests); everything below asks a Location.
        object.__setattr__(self, "exp_dir", location(self.exp_dir))

    @property
    def name(self) -> str:
        return f"{self.backbone.label}/{self.domain.name}"

    @property
    def slug(self) -> str:
        return layout.study_slug(self.backbone.label, self.domain.name)

    @property
    def dir(self) -> Location:
        return layout.study_dir(self.exp_dir, self.slug)

    @property
    def cache_dir(self) -> Path:
        """Tokenised data (and converted GGUF backbones): in the experiment directory when it is a
        local or shared one, every trial reading the driver's; on the node's own disk when the
        experiment is in a bucket (a trial tokenises what its node lacks: the cache is keyed by
        content, so copies agree)."""
        if self.exp_dir.is_local:
            return Path(self.exp_dir.path) / layout.CACHE
        return Path.home() / ".cache" / "mft_search" / "tokenized"

    @property
    def resources(self) -> Resources:
        return self.cfg.resources

    @property
    def pretrained_backbone(self) -> BackboneSpec | None:
        """What the backbone was fine-tuned from: the fft stage's start, or backbones[].pretrained."""
        return self.pretrained or self.backbone.pretrained_spec()

    def job(self, kind: str, name: str, **fields: Any) -> TrialJob:
        """A TrialJob of this study with the sweep's shared settings filled in."""
        defaults = dict(backbone=self.backbone, evaluation=self.domain.validation, train=self.cfg.train,
                        strategy=self.cfg.resources.strategy, cache_dir=str(self.cache_dir),
                        artifact_dir=str(self.dir / layout.ARTIFACTS / name))
        return TrialJob(name=name, kind=kind, **{**defaults, **fields})

    def train_data(self, stage: Stage) -> DataSpec:
        """What a trial of `stage` trains on: the probe a fraction, refine all of it."""
        data = self.domain.train
        if stage == "probe":
            data = data.model_copy(update={"fraction": data.fraction * self.cfg.stages.probe.data_fraction})
        return data

    def mft_job(self, params: dict[str, Any], trial_id: str, stage: Stage, *, guarded: bool = True) -> TrialJob:
        """A trial's MFT job; `guarded` scores the domain's guards at every evaluation point."""
        mask_kwargs, train = params_to_trial(params, self.cfg)
        guards = {guard_metric(g.label): g.benchmark for g in self.domain.guard} if guarded else {}
        # Only the probe has ASHA: its early rungs may score a subset (rung-wise validation).
        subsets = validation_subsets(self.cfg.search.asha, max_reports(self.cfg)) if stage == "probe" else {}
        return self.job("mft", layout.trial_name(self.slug, stage, trial_id), data=self.train_data(stage),
                        mask=MaskSpec(**mask_kwargs), train=train, guards=guards, validation_subsets=subsets,
                        validation_subset_seed=self.cfg.seed)

    def prepare_data(self, stage: Stage) -> None:
        """Tokenise the stage's data here, in the driver, before any trial starts: trials only
        read the cache, instead of the first few each tokenising the same data at once."""
        from mft_search.core.backbone import load_tokenizer
        from mft_search.core.data.cache import ensure_tokenized, parts

        # A GGUF backbone is converted here too, once, into the cache its trials read.
        spec, tokenizer = self.train_data(stage), load_tokenizer(self.backbone, self.cache_dir)
        for part in parts(spec):
            ensure_tokenized(spec, tokenizer, self.cache_dir, part)

    def run_dir(self) -> Location:
        """Where Ray Tune and Train keep their state: storage_path (its .path) on storage_filesystem (its .fs)."""
        return self.exp_dir / layout.RAY


def journal_storage(study: Study) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(journal_path(study))))


def journal_path(study: Study) -> Path:
    """The driver's working copy of the study's journal: the same path on any machine for the same
    experiment, since a restored Tune searcher holds the path it was pickled with."""
    return journal_copies(study.exp_dir) / study.slug / layout.JOURNAL


def journal_copies(exp_dir: Location) -> Path:
    """The local directory of an experiment's working copies of its journals."""
    key = hashlib.sha256(str(exp_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mft_search-journals-{key}"


def discard_journal_copies(exp_dir: Location) -> None:
    """Remove the working copies once the sweep has finished: every journal is published, and a
    later `--resume` restores its copy from there (a killed driver's stay, for that resume)."""
    shutil.rmtree(journal_copies(exp_dir), ignore_errors=True)


def restore_journal(study: Study) -> None:
    """The published journal (the study's record) as the working copy, before a stage starts."""
    local, published = journal_path(study), study.dir / layout.JOURNAL
    local.parent.mkdir(parents=True, exist_ok=True)
    if published.exists():
        local.write_bytes(published.read_bytes())
    else:
        local.unlink(missing_ok=True)  # a stale copy of an earlier experiment at the same URI


def publish_journal(local: str, published: str) -> None:
    """Upload the working copy whole (the storage's atomic write), after a trial and before Tune saves."""
    if Path(local).exists():
        location(published).write_bytes(Path(local).read_bytes())
