"""The sweep's trials and results sent to MLflow and W&B (config `tracking:`).

Per stage, Ray Tune's own logger callbacks on the driver (MLflowLoggerCallback,
WandbLoggerCallback), adapted in three ways: a run is named by its trial id (Ray names it
'<trainable>_<trial id>'), its params are the sampled point (a refine trial's config nests it
under "params"), and its metrics are what the trial reported, not Tune's bookkeeping. After the
report, log_summary adds one '<name>-summary' run per tracker with the leaderboard and every
study's best mask as artefacts.

Imported only by the driver's functions: Ray's W&B module imports wandb (seconds), which a
trial process, importing tune.stage for its trainable, must not pay.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS, TRAINING_ITERATION

from mft_search.config.schema import SweepConfig
from mft_search.config.tracking import MLflowTracking, WandbTracking
from mft_search.core.files import location
from mft_search.experiment import layout
from mft_search.tune.recorder import trial_params
from mft_search.tune.study import Stage, Study

# What Tune adds to every report; training_iteration stays, as the step both trackers plot against.
TUNE_KEYS = frozenset({*AUTO_RESULT_KEYS, *DEBUG_METRICS, "done", "should_checkpoint"}) - {TRAINING_ITERATION}


def callbacks(study: Study, stage: Stage) -> list[tune.Callback]:
    """The tracking callbacks of one stage of `study`: none when the config has no tracking."""
    tracking = study.cfg.tracking
    if tracking is None:
        return []
    tags = {"sweep": study.cfg.name, "study": study.name, "stage": stage}
    made: list[tune.Callback] = []
    if tracking.mlflow is not None:
        made.append(TrialRuns(tracking.mlflow, experiment_name(tracking.mlflow, study.cfg), tags))
    if tracking.wandb is not None:
        spec = tracking.wandb
        made.append(TrialWandb(project=spec.project or study.cfg.name, entity=spec.entity, mode=spec.mode,
                               dir=str(wandb_dir(spec, study.exp_dir)), job_type=stage, tags=list(tags.values())))
    return made


def reported(result: dict[str, Any]) -> dict[str, Any]:
    """A Tune result less Tune's own keys: what the trial itself reported, and its step."""
    return {k: v for k, v in result.items() if k not in TUNE_KEYS}


# ---------------------------------------------------------------- MLflow


def experiment_name(spec: MLflowTracking, cfg: SweepConfig) -> str:
    return spec.experiment or cfg.name


def artifact_location(spec: MLflowTracking, experiment: str) -> str | None:
    """Where a new MLflow experiment keeps artefacts. For sqlite, beside the database: MLflow's
    own default is ./mlruns in whatever directory the driver happens to run in."""
    if spec.artifact_location:
        return spec.artifact_location
    prefix = "sqlite:///"
    if spec.tracking_uri.startswith(prefix) and spec.tracking_uri != f"{prefix}:memory:":
        database = Path(spec.tracking_uri[len(prefix):]).expanduser().resolve()
        return (database.parent / "mlartifacts" / experiment).as_uri()
    return None


def experiment_id(client, spec: MLflowTracking, experiment: str) -> str:
    """The MLflow experiment's id, created (with our artefact location) if it does not exist yet."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=artifact_location(spec, experiment))


def run_named(client, experiment: str, tag: str, value: str) -> str | None:
    """The id of the experiment's run tagged `tag=value`, if an earlier (interrupted) driver made it."""
    runs = client.search_runs([experiment], filter_string=f"tags.{tag} = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


class TrialRuns(MLflowLoggerCallback):
    """One MLflow run per trial, named by its trial id, tagged with its sweep, study and stage."""

    def __init__(self, spec: MLflowTracking, experiment: str, tags: dict[str, str]) -> None:
        super().__init__(spec.tracking_uri, experiment_name=experiment, tags=tags)
        self.spec = spec

    def setup(self, *args, **kwargs) -> None:
        from mlflow.tracking import MlflowClient

        # Created here first, so that Ray's setup finds it by name and keeps our artefact location.
        experiment_id(MlflowClient(self.tracking_uri), self.spec, self.experiment_name)
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_runs:
            return
        client = self.mlflow_util._get_client()
        experiment = self.mlflow_util.experiment_id
        # A resumed stage restarts its unfinished trials: they go on in the run they had.
        run_id = run_named(client, experiment, "trial_id", trial.trial_id)
        if run_id is None:
            tags = {**self.tags, "trial_id": trial.trial_id}
            run_id = self.mlflow_util.start_run(run_name=trial.trial_id, tags=tags).info.run_id
        self._trial_runs[trial] = run_id
        self.mlflow_util.log_params(run_id=run_id, params_to_log=trial_params(trial.config))

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        super().log_trial_result(iteration, trial, reported(result))


# ---------------------------------------------------------------- Weights & Biases


def wandb_dir(spec: WandbTracking, exp_dir: Path) -> Path:
    """An absolute folder (Ray's logging actor changes its working directory to the trial's)."""
    exp_dir = location(exp_dir)  # W&B writes its own files locally: a bucket experiment's go to the user's cache
    local = Path(exp_dir.path) if exp_dir.is_local else Path.home() / ".cache" / "mft_search" / "wandb"
    path = Path(spec.dir).expanduser().resolve() if spec.dir else local
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _wandb_mode(mode: str) -> Iterator[None]:
    """WANDB_MODE set to the config's mode for a while: Ray's setup looks for an API key unless
    the environment (not the init arguments it passes on) says offline or disabled."""
    before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = before


class TrialWandb(WandbLoggerCallback):
    """One W&B run per trial: id and name its trial id, its config the sampled point, grouped by
    Tune run (the study's stage); Ray logs each from an actor of its own on the driver's node."""

    def setup(self, *args, **kwargs) -> None:
        with _wandb_mode(self.kwargs["mode"]):
            super().setup(*args, **kwargs)

    def _start_logging_actor(self, trial, exclude_results: list[str], **init: Any) -> None:
        init.update(name=trial.trial_id, config=trial_params(trial.config))
        super()._start_logging_actor(trial, exclude_results, **init)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        # Without "config": Ray would merge the raw trial config (a refine trial's nested "params") into the run's.
        super().log_trial_result(iteration, trial, reported(result))


# ---------------------------------------------------------------- the summary runs


def result_files(cfg: SweepConfig, exp_dir: Path) -> list[tuple[str, Path]]:
    """(artefact folder, file) of the leaderboard and of each study's exported best mask."""
    files = [("", location(exp_dir) / layout.LEADERBOARD)]
    for backbone in cfg.backbones:
        for domain in cfg.domains:
            best = layout.best_dir(exp_dir, backbone.label, domain.name)
            if best.is_dir():  # only a selected mask is exported
                folder = best.relative_to(exp_dir).as_posix()
                files += [(folder, path) for path in sorted(best.iterdir()) if path.is_file()]
    return [(folder, path) for folder, path in files if path.exists()]


def log_summary(cfg: SweepConfig, exp_dir: Path, log=print) -> None:
    """After the report: the leaderboard and best masks as artefacts of a '<name>-summary' run."""
    tracking = cfg.tracking
    if tracking is None:
        return
    with contextlib.ExitStack() as stack:
        # The trackers' clients open local paths: an experiment in a bucket is downloaded first
        # (a local file is used where it is).
        files = [(folder, stack.enter_context(path.local_copy())) for folder, path in result_files(cfg, exp_dir)]
        if tracking.mlflow is not None:
            where = _mlflow_summary(tracking.mlflow, cfg, files)
            log(f"MLflow: {len(files)} result file(s) in run {cfg.name}-summary of experiment {where}")
        if tracking.wandb is not None:
            _wandb_summary(tracking.wandb, cfg, exp_dir, files)
            log(f"W&B ({tracking.wandb.mode}): {len(files)} result file(s) in run {cfg.name}-summary")


def _mlflow_summary(spec: MLflowTracking, cfg: SweepConfig, files: list[tuple[str, Path]]) -> str:
    from mlflow.tracking import MlflowClient

    client, name, experiment = MlflowClient(spec.tracking_uri), f"{cfg.name}-summary", experiment_name(spec, cfg)
    exp_id = experiment_id(client, spec, experiment)
    # A resumed sweep finishes in the run an interrupted one began.
    run_id = run_named(client, exp_id, "summary_of", cfg.name) or client.create_run(
        exp_id, run_name=name, tags={"sweep": cfg.name, "summary_of": cfg.name}).info.run_id
    for folder, path in files:
        client.log_artifact(run_id, str(path), artifact_path=folder or None)
    client.set_terminated(run_id)
    return experiment


def _wandb_summary(spec: WandbTracking, cfg: SweepConfig, exp_dir: Path, files: list[tuple[str, Path]]) -> None:
    import wandb

    run = wandb.init(project=spec.project or cfg.name, entity=spec.entity, mode=spec.mode,
                     dir=str(wandb_dir(spec, exp_dir)), name=f"{cfg.name}-summary", job_type="summary",
                     tags=[cfg.name], reinit="create_new")
    try:
        artifact = wandb.Artifact(f"{cfg.name}-results", type="results",
                                  description="the sweep's leaderboard and each study's best mask")
        for folder, path in files:
            artifact.add_file(str(path), name=f"{folder}/{path.name}" if folder else path.name)
        run.log_artifact(artifact)
    finally:
        run.finish()
