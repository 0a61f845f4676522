"""results.parquet: every report of every trial, written as trials finish (no Ray here).

One row per (study, stage, trial, report), upserted by that key, so a resumed sweep that
replays or continues a trial never duplicates or loses a row. Each write goes to a temporary
file renamed into place: a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from mft_search.core.files import location
from mft_search.experiment.guards import GUARD_PREFIX

KEY = ("study", "stage", "trial_id", "report")
# A trial still "running" on record when its stage ended: the driver died before Tune saved it
# (the resumed Tune ran another in its place), or its own write failed on full storage.
INTERRUPTED = "still running when the sweep stopped; --resume did not continue it"
REPORT_FIELDS = ("step", "total_steps", "epoch", "metric", "val_loss", "train_loss", "kept_fraction", "no_op",
                 "validation_items", "validation_subset")
# Report keys kept as columns too: the benchmark's other figures, where the time went, guard metrics.
REPORT_PREFIXES = ("eval_", "time_", GUARD_PREFIX)
# Never candidates for selection: a failed trial, or one whose mask kept every weight (the unmasked model).
NOT_CANDIDATES = ("failed", "no-op")
NO_OP = ("kept every weight: no score fell below the threshold, so the mask changes nothing (global mode with "
         "magnitude init starts every score at |W| >= 0); use a threshold above 0, normal init, or local mode")


class ResultsTable:
    """The experiment's results.parquet, held in memory and flushed atomically."""

    def __init__(self, path) -> None:
        self.path = location(path)
        self._rows: dict[tuple, dict[str, Any]] = {}
        if self.path.exists():
            for row in self.path.read_parquet().to_dict("records"):
                self._rows[tuple(row[k] for k in KEY)] = row

    def add_report(self, base: dict[str, Any], params: dict[str, Any], result: dict[str, Any]) -> None:
        """Record one report of a running trial (status "running" until it finishes)."""
        row = {**base, "status": "running", "error": None, "report": int(result.get("report", 0))}
        row.update({k: _float(result.get(k)) for k in REPORT_FIELDS})
        row.update({k: _float(v) for k, v in result.items() if k.startswith(REPORT_PREFIXES)})
        row["wall_s"] = _float(result.get("time_total_s"))
        row.update({f"param.{k}": v for k, v in params.items()})
        self._rows[tuple(row[k] for k in KEY)] = row

    def finish(self, base: dict[str, Any], params: dict[str, Any], status: str, error: str | None = None) -> None:
        """Mark every row of a trial completed, pruned or failed; a trial that never reported (an
        OOM at its first step) gets one row, with its parameters, so its failure is on record."""
        rows = self.trial_rows(base["study"], base["stage"], base["trial_id"])
        if not rows:
            row = {**base, "report": 0, **{f"param.{k}": v for k, v in params.items()}}
            self._rows[tuple(row[k] for k in KEY)] = row
            rows = [row]
        for row in rows:
            row["status"], row["error"] = status, error

    def close_stage(self, study: str, stage: str) -> list[str]:
        """Once a stage has ended, mark the trials still "running" in it as interrupted (see
        INTERRUPTED for how one is left behind). Returns their ids."""
        lost = sorted({r["trial_id"] for k, r in self._rows.items() if k[:2] == (study, stage) and r["status"] == "running"})
        for trial_id in lost:
            for row in self.trial_rows(study, stage, trial_id):
                row["status"], row["error"] = "interrupted", INTERRUPTED
        return lost

    def trial_rows(self, study: str, stage: str, trial_id: str) -> list[dict[str, Any]]:
        return [r for k, r in self._rows.items() if k[:3] == (study, stage, trial_id)]

    def frame(self) -> pd.DataFrame:
        order = lambda r: (str(r["study"]), str(r["stage"]), str(r["trial_id"]), int(r["report"]))  # noqa: E731
        return pd.DataFrame(sorted(self._rows.values(), key=order))

    def flush(self) -> None:
        with self.path.atomic_path() as temporary:
            self.frame().to_parquet(temporary, index=False)


def params_of(row: pd.Series) -> dict[str, Any]:
    """The searched point a results row records (its param.* columns, absent ones left out)."""
    return {c.removeprefix("param."): _plain(row[c]) for c in row.index
            if c.startswith("param.") and not _missing(row[c])}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars as Python values


def selection_metric(report: dict[str, Any]) -> Any:
    """A report's metric as selection sees it: None for one scored on a subset of the validation
    items (rung-wise validation: such a score only ranks trials at an ASHA rung)."""
    return None if report.get("validation_subset") == 1 else report.get("metric")


def ranked_reports(rows: pd.DataFrame) -> pd.DataFrame:
    """Reports best first: highest metric, ties to the earliest report; those without a metric, and
    those scored on a validation subset (`selection_metric`), left out."""
    if "validation_subset" in rows:
        rows = rows[rows["validation_subset"] != 1]  # NaN (no subset on record) stays
    return rows.dropna(subset=["metric"]).sort_values(["metric", "report"], ascending=[False, True], kind="stable")


def best_reports(rows: pd.DataFrame) -> pd.DataFrame:
    """Each trial's best report (ranked_reports' first), one row per (stage, trial), best trials
    first. Every report saved a mask, so this is what selection takes."""
    if "metric" not in rows:  # no trial has reported yet (every one failed at its first step)
        return rows
    ranked = ranked_reports(rows)
    return ranked.groupby(["stage", "trial_id"], sort=False).head(1)


def trial_value(metrics) -> float | None:
    """A trial's one number: the best of its reports' metrics (None and NaN skipped; None if no
    report has one), as `best_reports` ranks it: give it `selection_metric`s."""
    values = [float(m) for m in metrics if m is not None and not math.isnan(float(m))]
    return max(values) if values else None


def trial_status(last_result: dict[str, Any] | None, errored: bool) -> str:
    """completed (ran all its steps), pruned (stopped early by ASHA), no-op (ended as soon as its
    mask kept every weight) or failed."""
    if errored:
        return "failed"
    if last_result and last_result.get("no_op") == 1:
        return "no-op"
    if last_result and last_result.get("step", 0) < last_result.get("total_steps", 0):
        return "pruned"
    return "completed"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
