"""The Ray Train layer: run a TrialJob on a group of workers. Knows nothing of Tune.

    trainer = build_trainer(job, Resources(workers_per_trial=2), storage=location("s3://bucket/runs"))
    result = trainer.fit()

`fit_job` runs a job outside Tune (the evaluations and the continued-FFT control): a one-worker
job as a plain Ray task, a multi-worker one as a TorchTrainer. The tune layer passes its own
callbacks (TuneReportCallback) through `callbacks`; nothing here imports Tune. A run (Train's or
the task's directory) is named after the job, never a timestamp, so that a restarted driver finds
and resumes the same run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mft_search.core.distributed import release_memory
from mft_search.core.files import Location, location
from mft_search.train import faults
from mft_search.train.job import run_job
from mft_search.train.session import DirectorySession
from mft_search.train.spec import Resources, TrialJob


class RaySession:
    """A Ray runtime's view of this worker, in the shape `run_job` expects (a train.session.Session).

    Ray Train and Tune offer the same three names (report, get_checkpoint, Checkpoint: Tune's is
    its own class): `api` is the module that serves them, ray.train by default (a worker of a
    multi-worker trial), ray.tune when the tune layer passes it (a one-worker trial run in its
    Tune trial process), so nothing here imports Tune.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, api: ModuleType = ray.train) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self._api = api

    @classmethod
    def of_train_worker(cls) -> RaySession:
        """This Ray Train worker's session."""
        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = self._api.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._api.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir:  # report() has persisted it to the run's storage
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = self._api.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="mft_resume_")))

    def new_checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="mft_ckpt_"))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    run_job(TrialJob.model_validate(config["job"]), faults.inject(RaySession.of_train_worker(), config.get("fault")))


def ray_storage(where: Location) -> dict[str, Any]:
    """Ray's storage_path and storage_filesystem for a Location: a bucket's filesystem is passed on
    (the one the project writes with, so one set of credentials); a local path is Ray's default."""
    return {"storage_path": where.path, "storage_filesystem": None if where.is_local else where.fs}


def build_trainer(job: TrialJob, resources: Resources, *, storage: Location, callbacks: list | None = None,
                  max_failures: int = 1, fault: dict[str, Any] | None = None) -> TorchTrainer:
    """A TorchTrainer for `job`: gloo on CPU, NCCL on GPU; keeps only the latest checkpoint."""
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "fault": fault},
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=resources.workers_per_trial, use_gpu=resources.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=job.name,
            **ray_storage(storage),
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )


@dataclass(frozen=True)
class JobResult:
    """A finished job outside Tune: its last report, every report, its latest checkpoint."""

    metrics: dict[str, Any]
    history: pd.DataFrame
    checkpoint: ray.train.Checkpoint | None


def fit_job(job: TrialJob, resources: Resources, *, storage: Location, max_failures: int = 1,
            fault: dict[str, Any] | None = None) -> JobResult:
    """Run `job` to its end, retried up to `max_failures` times; raises the job's own error.

    One worker runs as a Ray task in a pooled worker process: a Ray Train run starts a controller
    and a worker group first, ~35 s of a tiny evaluation on 2 CPUs (`bench jobs` measures both).
    Several workers need the group (process group, sharding): a TorchTrainer.
    """
    if resources.workers_per_trial > 1:
        result = build_trainer(job, resources, storage=storage, max_failures=max_failures, fault=fault).fit()
        if result.error:
            raise result.error
        return JobResult(result.metrics, result.metrics_dataframe, result.checkpoint)
    return _collect(_submit(job, resources, storage, max_failures, fault), storage / job.name)


def fit_jobs(jobs: list[TrialJob], resources: Resources, *, storage: Location,
             max_failures: int = 1) -> list[JobResult]:
    """`fit_job` for each of `jobs`, in their order. One-worker jobs are submitted together, so
    they run side by side as far as the cluster has room (a seed's replicates on a 2-CPU demo
    machine: two at once); multi-worker jobs run in turn. Raises the error of the first job, in
    their order, that failed; the others' runs stay in their directories for a resumed sweep."""
    if resources.workers_per_trial > 1:
        return [fit_job(job, resources, storage=storage, max_failures=max_failures) for job in jobs]
    pending = [_submit(job, resources, storage, max_failures, None) for job in jobs]
    return [_collect(ref, storage / job.name) for job, ref in zip(jobs, pending)]


def _submit(job: TrialJob, resources: Resources, storage: Location, max_failures: int,
            fault: dict[str, Any] | None) -> ray.ObjectRef:
    """A one-worker job started as a Ray task, its run under `storage / job.name` (where a Train
    run of this job would keep its own)."""
    task = _one_worker_job.options(num_cpus=resources.cpus_per_worker, num_gpus=resources.gpus_per_worker,
                                   max_retries=max_failures, retry_exceptions=True)
    return task.remote(job.model_dump(mode="json"), str(storage / job.name), resources.use_gpu, fault)


def _collect(pending: ray.ObjectRef, directory: Location) -> JobResult:
    """A one-worker job's result once its task ends; raises the job's own error."""
    try:
        reports = ray.get(pending)
    except ray.exceptions.RayTaskError as error:
        raise error.as_instanceof_cause() from None
    latest = DirectorySession(directory).latest_checkpoint()  # downloaded when the run is in a bucket
    checkpoint = ray.train.Checkpoint.from_directory(str(latest)) if latest else None
    return JobResult(reports[-1] if reports else {}, pd.DataFrame(reports), checkpoint)


@ray.remote
def _one_worker_job(job: dict[str, Any], directory: str, use_gpu: bool,
                    fault: dict[str, Any] | None) -> list[dict[str, float]]:
    """A one-worker job in this Ray worker process; its reports, resumed ones included."""
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")  # Ray sets the visible GPU
    session = DirectorySession(location(directory), device)
    try:
        run_job(TrialJob.model_validate(job), faults.inject(session, fault))
    finally:
        release_memory(device)  # this process takes the next task
    return session.reports


__all__ = ["JobResult", "RaySession", "build_trainer", "fit_job", "fit_jobs", "train_loop_per_worker"]
