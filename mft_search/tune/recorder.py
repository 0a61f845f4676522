"""The Tune callback that keeps the project's own record of a stage: every report into
results.parquet as it arrives, each finished trial's status and reason, one log line each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from mft_search.experiment import layout
from mft_search.experiment.results import NO_OP, ResultsTable, selection_metric, trial_status, trial_value
from mft_search.train.spec import mask_artifact
from mft_search.tune.study import Stage, Study


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("params", config)  # refine trials carry their fixed point under "params"


class Recorder(tune.Callback):
    """Writes every report to results.parquet and prints one line per finished trial."""

    def __init__(self, results_path: Path, study: Study, stage: Stage, log: Callable[[str], Any] | None = None) -> None:
        self.results_path, self.study, self.stage, self._log = results_path, study, stage, log
        self.table = ResultsTable(results_path)
        self._last: dict[str, dict] = {}
        self._best: dict[str, float | None] = {}  # each trial's value: its best report's metric

    # Tune pickles its callbacks with the experiment and restores them on resume: the table is
    # then read afresh from disk, never brought back as it stood at the last save. The log
    # function stays behind too: Ray may have replaced builtins.print in the driver (tqdm_ray's
    # safe_print), after which the original print no longer pickles; a restored one prints.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("table", "_log")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _log=None)
        self.table = ResultsTable(self.results_path)

    def log(self, line: str) -> None:
        (self._log or print)(line)  # print looked up now: whatever builtins.print is at this moment

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
            self._best[trial.trial_id] = result.get("best_metric", result.get("metric"))
            return
        base = self._base(trial)
        report = int(result.get("report", 0))
        job_dir = self.study.dir / layout.ARTIFACTS / layout.trial_name(self.study.slug, self.stage, trial.trial_id)
        base["mask_path"] = str(mask_artifact(job_dir, report))
        self.table.add_report(base, trial_params(trial.config), result)
        self._last[trial.trial_id] = result
        self._best[trial.trial_id] = trial_value([self._best.get(trial.trial_id), selection_metric(result)])

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
        self.table.finish(self._base(trial), trial_params(trial.config), status, error)
        self.table.flush()
        best = self._best.get(trial.trial_id)
        score = (f"best metric {best:.4f}" if best is not None else
                 "scored on a validation subset only" if self._last.get(trial.trial_id) else "no report")
        self.log(f"[{self.study.name} {self.stage}] trial {trial.trial_id} {status}: {score} "
                 f"({_describe(trial_params(trial.config))})" + (f" - {error}" if error else ""))


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
