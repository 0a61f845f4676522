"""An experiment directory as the sweep leaves it on disk: trials from results.parquet and the
per-study summary.json files.

Nothing here writes: the sweep may still be appending, and a report must never disturb it. The
sweep replaces results.parquet and summary.json atomically, so a read sees a whole file or none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mft_search.core.files import Location, location
from mft_search.core.statistics import seed_summary
from mft_search.errors import ConfigError
from mft_search.experiment.items import COLUMNS as ITEM_COLUMNS
from mft_search.experiment.items import items_path, read_items
from mft_search.experiment.layout import JOURNAL, RESULTS, STUDIES, SUMMARY
from mft_search.experiment.results import best_reports

REQUIRED_COLUMNS = ("study", "stage", "trial_id", "status", "report")


@dataclass(frozen=True)
class SummaryRow:
    """One line of the paper's Table 1: a baseline or the best MFT trial."""

    name: str
    validation: float | None
    test: float | None
    label: str | None = None  # the sweep's name for the row, where the default would mislead
    trial_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    mask: str | None = None
    selected: bool = True
    seeds: tuple[int, ...] = ()  # every seed this row ran with, the first being validation's and test's
    validation_seeds: tuple[float | None, ...] = ()  # each seed's figure, in `seeds` order
    test_seeds: tuple[float | None, ...] = ()
    reported: dict[str, dict[str, float]] = field(default_factory=dict)  # split: every metric its benchmark reported

    def spread(self, split: str) -> tuple[float, float] | None:
        """(mean, sample std) of `split`'s figure over the row's seeds; None unless two or more have one."""
        values = [v for v in getattr(self, f"{split}_seeds") if _finite(v)]
        return seed_summary(values) if len(values) > 1 else None


@dataclass(frozen=True)
class Summary:
    """A study's summary.json: written once its evaluation is done."""

    backbone: str
    domain: str
    metric_name: str
    validation_benchmark: str | None
    test_benchmark: str | None
    rows: tuple[SummaryRow, ...]
    verdict: str
    caveats: tuple[str, ...] = ()  # what biases this study's figures, said where they are read
    fft: dict[str, Any] | None = None  # the FFT curve: origin, metric_name, best/final epoch, points
    skipped: tuple[str, ...] = ()  # baselines that could not run, each with the reason
    lora: dict[str, Any] | None = None  # the LoRA baseline's curve, as `fft`
    guards: tuple[dict[str, Any], ...] = ()  # each guard's check of the best mask: name, benchmark, max_drop, kept

    def row(self, name: str) -> SummaryRow | None:
        return next((r for r in self.rows if r.name == name), None)


@dataclass(frozen=True)
class StudyRecord:
    """One backbone x domain: its result rows, one row per trial, and its summary if finished."""

    backbone: str
    domain: str
    directory: Location
    rows: pd.DataFrame
    trials: pd.DataFrame
    summary: Summary | None
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITEM_COLUMNS))  # its items.parquet rows

    @property
    def name(self) -> str:
        return f"{self.backbone}/{self.domain}"

    @property
    def slug(self) -> str:
        return self.directory.name

    @property
    def journal(self) -> Location:
        return self.directory / JOURNAL

    def metric_is_fraction(self) -> bool:
        """Whether every metric seen lies in [0, 1], so that it reads best as a percentage."""
        values = list(self.trials["metric"]) if not self.trials.empty else []
        if self.summary:
            values += [v for r in self.summary.rows for v in (r.validation, r.test)]
        finite = [v for v in values if _finite(v)]
        return bool(finite) and all(0.0 <= v <= 1.0 for v in finite)


@dataclass(frozen=True)
class Experiment:
    path: Location
    studies: tuple[StudyRecord, ...]


def load_experiment(exp_dir) -> Experiment:
    """Read an experiment directory (or bucket prefix), finished or not; ConfigError when it is not one."""
    exp_dir = location(exp_dir)
    _check_is_experiment(exp_dir)
    rows = _read_results(exp_dir / RESULTS)
    items = read_items(items_path(exp_dir))
    summaries = _read_summaries(exp_dir / STUDIES)
    # The study column, not backbone/domain: a trial that failed before reporting has only
    # study, stage, trial_id and status filled in.
    keys = set(summaries) | {name.partition("/")[::2] for name in rows["study"].dropna().unique()}
    studies = []
    for backbone, domain in sorted(keys):
        mine = rows[rows["study"] == f"{backbone}/{domain}"].reset_index(drop=True)
        directory = exp_dir / STUDIES / f"{backbone}__{domain}"
        studies.append(StudyRecord(backbone, domain, directory, mine, per_trial(mine), summaries.get((backbone, domain)),
                                   items[items["study"] == f"{backbone}/{domain}"]))
    return Experiment(exp_dir, tuple(studies))


def per_trial(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, trial), in the order results.parquet lists them.

    A trial is represented by its best report (ties: the earliest), as the sweep selects it,
    because every report saved a mask; its status and error are those of its last report.
    """
    records = []
    for order, (_, group) in enumerate(rows.groupby(["stage", "trial_id"], sort=False, dropna=False), start=1):
        last = group.loc[group["report"].idxmax()] if group["report"].notna().any() else group.iloc[-1]
        ranked = best_reports(group)
        best = ranked.iloc[0] if not ranked.empty else last
        records.append({**best.to_dict(), "status": last["status"], "error": last.get("error"), "order": order})
    return pd.DataFrame(records, columns=[*rows.columns, "order"])


def _check_is_experiment(exp_dir: Location) -> None:
    if not exp_dir.is_dir():
        raise ConfigError(f"{exp_dir}: no such directory; pass the experiment directory a sweep wrote "
                          "(<storage>/<experiment name>)")
    if not (exp_dir / RESULTS).is_file() and not (exp_dir / STUDIES).is_dir():
        raise ConfigError(f"{exp_dir}: not an experiment directory (it has neither {RESULTS} nor {STUDIES}/); "
                          "pass the directory a sweep wrote (<storage>/<experiment name>)")


def _read_results(path: Location) -> pd.DataFrame:
    if not path.is_file():  # a sweep whose first trial has not finished yet
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("report", "metric") else "object")
                             for c in (*REQUIRED_COLUMNS, "metric")})
    try:
        rows = path.read_parquet()
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise ConfigError(f"{path}: not a readable parquet file ({first_line(exc)})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; "
                          "the report reads results.parquet as mft_search.sweep writes it")
    if "metric" not in rows.columns:  # every trial so far failed before its first report
        rows["metric"] = float("nan")
    return rows


def _read_summaries(studies_dir: Location) -> dict[tuple[str, str], Summary | None]:
    """Every study directory, keyed by (backbone, domain); None where evaluation is pending."""
    found: dict[tuple[str, str], Summary | None] = {}
    for directory in sorted(studies_dir.glob("*__*")) if studies_dir.is_dir() else ():
        if not directory.is_dir():
            continue
        summary = _read_summary(directory / SUMMARY) if (directory / SUMMARY).is_file() else None
        backbone, _, domain = directory.name.rpartition("__")
        found[(summary.backbone, summary.domain) if summary else (backbone, domain)] = summary
    return found


def _read_summary(path: Location) -> Summary:
    try:
        data = json.loads(path.read_text())
        rows = tuple(_summary_row(r) for r in data["rows"])
        backbone, domain = data["backbone"], data["domain"]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a summary the sweep writes ({type(exc).__name__}: {first_line(exc)}); "
                          "it needs study, backbone, domain, metric_name, rows [{name, validation, test}] "
                          "and verdict") from exc
    return Summary(backbone=backbone, domain=domain, metric_name=data.get("metric_name", "metric"),
                   validation_benchmark=data.get("validation_benchmark"), test_benchmark=data.get("test_benchmark"),
                   rows=rows, verdict=data.get("verdict", ""), caveats=tuple(data.get("caveats", ())),
                   fft=data.get("fft"), skipped=tuple(data.get("skipped", ())),
                   lora=data.get("lora"), guards=tuple(data.get("guards", ())))


def _summary_row(row: dict[str, Any]) -> SummaryRow:
    return SummaryRow(name=row["name"], validation=row.get("validation"), test=row.get("test"),
                      label=row.get("label"), trial_id=row.get("trial_id"), params=row.get("params") or {}, mask=row.get("mask"),
                      selected=row.get("selected", True), seeds=tuple(row.get("seeds", ())),
                      validation_seeds=tuple(row.get("validation_seeds", ())), test_seeds=tuple(row.get("test_seeds", ())),
                      reported=row.get("reported") or {})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def first_line(exc: BaseException) -> str:
    """An exception's message fit for a one-line error."""
    return (str(exc).strip().splitlines() or [""])[0]
