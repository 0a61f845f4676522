"""The tune layer: one Optuna study per (backbone, domain), searched by Ray Tune with ASHA.

Each Tune trial runs MFT at its sampled point: a one-worker trial in its own process (a
RaySession on Tune's report), a multi-worker one as a TorchTrainer that the trial fits, TuneReportCallback
forwarding rank 0's (already all-reduced) metrics to Tune. The Optuna study lives in a
JournalStorage file in the experiment directory, so optuna-dashboard and `optuna.importance`
work on it and it survives a restart of the driver.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from mft_search.train import faults
from mft_search.core.backbone import BackboneSpec
from mft_search.config.schema import DomainSpec, SweepConfig
from mft_search.core.data import DataSpec
from mft_search.train.job import run_job
from mft_search.train.spec import TrialJob, mask_artifact
from mft_search.core.masking import MaskSpec
from mft_search.core.distributed import release_memory
from mft_search.experiment.results import NO_OP, REPORT_FIELDS, ResultsTable, trial_status
from mft_search.config.space import enqueue_points
from mft_search.tune.sampling import define_by_run, make_sampler, params_to_trial
from mft_search.experiment import layout
from mft_search.experiment.storage import Storage
from mft_search.train.ray_train import RaySession, build_trainer
from mft_search.train.spec import Resources

Stage = Literal["probe", "refine"]
DRIVER_CPU = 0.01


@dataclass(frozen=True)
class Study:
    """One (backbone, domain) pair of a sweep and where its files go."""

    cfg: SweepConfig
    backbone: BackboneSpec
    domain: DomainSpec
    exp_dir: Path
    storage: Storage | None = None  # checked by the Recorder before it writes results

    @property
    def name(self) -> str:
        return f"{self.backbone.label}/{self.domain.name}"

    @property
    def slug(self) -> str:
        return layout.study_slug(self.backbone.label, self.domain.name)

    @property
    def dir(self) -> Path:
        return layout.study_dir(self.exp_dir, self.slug)

    @property
    def resources(self) -> Resources:
        return self.cfg.resources

    def job(self, kind: str, name: str, **fields: Any) -> TrialJob:
        """A TrialJob of this study with the sweep's shared settings filled in."""
        defaults = dict(backbone=self.backbone, evaluation=self.domain.validation, train=self.cfg.train,
                        strategy=self.cfg.resources.strategy, cache_dir=str(self.exp_dir / layout.CACHE),
                        artifact_dir=str(self.dir / layout.ARTIFACTS / name))
        return TrialJob(name=name, kind=kind, **{**defaults, **fields})

    def train_data(self, stage: Stage) -> DataSpec:
        """What a trial of `stage` trains on: the probe a fraction, refine all of it."""
        data = self.domain.train
        if stage == "probe":
            data = data.model_copy(update={"fraction": data.fraction * self.cfg.stages.probe.data_fraction})
        return data

    def mft_job(self, params: dict[str, Any], trial_id: str, stage: Stage) -> TrialJob:
        mask_kwargs, train = params_to_trial(params, self.cfg)
        return self.job("mft", layout.trial_name(self.slug, stage, trial_id), data=self.train_data(stage),
                        mask=MaskSpec(**mask_kwargs), train=train)

    def prepare_data(self, stage: Stage) -> None:
        """Tokenise the stage's data here, in the driver, before any trial starts: trials only
        read the cache, instead of the first few each tokenising the same data at once."""
        from mft_search.core.backbone import load_tokenizer
        from mft_search.core.data.cache import ensure_tokenized, parts

        spec, tokenizer = self.train_data(stage), load_tokenizer(self.backbone)
        for part in parts(spec):
            ensure_tokenized(spec, tokenizer, self.exp_dir / layout.CACHE, part)

    def run_dir(self) -> str:
        return str(self.exp_dir / layout.RAY)


def _trial_driver(config: dict[str, Any], study: Study, stage: Stage, planned_faults: list[dict]) -> None:
    """One Tune trial: MFT at the sampled point, in this process when it has one worker, else
    as a Ray Train run of its workers."""
    trial_id = tune.get_context().get_trial_id()
    recorded = _recorded_end(study, stage, trial_id)
    if recorded is not None:
        # The driver died after results.parquet recorded this trial's end but before Tune saved
        # it: Tune restores it as unfinished. Hand back its last report; never train it again.
        tune.report(recorded)
        return
    params = _params(config)
    job = study.mft_job(params, trial_id, stage)
    fault = faults.for_params(planned_faults, params)
    if study.resources.workers_per_trial == 1:
        # In this Tune trial process: starting a Ray Train worker group costs more than half a demo
        # trial on 2 CPUs (bench trial), and one worker needs no group. Ray sets the visible GPU.
        device = torch.device("cuda", 0) if study.resources.use_gpu else torch.device("cpu")
        session = RaySession(0, 1, device, api=tune)
        try:
            run_job(job, faults.inject(session, fault))
        finally:
            # This actor may take the next trial (reuse_actors); Tune never reuses one whose
            # trial errored (an OOM included), so what is left here is a finished trial's.
            _release(session.device)
        return
    forward = _CountingReportCallback()
    result = build_trainer(job, study.resources, storage_path=study.run_dir(), callbacks=[forward],
                           max_failures=1, fault=fault).fit()
    if forward.reports == 0 and result.metrics:
        # A driver restarted after its Train run had finished: the run is restored complete and
        # reports nothing, so hand Tune its final metrics once more.
        tune.report(result.metrics)


def _release(device: torch.device) -> None:
    left = release_memory(device)
    if left > 256 * 2**20:
        logging.getLogger(__name__).warning(
            "%.1f GiB still allocated on %s after the trial: something holds the last model", left / 2**30, device)


def _recorded_end(study: Study, stage: Stage, trial_id: str) -> dict[str, Any] | None:
    """The last report of a trial results.parquet records as completed or pruned, else None."""
    rows = ResultsTable(layout.results_path(study.exp_dir)).trial_rows(study.name, stage, trial_id)
    if not rows or rows[0].get("status") not in ("completed", "pruned", "no-op"):
        return None
    last = max(rows, key=lambda r: r["report"])
    report = {k: v for k, v in last.items() if k in (*REPORT_FIELDS, "report") or k.startswith(("eval_", "time_"))}
    return {**report, "replayed": 1}


class _CountingReportCallback(TuneReportCallback):
    def __init__(self) -> None:
        super().__init__()
        self.reports = 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.reports += 1
        super().after_report(run_context, metrics, checkpoint)


def _params(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("params", config)  # refine trials carry their fixed point under "params"


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records ASHA-stopped trials as PRUNED and failed ones as FAIL.

    Ray's own marks a trial COMPLETE whenever it has a last value, early stop or error alike,
    which feeds TPE and the importance figures with half-trained scores as if they were final.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished in the journal before a driver restart; Tune replays its end

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        status = trial_status(result, error)
        if status == "completed" or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.FAIL if status == "failed" else TrialState.PRUNED
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=state)
        except ValueError:  # told before a driver restart: the journal already has its outcome
            pass
        self._completed_trials.add(trial_id)


def journal_storage(study: Study) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    study.dir.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(study.dir / layout.JOURNAL)))


def make_searcher(study: Study) -> PrunedAwareOptunaSearch:
    search = study.cfg.search
    return PrunedAwareOptunaSearch(
        space=define_by_run(search.space), metric="metric", mode="max",
        points_to_evaluate=enqueue_points(search.space, search.enqueue) or None,
        sampler=make_sampler(search.algorithm, search.seed, search.space),
        study_name=study.name, storage=journal_storage(study))


def make_scheduler(study: Study):
    asha = study.cfg.search.asha
    if asha is None:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric="metric", mode="max", max_t=_max_reports(study),
                         grace_period=asha.grace_period, reduction_factor=asha.reduction_factor)


def _max_reports(study: Study) -> int:
    # Reports come once per epoch unless eval_every_steps is set; then the count depends on the
    # data size, and a generous bound only means ASHA's last rung is never reached.
    train = study.cfg.train
    epochs = study.cfg.search.space.epochs
    most = max(epochs) if isinstance(epochs, list) else getattr(epochs, "high", epochs) or train.epochs
    return max(1, math.ceil(most)) if train.eval_every_steps is None else 10_000


class Recorder(tune.Callback):
    """Writes every report to results.parquet and prints one line per finished trial."""

    def __init__(self, results_path: Path, study: Study, stage: Stage, log=print) -> None:
        self.results_path, self.study, self.stage, self.log = results_path, study, stage, log
        self.table = ResultsTable(results_path)
        self._last: dict[str, dict] = {}

    # Tune pickles its callbacks with the experiment and restores them on resume: the table is
    # then read afresh from disk, never brought back as it stood at the last save.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "table"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.table = ResultsTable(self.results_path)

    def _base(self, trial) -> dict[str, Any]:
        r = self.study.cfg.resources
        return {"study": self.study.name, "backbone": self.study.backbone.label, "domain": self.study.domain.name,
                "stage": self.stage, "trial_id": trial.trial_id, "seed": self.study.cfg.seed,
                "workers": r.workers_per_trial, "cpus_per_worker": r.cpus_per_worker,
                "gpus_per_worker": r.gpus_per_worker}

    def _check_storage(self) -> None:
        if self.study.storage is not None:
            self.study.storage.check()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._check_storage()
        if result.get("replayed"):  # already on record as it was: keep its row (and wall time)
            self._last[trial.trial_id] = result
            return
        base = self._base(trial)
        report = int(result.get("report", 0))
        job_dir = self.study.dir / layout.ARTIFACTS / layout.trial_name(self.study.slug, self.stage, trial.trial_id)
        base["mask_path"] = str(mask_artifact(job_dir, report))
        self.table.add_report(base, _params(trial.config), result)
        self._last[trial.trial_id] = result

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, errored=True)

    def _finish(self, trial, errored: bool) -> None:
        self._check_storage()
        last = self._last.get(trial.trial_id)
        status = trial_status(last, errored)
        error = _error_text(trial) if errored else (NO_OP if status == "no-op" else None)
        if error and self.study.storage is not None:
            # not the trial's failure: stop the sweep before every later trial fails the same way
            failure = self.study.storage.failed_trial(error)
            if failure is not None:
                raise failure
        self.table.finish(self._base(trial), _params(trial.config), status, error)
        self.table.flush()
        score = f"metric {last['metric']:.4f}" if last and "metric" in last else "no report"
        self.log(f"[{self.study.name} {self.stage}] trial {trial.trial_id} {status}: {score} "
                 f"({_describe(_params(trial.config))})" + (f" - {error}" if error else ""))


def _error_text(trial) -> str:
    """The last line of the trial's error: the reason, not Ray's traceback."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1][:300] if lines else "failed"


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _trial_resources(resources: Resources) -> dict[str, float]:
    """What a Tune trial itself holds: its one worker's needs when it trains in-process; else a
    sliver of CPU (Tune refuses an empty request), since its Train workers hold the real resources
    and drivers must not use up the CPUs."""
    if resources.workers_per_trial > 1:
        return {"CPU": DRIVER_CPU}
    return {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if resources.use_gpu else {})}


def run_stage(study: Study, stage: Stage, results_path: Path, *, resume: bool, points: list[dict] | None = None,
              log=print, callbacks: list[tune.Callback] = ()) -> tune.ResultGrid:
    """Run (or resume) the probe search or the refine re-runs of one study; every finished trial
    is written to `results_path` as it ends."""
    # MFT_SEARCH_FAULTS is read here, in the driver, so that it reaches trials on any cluster
    driver = tune.with_parameters(_trial_driver, study=study, stage=stage, planned_faults=faults.from_environment())
    trainable = tune.with_resources(driver, _trial_resources(study.resources))
    name = f"{study.slug}-{stage}"
    path = Path(study.run_dir()) / name
    study.prepare_data(stage)
    if resume and tune.Tuner.can_restore(str(path)):
        log(f"[{study.name} {stage}] resuming from {path}")
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False).fit()
    run_config = tune.RunConfig(name=name, storage_path=study.run_dir(),
                                callbacks=[Recorder(results_path, study, stage, log), *callbacks],
                                failure_config=tune.FailureConfig(max_failures=study.cfg.retries), verbose=1)
    search = study.cfg.search
    if stage == "probe":
        # reuse_actors: a new trial actor starts a Python with torch, transformers and Ray imported,
        # 4.3 s of a 13 s demo trial (bench trial); a finished trial's actor takes the next one.
        tune_config = tune.TuneConfig(search_alg=make_searcher(study), scheduler=make_scheduler(study),
                                      num_samples=search.trials, max_concurrent_trials=search.max_concurrent_trials,
                                      reuse_actors=True)
        return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config).fit()
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=search.max_concurrent_trials, reuse_actors=True)
    return tune.Tuner(trainable, param_space={"params": tune.grid_search(points or [])}, tune_config=tune_config,
                      run_config=run_config).fit()
