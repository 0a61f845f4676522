"""The Ray Train layer: run a TrialJob on a group of workers. Knows nothing of Tune.

    trainer = build_trainer(job, Placement(num_workers=2), storage_path="/mnt/shared/runs")
    result = trainer.fit()

The tune layer passes its own callbacks (TuneReportCallback) through `callbacks`; nothing here
imports Tune. The Train run is named after the trial, never a timestamp, so that a restarted
driver finds and resumes the same run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
from pydantic import BaseModel, ConfigDict, Field
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from mft_search.train import faults
from mft_search.train.job import TrialJob, run_job


class Placement(BaseModel):
    """Workers of one trial and what each needs."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(1, ge=1, description="data-parallel workers per trial")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class RaySession:
    """Ray Train's view of this worker, in the shape `run_job` expects."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir:  # report() has persisted it to the run's storage
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="mft_resume_")))

    def new_checkpoint_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="mft_ckpt_"))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    run_job(TrialJob.model_validate(config["job"]), faults.inject(RaySession(), config.get("fault")))


def build_trainer(job: TrialJob, placement: Placement, *, storage_path: str, callbacks: list | None = None,
                  max_failures: int = 1, fault: dict[str, Any] | None = None) -> TorchTrainer:
    """A TorchTrainer for `job`: gloo on CPU, NCCL on GPU; keeps only the latest checkpoint."""
    resources = {"CPU": placement.cpus_per_worker}
    if placement.use_gpu:
        resources["GPU"] = placement.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "fault": fault},
        torch_config=TorchConfig(backend="nccl" if placement.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=placement.num_workers, use_gpu=placement.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=job.name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )


__all__ = ["Placement", "RaySession", "build_trainer", "train_loop_per_worker"]
