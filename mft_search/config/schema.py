"""The sweep's YAML, validated once at the door into typed objects.

    cfg = load_config_file("search_spaces/demo.yaml")   # ConfigError: one line naming the field
    model_configs = check_against_models(cfg)            # layer groups and kinds fit each backbone
    check_data(cfg)                                      # local data files hold the mapped columns
    print(describe_plan(cfg, model_configs))             # what --dry-run prints

Only the layers above (sweep, CLI) read YAML; everything below receives these objects. Every
field documents itself (`SweepConfig.model_json_schema()`), and no key is silently ignored.
"""

from __future__ import annotations

import re
import tempfile
import typing
import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from transformers import PretrainedConfig

from mft_search.config.overrides import apply_overrides, blame, dotted, parse_override
from mft_search.config.space import (
    UNION_TAGS,
    Algorithm,
    FieldIssue,
    LayerRange,
    SearchSpace,
    check_algorithm_available,
    describe_space,
    enqueue_points,
    finite_size,
    grid_size,
    layer_groups,
)
from mft_search.config.tracking import Tracking
from mft_search.core.architectures import layout_for, model_depth, resolve_kinds
from mft_search.core.backbone import BackboneSpec, load_config, load_tokenizer
from mft_search.core.data import DataSpec
from mft_search.core.evaluation.records import BENCHMARK_DATA, data_identity
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.files import URI_SCHEMES, is_uri, join_uri, location, split_uri
from mft_search.errors import ConfigError, DataError, did_you_mean
from mft_search.train.spec import LoraAdapters, Resources
from mft_search.train.step import TrainSettings

Baseline = Literal["unmasked", "random", "l1", "wanda", "revert", "lora", "continued_fft"]
NEEDS_PRETRAINED = ("revert", "lora")
DEFAULT_TRIALS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a directory name
_STRICT = ConfigDict(extra="forbid")


class GuardSpec(BaseModel):
    """A benchmark outside the domain that a mask may not hurt by more than `max_drop` (IFEval
    while searching math, say): every trial scores it at each evaluation point, the search steers
    away from masks that break it, and selection refuses one whose paired drop may exceed it."""

    model_config = _STRICT
    benchmark: EvalSpec = Field(description="the guarded benchmark, on problems of none of the domain's held-out sets")
    max_drop: float = Field(ge=0, description="tolerated drop below the unmasked backbone's score, in points")
    name: str | None = Field(None, description="its name in outputs (guard/<name>/metric); null = the evaluator's")

    @property
    def label(self) -> str:
        return self.name or self.benchmark.evaluator


class DomainSpec(BaseModel):
    """One fine-tuning domain: the SFT data MFT trains on and the benchmarks that judge it."""

    model_config = _STRICT
    name: str = Field(description="short name used in outputs, e.g. math")
    train: DataSpec = Field(description="the SFT data that fine-tuned the backbone; MFT trains on it")
    validation: EvalSpec | None = Field(
        None, description="benchmark that selects the best mask; null = lowest loss on train's validation carve-out")
    test: EvalSpec | None = Field(None, description="benchmark reported for the selected mask, never used to select")
    fft_selection: EvalSpec | None = Field(
        None, description="with stages.fft: benchmark that picks the best FFT epoch (the backbone MFT masks), on "
        "problems neither validation nor test holds; null = lowest loss on train's validation carve-out")
    guard: list[GuardSpec] = Field(
        [], description="other benchmarks the mask must not hurt by more than their max_drop (points); each trial "
        "scores them at every evaluation point")

    @model_validator(mode="after")
    def _held_apart(self) -> DomainSpec:
        _check_name(self.name, "name")
        if self.validation is None and not _has_carve_out(self.train):
            raise FieldIssue("validation", "null needs validation data from train: set train.validation_fraction "
                             "or train.validation_split, or give a validation benchmark")
        for name in ("validation", "fft_selection"):
            if getattr(self, name) is not None:
                _check_not_test_split(getattr(self, name), name)
        if self.validation and self.test and _eval_data(self.validation) == _eval_data(self.test):
            raise FieldIssue("test", "reads the same problems as validation, so selection would see the test set; "
                             "point one of them at other data")
        for other in ("validation", "test"):
            spec = getattr(self, other)
            if self.fft_selection and spec and _eval_data(self.fft_selection) == _eval_data(spec):
                raise FieldIssue("fft_selection", f"reads the same problems as {other}; the FFT epoch, the mask and "
                                 "the report each need their own held-out problems: point it at other data")
        self._check_guards()
        return self

    def _check_guards(self) -> None:
        """Guards select too (they refuse masks), so none may read test's problems; one reading
        validation's would only score the metric again."""
        labels = [g.label for g in self.guard]
        for i, guard in enumerate(self.guard):
            if guard.name is not None:
                _check_name(guard.name, f"guard[{i}].name")
            if guard.label in labels[:i]:
                raise FieldIssue(f"guard[{i}].name", f"'{guard.label}' repeats guard[{labels.index(guard.label)}]; "
                                 "outputs are named by it, give each guard a distinct name")
            for other in ("validation", "test"):
                spec = getattr(self, other)
                if spec is not None and _eval_data(guard.benchmark) == _eval_data(spec):
                    raise FieldIssue(f"guard[{i}].benchmark", f"reads the same problems as {other}; a guard must "
                                     "judge other data: point its source at another benchmark or file")

    def carve_out_caveat(self, fine_tuned_here: bool = False) -> str | None:
        """Why selection on a carve-out of `train` is biased, and how to avoid it; None when a
        validation benchmark selects, or when the sweep's fft stage fine-tuned the backbone
        itself (without the carved-out rows). A backbone that came fine-tuned from the user may
        have trained on every row of train.source, the carved-out ones too: they score the
        unmasked model on seen data, which favours it over any mask."""
        if self.validation is not None or fine_tuned_here:
            return None
        carved = (f"train.validation_split '{self.train.validation_split}'" if self.train.validation_split
                  else f"{self.train.validation_fraction:.0%} carved out of train.source")
        return (f"selection is on {carved}, data from the source the backbone was fine-tuned on, so it may "
                "have trained on these rows: its scores there flatter the unmasked model against every mask. "
                "To avoid it, give domains[].validation a benchmark on problems the backbone never saw, or "
                "fine-tune the backbone yourself without the carved-out rows")


def _has_carve_out(train: DataSpec) -> bool:
    """Whether train sets validation rows aside (a fraction or a split): what a loss selects on."""
    return train.validation_fraction > 0 or train.validation_split is not None


def _eval_data(spec: EvalSpec) -> tuple[str, ...]:
    return data_identity(spec.evaluator, spec.source, spec.split)


def _check_not_test_split(spec: EvalSpec, field: str) -> None:
    """Selection must never see test: a hub benchmark read at the split it reports is its test set."""
    kind, *where = _eval_data(spec)
    test_split = BENCHMARK_DATA[spec.evaluator].split
    if kind == "hub" and where[1] == test_split:
        raise FieldIssue(field, f"reads {where[0]}'s '{test_split}' split, the problems {spec.evaluator} "
                         f"reports as its test set, so selection would see test; give {field}.split (another split) "
                         "or a local file")
    if kind == "bundled":
        raise FieldIssue(field, f"reads the {spec.evaluator} problems the test reports; give "
                         f"{field}.source a local file of other problems")


class AshaSettings(BaseModel):
    """Early stopping of unpromising trials (Ray Tune's ASHA)."""

    model_config = _STRICT
    grace_period: int = Field(1, ge=1, description="evaluation points every trial gets before it may be stopped")
    reduction_factor: int = Field(2, ge=2, description="keep the best 1/reduction_factor at each rung")
    validation_subset: float | None = Field(
        None, gt=0, le=1, description="rung-wise validation: the first rung scores this fraction of the validation "
        "items (a seeded subset, the same for every trial), each later rung reduction_factor times more, the last "
        "rung, a trial's last report and selection all of them; null = every report scores all")


class SearchSettings(BaseModel):
    """How configurations are proposed: algorithm, budget, first points and the space."""

    model_config = _STRICT
    algorithm: Algorithm = Field(
        "tpe", description="tpe (default), gp (needs scipy), random, or grid (every point of a finite space)")
    num_trials: int | None = Field(
        None, ge=1, description=f"probe trials per study that run (a point drawn again after it finished is told its "
                          f"outcome, not run, and not counted), at most a finite space's points; null = {DEFAULT_TRIALS}, "
                          "or the whole grid for grid")
    max_concurrent_trials: int = Field(2, ge=1, description="trials running at once per study")
    seed: int = Field(0, description="sampler seed; defaults to the top-level seed")
    asha: AshaSettings | None = Field(
        default_factory=AshaSettings, description="early stopping, in evaluation points (epochs or eval_every_steps); null disables")
    enqueue: list[dict[str, Any]] = Field(
        [], description="points tried first, e.g. the paper's {layer_group: [20,21,22,23], mode: local, ratio: 0.1}")
    space: SearchSpace = Field(description="the dimensions searched")
    time_budget_s: float | None = Field(
        None, gt=0, description="wall seconds of a study's probe search; when spent, no new trial starts "
        "(running ones finish), refine and evaluation still run; null = no limit")
    max_gpu_hours: float | None = Field(
        None, gt=0, description="GPU-hours of a study's probe trials (wall time x GPUs of each trial); when "
        "spent, no new trial starts; never binds with resources.gpus_per_worker 0; null = no limit")

    @property
    def trials(self) -> int:
        """Probe trials per study: at most the points of a finite space, since a point a finished
        trial ran is never run again (tune.duplicates): Tune then starts no more than that."""
        asked = self.asked_trials
        size = finite_size(self.space)
        return asked if size is None else min(asked, size)

    @property
    def asked_trials(self) -> int:
        """num_trials as configured: null is DEFAULT_TRIALS, or the whole grid for grid."""
        if self.num_trials is not None:
            return self.num_trials
        return grid_size(self.space) if self.algorithm == "grid" else DEFAULT_TRIALS

    @model_validator(mode="after")
    def _budget(self) -> SearchSettings:
        # The space's own functions raise ConfigErrors that already name search.*; pydantic lets
        # them through unwrapped.
        check_algorithm_available(self.algorithm)
        enqueue_points(self.space, self.enqueue)
        if self.algorithm == "grid" and self.num_trials is not None and self.num_trials > grid_size(self.space):
            raise FieldIssue("num_trials", f"{self.num_trials} exceeds the grid's {grid_size(self.space)} points; "
                             "lower it, or leave it null for the whole grid")
        if len(self.enqueue) > self.trials:
            raise FieldIssue("enqueue", f"{len(self.enqueue)} points but only {self.trials} trials; "
                             "raise num_trials or enqueue fewer")
        return self


class ProbeStage(BaseModel):
    """The search itself, on a fraction of the training data (paper: ~10%)."""

    model_config = _STRICT
    data_fraction: float = Field(0.1, gt=0, le=1, description="seeded fraction of train kept (after train.fraction)")


class RefineStage(BaseModel):
    """The best probe configurations re-run on all the training data."""

    model_config = _STRICT
    top_k: int = Field(2, ge=0, description="configurations re-run per study; 0 skips the stage")


class FftStage(BaseModel):
    """Full fine-tuning from a pretrained backbone before the search (the paper's protocol, Fig. 1):
    a checkpoint at every evaluation point, each scored on domains[].fft_selection. The best is
    the backbone MFT masks ("Best FFT"), the last is "Continued FFT" (trained past the peak)."""

    model_config = _STRICT
    train: TrainSettings = Field(
        default_factory=TrainSettings, description="the FFT's schedule (lr, epochs, ...): keys not given here "
        "are the top-level train's; run it well past its peak, so that the best epoch is a real one")


class Stages(BaseModel):
    model_config = _STRICT
    fft: FftStage | None = Field(
        None, description="fine-tune each backbone (then a pretrained model) per domain first; null = the "
        "backbones are already fine-tuned")
    probe: ProbeStage = Field(default_factory=ProbeStage, description="search on part of the data")
    refine: RefineStage = Field(default_factory=RefineStage, description="re-run the best on all of it")


class Selection(BaseModel):
    """When the best mask is selected and exported: a gain distinguishable from noise."""

    model_config = _STRICT
    min_gain: float = Field(0.0, description="the paired 95% lower bound of the best mask's validation gain over the "
                            "unmasked backbone must exceed this, in points (benchmarks) or nats (validation loss)")


class LoraBaseline(LoraAdapters):
    """The lora baseline (paper: Best / Continued LoRA): adapters trained from the pretrained model
    on the same SFT data, scored at every evaluation point like the FFT. Defaults: rank 16, alpha
    32, dropout 0.05 on every block's q, k, v, o, gate, up, down (core/lora.py says why)."""

    model_config = _STRICT
    train: TrainSettings = Field(
        default_factory=TrainSettings, description="its schedule: keys not given are the fft stage's (or, without "
        "it, the top-level train's); LoRA usually wants a higher lr than FFT, e.g. 10x")


class SweepConfig(BaseModel):
    """A whole sweep: which backbones and domains, what to search, with what resources."""

    model_config = _STRICT
    name: str = Field(description="experiment name; outputs go to <storage>/<name>/")
    storage: str = Field("~/mft_runs", description="a directory, or a bucket URI (s3://bucket/prefix, gs://...); on a "
                                                   "cluster a bucket or a directory every node mounts (NFS)")
    seed: int = Field(0, description="score-init and baseline seed; the default of train.seed and search.seed")
    seeds: int = Field(
        3, ge=1, description="runs of the selected configuration and of each baseline a seed changes (random, "
        "wanda, revert, lora, continued_fft) with seeds seed, seed+1, ...: the leaderboard shows their mean ± std; "
        "1 runs each once")
    backbones: list[BackboneSpec] = Field(
        min_length=1, description="fully fine-tuned models to mask; with stages.fft, the pretrained models it fine-tunes")
    domains: list[DomainSpec] = Field(min_length=1, description="training data and benchmarks, one per domain")
    train: TrainSettings = Field(default_factory=TrainSettings, description="training settings of every trial, unless searched")
    search: SearchSettings = Field(description="the search algorithm, budget and space")
    stages: Stages = Field(default_factory=Stages, description="probe then refine")
    resources: Resources = Field(default_factory=Resources, description="per-trial resources")
    selection: Selection = Field(default_factory=Selection, description="the rule that selects the best mask")
    baselines: list[Baseline] = Field(
        ["unmasked", "random", "l1", "continued_fft"],
        description="reference runs per study: unmasked (always run), random and l1 masks at the same ratio, "
        "wanda (one-shot |W| x input-norm pruning, calibrated on 128 training sequences, at the mask's kept counts), "
        "revert (the mask's removed weights set back to the pretrained model's instead of 0) and lora (adapters "
        "trained from the pretrained model: Best and Continued LoRA), both needing stages.fft or backbones[].pretrained, "
        "continued_fft (more fine-tuning at the final rate: the control that separates MFT from more training)")
    lora: LoraBaseline = Field(default_factory=LoraBaseline, description="settings of the lora baseline")
    retries: int = Field(1, ge=0, description="times a failed trial is retried before it is recorded failed")
    tracking: Tracking | None = Field(
        None, description="MLflow and/or W&B runs of every trial, and the leaderboard and best masks as artefacts")

    @model_validator(mode="before")
    @classmethod
    def _one_seed(cls, data: Any) -> Any:
        """The top-level seed seeds the sampler and data order too, unless those are set."""
        if isinstance(data, dict) and "seed" in data:
            for section in ("train", "search"):
                if isinstance(data.get(section, {}), dict) and "seed" not in data.get(section, {}):
                    data = {**data, section: {**data.get(section, {}), "seed": data["seed"]}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _schedules_inherit(cls, data: Any) -> Any:
        """stages.fft.train starts from the top-level train, and lora.train from the FFT's (the
        stage's, else the top-level train): batch sizes, clipping and seed are shared unless set."""
        if not isinstance(data, dict):
            return data
        stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
        fft, lora = stages.get("fft"), data.get("lora", {})
        layers = [{"seed": data["seed"]} if "seed" in data else {}, data.get("train")]
        if isinstance(fft, dict):
            layers.append(fft.get("train"))
            merged = _merged(layers)
            if merged is not None:
                data = {**data, "stages": {**stages, "fft": {**fft, "train": merged}}}
        if isinstance(lora, dict):
            merged = _merged([*layers, lora.get("train")])
            if merged is not None:
                data = {**data, "lora": {**lora, "train": merged}}
        return data

    @field_validator("name")
    @classmethod
    def _path_safe(cls, name: str) -> str:
        _check_name(name, None)
        return name

    @field_validator("storage")
    @classmethod
    def _scheme(cls, storage: str) -> str:
        if is_uri(storage):
            scheme = storage.split("://", 1)[0]
            if scheme not in URI_SCHEMES:
                raise ValueError(f"'{storage}' is not a bucket URI this sweep writes to; give s3://BUCKET/PREFIX, "
                                 f"gs://BUCKET/PREFIX ({', '.join(s + '://' for s in URI_SCHEMES)}) or a directory")
            split_uri(storage)  # ValueError naming the fix: no bucket, or a secret in the URI
        return storage

    @field_validator("baselines")
    @classmethod
    def _reference_first(cls, baselines: list[str]) -> list[str]:
        if len(set(baselines)) != len(baselines):
            raise ValueError(f"{baselines} lists a baseline twice; list each once")
        return baselines if "unmasked" in baselines else ["unmasked", *baselines]  # the reference row always runs

    @model_validator(mode="after")
    def _distinct(self) -> SweepConfig:
        for field, labels in (("backbones", [b.label for b in self.backbones]), ("domains", [d.name for d in self.domains])):
            for i, label in enumerate(labels):
                if label in labels[:i]:
                    raise FieldIssue(f"{field}[{i}].name", f"'{label}' repeats {field}[{labels.index(label)}]; "
                                     "outputs are named by it, give each a distinct name")
        for i, backbone in enumerate(self.backbones):
            _check_name(backbone.label, f"backbones[{i}].name")
        # num_trials as asked: a finite space with fewer points than top_k refines all it has
        if self.stages.refine.top_k > self.search.asked_trials:
            raise FieldIssue("stages.refine.top_k", f"{self.stages.refine.top_k} exceeds the "
                             f"{self.search.asked_trials} probe trials; lower it")
        for i, backbone in enumerate(self.backbones):
            if self.stages.fft is not None and backbone.pretrained is not None:
                raise FieldIssue(f"backbones[{i}].pretrained", "with stages.fft the source is the pretrained model "
                                 "the sweep fine-tunes; drop pretrained")
        self._check_fft_selection()
        if "lora" in self.baselines and self.resources.strategy == "fsdp":
            raise FieldIssue("baselines", "lora runs under ddp only (its checkpoints merge the adapters into a whole "
                             "copy of the model); set resources.strategy: ddp, or drop lora")
        return self

    def pretrained_missing(self, backbone: BackboneSpec) -> str | None:
        """Why the baselines that need the pretrained model cannot run for `backbone`; None when they can."""
        wanted = [b for b in NEEDS_PRETRAINED if b in self.baselines]
        if self.stages.fft is not None or backbone.pretrained is not None or not wanted:
            return None
        return (f"{' and '.join(wanted)} skipped for {backbone.label}: {'they need' if len(wanted) > 1 else 'it needs'} "
                "the pretrained model the backbone was fine-tuned from; set backbones[].pretrained, or start from "
                "the pretrained model with stages.fft")

    def _check_fft_selection(self) -> None:
        for i, domain in enumerate(self.domains):
            if domain.fft_selection is not None and self.stages.fft is None:
                raise FieldIssue(f"domains[{i}].fft_selection", "is only read by the fft stage; set stages.fft, "
                                 "or drop fft_selection")
            if self.stages.fft is None or domain.fft_selection is not None:
                continue
            if domain.validation is None:
                raise FieldIssue(f"domains[{i}].fft_selection", "null picks the FFT epoch on train's validation "
                                 "carve-out, which validation: null also selects masks on; give fft_selection or "
                                 "validation a benchmark of other problems")
            if not _has_carve_out(domain.train):
                raise FieldIssue(f"domains[{i}].fft_selection", "null picks the FFT epoch on train's validation "
                                 "loss, but train has no validation data: set train.validation_fraction or "
                                 "train.validation_split, or give fft_selection a benchmark")

    @property
    def refine_trials(self) -> int:
        """Refine trials per study: the top_k probe points, or every probe point of a finite space
        smaller than top_k (tune.sweep refines the best of what the probe ran)."""
        return min(self.stages.refine.top_k, self.search.trials)

    def caveats(self, domain: DomainSpec) -> list[str]:
        """What biases a domain's figures, said wherever they are read (plan, summary, leaderboard)."""
        return [c for c in (domain.carve_out_caveat(fine_tuned_here=self.stages.fft is not None),) if c]


def _merged(layers: list[Any]) -> dict[str, Any] | None:
    """Mappings merged in order, later keys winning; None when one is not a mapping (its own
    field's validation then says so)."""
    if not all(isinstance(layer, dict) or layer is None for layer in layers):
        return None
    return {k: v for layer in layers if layer for k, v in layer.items()}


def _check_name(name: str, field: str | None) -> None:
    if not _NAME.match(name):
        message = f"'{name}' is not usable as a directory name; use letters, digits, '_', '-' and '.'"
        raise FieldIssue(field, message) if field else ValueError(message)


# ---------------------------------------------------------------- loading and error messages


def load_config_file(path: str | Path, overrides: dict[str, Any] | None = None,
                     sets: list[str] = ()) -> SweepConfig:
    """Read and validate a sweep YAML; every mistake is one ConfigError line naming file and field.

    `sets` (--set key.path=value, config.overrides) and then `overrides` (top-level keys from
    their own options, such as --storage) replace the YAML's values before validation, so they
    pass the same checks; a bad one is named by the option that set it."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path} ({exc.strerror}); give the path of a sweep YAML") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem}); fix the syntax there") from None
    if data is None:
        raise ConfigError(f"{path}: empty; a sweep needs at least name, backbones, domains and search")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}; it must be a mapping "
                          "(name: ..., backbones: ..., domains: ..., search: ...)")
    overrides = overrides or {}
    assignments = [parse_override(text) for text in sets]
    try:
        return parse_config({**apply_overrides(data, assignments), **overrides})
    except ConfigError as exc:
        message = str(exc)
        key = next((k for k in overrides if message.startswith(f"{k}:")), None)
        if key:
            raise ConfigError(f"--{key}{message[len(key):]}") from None
        raise ConfigError(blame(message, assignments) or f"{path}: {message}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML silently keeps the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice in one mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_config(data: dict[str, Any]) -> SweepConfig:
    """SweepConfig from a mapping; a ValidationError becomes one ConfigError naming the first bad field."""
    try:
        return _expand_home(SweepConfig.model_validate(data))
    except ValidationError as exc:
        raise ConfigError(format_error(exc.errors()[0])) from None


def _expand_home(cfg: SweepConfig) -> SweepConfig:
    """A leading ~ in a model or data path means the user's home, as in a shell."""
    def home(spec):
        if spec is None or not (spec.source or "").startswith("~"):
            return spec
        return spec.model_copy(update={"source": str(Path(spec.source).expanduser())})

    backbones = [home(b) for b in cfg.backbones]
    data_fields = ("train", "fft_selection", "validation", "test")
    domains = [d.model_copy(update={**{f: home(getattr(d, f)) for f in data_fields},
                                    "guard": [g.model_copy(update={"benchmark": home(g.benchmark)}) for g in d.guard]})
               for d in cfg.domains]
    return cfg.model_copy(update={"backbones": backbones, "domains": domains})


def format_error(error: dict[str, Any]) -> str:
    """'dotted.field: what is wrong; the fix' for one pydantic error."""
    loc = [p for p in error["loc"] if p not in UNION_TAGS]
    issue = error.get("ctx", {}).get("error")
    if isinstance(issue, FieldIssue) and issue.field:
        loc += issue.field.split(".")
    message = _strip_prefix(str(issue) if isinstance(issue, Exception) else error["msg"])
    if error["type"] == "extra_forbidden":
        key = loc[-1]
        fields = _fields_at(loc[:-1])
        message = f"unknown key{did_you_mean(key, fields)}; valid keys: {', '.join(fields)}"
    elif error["type"] == "literal_error" and isinstance(error.get("input"), str):
        options = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        message = f"'{error['input']}' is not one of {', '.join(options)}{did_you_mean(error['input'], options)}"
    elif error["type"] == "missing":
        message = "required; add it"
    return f"{dotted(loc) or 'config'}: {message}"


def _strip_prefix(message: str) -> str:
    """Drop 'Value error, ' and a leading 'field: ' that other modules' validators put on their messages."""
    message = message.removeprefix("Value error, ")
    return re.sub(r"^[A-Za-z_][\w.\[\]]*: ", "", message, count=1)


def _fields_at(loc: list[Any]) -> list[str]:
    """Field names of the model(s) found at `loc` below SweepConfig, for unknown-key hints."""
    models: list[type[BaseModel]] = [SweepConfig]
    for part in loc:
        if isinstance(part, int) or str(part).isdigit() or "[" in str(part):
            continue
        models = [m for model in models if part in model.model_fields for m in _models_in(model.model_fields[part].annotation)]
    return sorted({name for model in models for name in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


# ---------------------------------------------------------------- checks that read outside the YAML


def check_against_models(cfg: SweepConfig) -> dict[str, PretrainedConfig]:
    """Each backbone's model config (no weights), after checking the space's groups and kinds fit it."""
    configs = {}
    for i, backbone in enumerate(cfg.backbones):
        try:
            model_config = load_config(backbone)
            layout_for(model_config.model_type)
            # A hub tokenizer would be downloaded here, and a GGUF file's is read when the sweep
            # converts it (before any trial): both left to the run.
            if Path(backbone.source).is_dir() and not backbone.is_gguf:
                load_tokenizer(backbone)  # every trial needs it: an unreadable one fails now, not N times
        except ConfigError as exc:
            field = "gguf_file" if str(exc).startswith("backbone.gguf_file:") else "source"
            raise ConfigError(f"backbones[{i}].{field}: {_strip_prefix(str(exc))}") from None
        _check_pretrained(backbone, i, model_config)
        _check_groups(cfg.search.space, backbone.label, model_config)
        for j, kinds in enumerate(cfg.search.space.kinds or []):
            try:
                resolve_kinds(model_config.model_type, tuple(kinds))
            except ConfigError as exc:
                raise ConfigError(f"search.space.kinds[{j}]: {_strip_prefix(str(exc))} ({backbone.label})") from None
        configs[backbone.label] = model_config
    return configs


def _check_pretrained(backbone: BackboneSpec, i: int, model_config: PretrainedConfig) -> None:
    """backbones[].pretrained must be the same architecture: revert swaps weights position by position."""
    spec = backbone.pretrained_spec()
    if spec is None:
        return
    try:
        pretrained = load_config(spec)
    except ConfigError as exc:
        raise ConfigError(f"backbones[{i}].pretrained: {_strip_prefix(str(exc))}") from None
    ours = (model_config.model_type, model_depth(model_config), getattr(model_config, "hidden_size", None))
    theirs = (pretrained.model_type, model_depth(pretrained), getattr(pretrained, "hidden_size", None))
    if ours != theirs:
        raise ConfigError(f"backbones[{i}].pretrained: a {theirs[0]} of {theirs[1]} blocks, width {theirs[2]}, but "
                          f"the backbone is a {ours[0]} of {ours[1]} blocks, width {ours[2]}; give the model it was "
                          "fine-tuned from")


def _check_groups(space: SearchSpace, label: str, model_config: PretrainedConfig) -> None:
    depth, model_type = model_depth(model_config), model_config.model_type
    lg = space.layer_group
    for j, group in enumerate(layer_groups(space)):
        if max(group) < depth:
            continue
        if isinstance(lg, LayerRange):
            raise ConfigError(f"search.space.layer_group: start {group[0]} + size {lg.size} exceeds {label}'s "
                              f"{model_type} depth {depth} (blocks 0..{depth - 1}); lower start to at most {depth - lg.size}")
        raise ConfigError(f"search.space.layer_group[{j}]: block {max(group)} exceeds {label}'s {model_type} depth "
                          f"{depth} (blocks 0..{depth - 1}); choose blocks within it")


def check_data(cfg: SweepConfig) -> None:
    """DataError naming the field when a local dataset is missing or lacks a mapped column.

    Hub sources are left to the run: checking them here would download them on the driver.
    """
    from mft_search.core.data import load_examples
    from mft_search.core.data.load import local_files

    for i, domain in enumerate(cfg.domains):
        at = f"domains[{i}]"
        try:
            if local_files(domain.train.source) is not None:
                load_examples(domain.train.model_copy(update={"limit": 2}))
        except DataError as exc:
            raise DataError(_relocate(str(exc), f"{at}.train")) from None
        for name in ("validation", "test"):
            spec = getattr(domain, name)
            if spec is not None and spec.source is not None:
                _check_benchmark(spec, f"{at}.{name}")
        for j, guard in enumerate(domain.guard):
            if guard.benchmark.source is not None:
                _check_benchmark(guard.benchmark, f"{at}.guard[{j}].benchmark")


def _check_benchmark(spec: EvalSpec, at: str) -> None:
    from mft_search.core.data.load import local_files

    try:
        if local_files(spec.source) is not None:
            spec.make_evaluator().load(spec.source, limit=1)  # with its shots: their file is checked too
    except DataError as exc:
        raise DataError(f"{at}.source: {_strip_prefix(str(exc))}") from None


def _relocate(message: str, at: str) -> str:
    """'data.prompt_field: ...' from the data module becomes '<at>.prompt_field: ...'."""
    match = re.match(r"^data(\.[\w.]+)?: ", message)
    return f"{at}{match.group(1) or ''}: {message[match.end():]}" if match else f"{at}: {message}"


def resolve_storage(cfg: SweepConfig) -> str:
    """The expanded storage directory (or the bucket URI), after checking it can be written."""
    if is_uri(cfg.storage):
        return _check_bucket(cfg.storage)
    path = Path(cfg.storage).expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())  # what mkdir will create below
    if not existing.is_dir():
        raise ConfigError(f"storage: {existing} is a file, so {path} cannot be a directory; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"storage: {existing} is not writable ({exc.strerror}); choose a writable directory") from None
    return str(path)


def _check_bucket(uri: str) -> str:
    """`uri`, once an object written there was read back and removed: the bucket exists and the
    credentials (the SDK's own variables) allow writes, before any trial runs."""
    probe_name = f".mft_write_check_{uuid.uuid4().hex}"
    try:
        probe = location(uri) / probe_name
        probe.write_bytes(b"ok")
        probe.unlink()
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError) for a URI it cannot use
        raise ConfigError(f"storage: cannot write to {uri} ({_first_line(str(exc))}); check that the bucket exists "
                          "and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_DEFAULT_REGION, "
                          "AWS_ENDPOINT_URL for another S3 API; GOOGLE_APPLICATION_CREDENTIALS for gs://)") from None
    return str(location(uri))  # as typed, less a trailing '/' (before the options, where it is)


def _capped(search: SearchSettings) -> str:
    """Why the probe runs fewer trials than num_trials asks, if it does."""
    if search.trials == search.asked_trials:
        return ""
    return f" (the space's {search.trials} points: num_trials asks {search.asked_trials}, and no point runs twice)"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no detail"


# ---------------------------------------------------------------- the plan --dry-run prints


def describe_plan(cfg: SweepConfig, model_configs: dict[str, PretrainedConfig]) -> str:
    """What a sweep will run, where, and on what: the text of --dry-run."""
    search, res = cfg.search, cfg.resources
    studies = len(cfg.backbones) * len(cfg.domains)
    refine = cfg.refine_trials
    per_study = search.trials + refine
    storage = cfg.storage if is_uri(cfg.storage) else str(Path(cfg.storage).expanduser())
    outputs = join_uri(storage, f"{cfg.name}/") if is_uri(storage) else f"{storage.rstrip('/')}/{cfg.name}/"
    asha = f"ASHA grace {search.asha.grace_period}, reduction {search.asha.reduction_factor}" if search.asha else "no early stopping"
    if search.asha and search.asha.validation_subset is not None:
        asha += f" (rung-wise validation from {search.asha.validation_subset:.0%} of the items)"
    lines = [
        f"experiment {cfg.name}: outputs in {outputs}",
        f"studies (backbone x domain): {len(cfg.backbones)} x {len(cfg.domains)} = {studies}",
        *[f"  backbone {label}: {mc.model_type}, {model_depth(mc)} blocks" for label, mc in model_configs.items()],
        *[f"  domain {d.name}: train {d.train.source}; select on {_bench(d.validation) or 'validation loss'}; "
          f"report {_bench(d.test) or 'nothing (no test)'}" for d in cfg.domains],
        *[f"  caveat, domain {d.name}: {caveat}" for d in cfg.domains for caveat in cfg.caveats(d)],
        *_guard_plan(cfg),
        *[f"  {why}" for b in cfg.backbones if (why := cfg.pretrained_missing(b))],
        f"search: {search.algorithm}, seed {search.seed}, {len(search.enqueue)} enqueued point(s), {asha}",
        *[f"  {line}" for line in describe_space(search.space)],
        *_fft_plan(cfg),
        f"stages per study: probe {search.trials} trials{_capped(search)} on {cfg.stages.probe.data_fraction:.0%} "
        "of the training data"
        + (f", refine the top {refine} on all of it" if refine else ", no refine stage"),
        f"trials: {per_study} per study, {per_study * studies} in all, plus {len(cfg.baselines)} baseline run(s) per study "
        f"({', '.join(cfg.baselines)}); failed trials retried {cfg.retries} time(s)",
        _seeds_plan(cfg),
        f"resources per trial: {res.workers_per_trial} worker(s) x ({res.cpus_per_worker:g} CPU, {res.gpus_per_worker:g} GPU), "
        f"{res.strategy}",
        f"concurrency: at most {search.max_concurrent_trials} trial(s) per study, needing "
        f"{search.max_concurrent_trials * res.workers_per_trial * res.cpus_per_worker:g} CPU and "
        f"{search.max_concurrent_trials * res.workers_per_trial * res.gpus_per_worker:g} GPU",
    ]
    return "\n".join(lines)


def _guard_plan(cfg: SweepConfig) -> list[str]:
    lines = [f"  guard {g.label}, domain {d.name}: {_bench(g.benchmark)}, tolerated drop {g.max_drop:g} pts"
             for d in cfg.domains for g in d.guard]
    if not lines:
        return []
    # random and grid sample without looking at finished trials, so a constraint cannot steer them
    steer = ("TPE and GP sample away from trials that break a guard" if cfg.search.algorithm in ("tpe", "gp")
             else f"{cfg.search.algorithm} sampling ignores guards")
    return lines + [f"  guards: the unmasked backbone scored once per study before the probe; every trial scores "
                    f"each guard at every evaluation point (one more benchmark per report); {steer}; selection "
                    "skips trials whose best report breaks one, and refuses a mask whose paired drop may exceed it"]


def _seeds_plan(cfg: SweepConfig) -> str:
    if cfg.seeds == 1:
        return "seeds: 1 (no re-runs; the leaderboard shows no spread over seeds)"
    rows = ["the selected configuration"] + [name for b, name in (
        ("random", "the random mask"), ("wanda", "Wanda"), ("revert", "revert"), ("lora", "LoRA"),
        ("continued_fft", "the continued-FFT control")) if b in cfg.baselines]
    single = " (after the fft stage, Continued FFT is that stage's one run)" if cfg.stages.fft else ""
    return (f"seeds: {cfg.seeds} ({cfg.seed}..{cfg.seed + cfg.seeds - 1}) for {', '.join(rows)}{single}: "
            f"{cfg.seeds - 1} more run(s) of each after selection; the leaderboard shows mean ± std over them")


def _fft_plan(cfg: SweepConfig) -> list[str]:
    fft = cfg.stages.fft
    if fft is None:
        return []
    picks = [f"{d.name} on {_bench(d.fft_selection) or 'validation loss'}" for d in cfg.domains]
    return [f"fft stage per study: full fine-tuning of the pretrained backbone, {fft.train.epochs:g} epoch(s) at lr "
            f"{fft.train.lr:g}, a checkpoint per evaluation point; the best ({'; '.join(picks)}) is what MFT masks"]


def _bench(spec: EvalSpec | None) -> str:
    if spec is None:
        return ""
    limit = f", first {spec.limit}" if spec.limit else ""
    return f"{spec.evaluator} ({spec.source or 'default data'}{limit})"
