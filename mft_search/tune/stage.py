"""One stage (probe or refine) of a study, run by Ray Tune: the trial driver and the Tuner.

Each Tune trial runs MFT at its sampled point: a one-worker trial in its own process (a
RaySession on Tune's report), a multi-worker one as a TorchTrainer that the trial fits, TuneReportCallback
forwarding rank 0's (already all-reduced) metrics to Tune. The searcher and scheduler are in
tune.searcher, the project's record of each trial in tune.recorder; the Optuna study lives in a
JournalStorage file in the study's directory (tune.study), so optuna-dashboard and
`optuna.importance` work on it and it survives a restart of the driver.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from mft_search.core.distributed import release_memory
from mft_search.core.files import Location
from mft_search.experiment import layout
from mft_search.experiment.results import (
    REPORT_FIELDS,
    REPORT_PREFIXES,
    ResultsTable,
    params_of,
    selection_metric,
    trial_value,
)
from mft_search.train import faults
from mft_search.train.job import run_job
from mft_search.train.ray_train import RaySession, build_trainer, ray_storage
from mft_search.train.spec import Resources
from mft_search.tune.budget import budget_stop
from mft_search.tune.placement import DRIVER_CPU, HEAD_RESOURCE, HEAD_SLIVER
from mft_search.tune.recorder import Recorder, trial_params
from mft_search.tune.searcher import make_scheduler, make_searcher
from mft_search.tune.study import Stage, Study, restore_journal

# On a bucket, Tune uploads its saved state at most this often (Ray's default: 300 s); a driver lost
# in between leaves older state, which --resume completes from results.parquet (see run_stage).
STATE_UPLOAD_S = 30

REUSE_WAIT_S = 120


def _trial_driver(config: dict[str, Any], study: Study, stage: Stage, planned_faults: list[dict]) -> None:
    """One Tune trial: MFT at the sampled point, in this process when it has one worker, else
    as a Ray Train run of its workers."""
    # Before Tune hands this actor the next trial (reuse_actors), it waits this long for our thread
    # to end and, past it, errors that next trial ("reuse requires reset_config()") and drops it.
    # Ray's 2 s default is shorter than releasing a trial's memory on a loaded machine (seen at a
    # load of 18 on 2 CPUs); the actor reads the variable at each reset, so setting it here holds.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(REUSE_WAIT_S))
    trial_id = tune.get_context().get_trial_id()
    recorded = _recorded_end(study, stage, trial_id)
    if recorded is not None:
        # The driver died after results.parquet recorded this trial's end but before Tune saved
        # it: Tune restores it as unfinished. Hand back its last report; never train it again.
        tune.report(recorded)
        return
    params = trial_params(config)
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
    result = build_trainer(job, study.resources, storage=study.run_dir(), callbacks=[forward],
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
    report = {k: v for k, v in last.items() if k in (*REPORT_FIELDS, "report") or k.startswith(REPORT_PREFIXES)}
    return {**report, "replayed": 1, "best_metric": trial_value(selection_metric(r) for r in rows)}


class _CountingReportCallback(TuneReportCallback):
    def __init__(self) -> None:
        super().__init__()
        self.reports = 0

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.reports += 1
        super().after_report(run_context, metrics, checkpoint)


def _trial_resources(resources: Resources) -> dict[str, float]:
    """What a Tune trial itself holds: its one worker's needs when it trains in-process; else a
    sliver of CPU (Tune refuses an empty request), since its Train workers hold the real resources
    and drivers must not use up the CPUs, and a sliver of the head node's own resource.

    On the head: Ray Train attaches a trial's controller to its driver's node, and a controller
    lost with a worker node leaves its worker group's placement group held forever (seen on a
    two-node Ray: the group was rescheduled onto the head and its CPUs never came back). A driver
    and controller on the head see the lost node's workers die, and free and restart the group.
    """
    if resources.workers_per_trial > 1:
        return {"CPU": DRIVER_CPU, HEAD_RESOURCE: HEAD_SLIVER}
    return {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if resources.use_gpu else {})}


def run_stage(study: Study, stage: Stage, results_path: Location, *, resume: bool, points: list[dict] | None = None,
              log=print, callbacks: list[tune.Callback] = ()) -> tune.ResultGrid | None:
    """Run (or resume) the probe search or the refine re-runs of one study; every finished trial
    is written to `results_path` as it ends. None when the records show nothing is left to run."""
    # MFT_SEARCH_FAULTS is read here, in the driver, so that it reaches trials on any cluster
    driver = tune.with_parameters(_trial_driver, study=study, stage=stage, planned_faults=faults.from_environment())
    trainable = tune.with_resources(driver, _trial_resources(study.resources))
    name = layout.run_name(study.slug, stage)
    path, storage = study.run_dir() / name, ray_storage(study.run_dir())
    study.prepare_data(stage)
    if stage == "probe":
        restore_journal(study)  # before a restored searcher opens it
    if resume and tune.Tuner.can_restore(path.path, storage_filesystem=storage["storage_filesystem"]):
        try:
            tuner = tune.Tuner.restore(path.path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False, storage_filesystem=storage["storage_filesystem"])
        except Exception as exc:  # noqa: BLE001 - a torn tuner.pkl (EOFError), a state of another Ray, ...
            aside = path.rename(path.with_name(f"{path.name}.unreadable-{int(time.time())}"))  # for a post-mortem
            log(f"[{study.name} {stage}] Tune's state could not be restored ({type(exc).__name__}: {exc}); set aside "
                f"as {aside.name}: the stage goes on from this experiment's own records")
        else:
            log(f"[{study.name} {stage}] resuming from {path}")
            return tuner.fit()
    # A fresh Tuner, or one after Tune's state was lost: what results.parquet records as ended is
    # never run again; trials it records as running are marked interrupted, as after a restore.
    ended = _ended_trials(results_path, study, stage) if resume else {}
    run_config = tune.RunConfig(name=name, **storage, sync_config=tune.SyncConfig(sync_period=STATE_UPLOAD_S),
                                callbacks=[Recorder(results_path, study, stage, log),
                                           *_tracking_callbacks(study, stage), *callbacks],
                                failure_config=tune.FailureConfig(max_failures=study.cfg.retries), verbose=1)
    search = study.cfg.search
    if stage == "probe":
        remaining = search.trials - len(ended)
        # A budget that stopped the search before the driver died stays spent: no new Tuner.
        if remaining <= 0 or budget_stop(study.dir) is not None:
            return None
        # reuse_actors: a new trial actor starts a Python with torch, transformers and Ray imported,
        # a large share of a short trial (bench trial measures it); a finished trial's actor takes the next one.
        tune_config = tune.TuneConfig(search_alg=make_searcher(study, enqueue=not ended), scheduler=make_scheduler(study),
                                      num_samples=remaining, max_concurrent_trials=search.max_concurrent_trials,
                                      reuse_actors=True)
        return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config).fit()
    points = [p for p in points or [] if p not in ended.values()]
    if not points:
        return None
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=search.max_concurrent_trials, reuse_actors=True)
    return tune.Tuner(trainable, param_space={"params": tune.grid_search(points)}, tune_config=tune_config,
                      run_config=run_config).fit()


def _ended_trials(results_path: Location, study: Study, stage: Stage) -> dict[str, dict[str, Any]]:
    """{trial_id: params} of the stage's trials results.parquet records as ended (any status but
    running/interrupted); the running ones are marked interrupted on the way."""
    table = ResultsTable(results_path)
    if table.close_stage(study.name, stage):
        table.flush()
    frame = table.frame()
    if frame.empty:
        return {}
    rows = frame[(frame["study"] == study.name) & (frame["stage"] == stage)
                 & ~frame["status"].isin(["running", "interrupted"])]
    return {trial_id: params_of(group.iloc[0]) for trial_id, group in rows.groupby("trial_id")}


def _tracking_callbacks(study: Study, stage: Stage) -> list:
    if study.cfg.tracking is None:
        return []
    from mft_search.tune import tracking  # only when used, in the driver: it imports mlflow and wandb (seconds)

    return tracking.callbacks(study, stage)
