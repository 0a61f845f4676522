"""leaderboard.md: per backbone x domain the paper's Table 1 with the verdict, then the trials."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mft_search.core.topk import CUT_SETTING
from mft_search.experiment.guards import guard_split
from mft_search.experiment.items import gains_over, split_unit
from mft_search.experiment.results import NOT_CANDIDATES
from mft_search.report.experiment import Experiment, StudyRecord, SummaryRow
from mft_search.report.importance import Importances

# Default row names; the sweep writes its own where a row's meaning depends on the backbone's
# origin (after the fft stage "unmasked" is the best FFT epoch, summary.json rows[].label).
ROW_LABELS = {"pretrained": "Pretrained (before FFT)", "unmasked": "Unmasked backbone", "random": "Random mask", "l1": "L1 mask", "wanda": "Wanda mask",
              "revert": "Revert to pretrained (MFT's mask)", "best_lora": "Best LoRA", "continued_lora": "Continued LoRA",
              "continued_fft_best": "Continued FFT, best epoch", "continued_fft": "Continued FFT",
              "best_mft": "Best MFT"}
# The selected configuration, in the order a reader compares trials by.
CONFIG_PARAMS = {"layer_group": "layer group", "mode": "mode", "ratio": "ratio", "threshold": "threshold",
                 "init": "init", "lr": "lr"}
STATUSES = ("completed", "pruned", "no-op", "failed", "running")
TOP = 5


@dataclass(frozen=True)
class StudyReport:
    """What the leaderboard says about one study besides its files: importances and figures."""

    study: StudyRecord
    importances: Importances
    figures: dict[str, Path] = field(default_factory=dict)  # title -> path relative to the experiment
    notes: tuple[str, ...] = ()  # why a figure is missing


def render(experiment: Experiment, reports: list[StudyReport]) -> str:
    """The whole leaderboard as Markdown."""
    evaluated = sum(r.study.summary is not None for r in reports)
    trials = sum(len(r.study.trials) for r in reports)
    lines = [f"# MFT leaderboard: {experiment.path.name}", "",
             f"{len(reports)} studies ({evaluated} evaluated, {len(reports) - evaluated} pending), "
             f"{trials} trials. Rebuilt from the files on disk by `python -m mft_search.report`.", ""]
    for report in reports:
        lines += _study_section(experiment.path, report)
    lines += _trials_section([r.study for r in reports])
    return "\n".join(lines).rstrip() + "\n"


def _study_section(exp_dir: Path, report: StudyReport) -> list[str]:
    study = report.study
    lines = [f"## {study.backbone} / {study.domain}", ""]
    if study.summary is None:
        pending = f"{len(study.trials)} trials so far, no studies/{study.slug}/summary.json yet"
        lines += [f"Evaluation pending: {pending}.", ""]
    else:
        lines += _table1(exp_dir, study, study.metric_is_fraction())
    lines += _figures(report)
    return lines


def _table1(exp_dir: Path, study: StudyRecord, percent: bool) -> list[str]:
    lines = table1(study, percent)
    summary = study.summary
    best = summary.row("best_mft")
    if best is not None:
        lines += _selection(exp_dir, best, [g["name"] for g in summary.guards if not g["kept"]])
    return lines + [f"**Verdict:** {summary.verdict or 'none recorded'}", ""]


def table1(study: StudyRecord, percent: bool) -> list[str]:
    """A finished study's Table 1 as Markdown lines: the metric and benchmarks, caveats and skipped
    baselines, every row (mean ± std over seeds) with its paired test gain and interval, the settings
    each split was scored with, and best MFT against each row. The model card (mft_search.export)
    prints the same block, so that the two never disagree."""
    summary = study.summary
    lines = [f"Metric: {summary.metric_name}{' (%)' if percent else ''}, higher is better. "
             f"Validation: {summary.validation_benchmark or 'n/a'}. Test: {summary.test_benchmark or 'none'}.", ""]
    lines += [f"**Caveat:** {caveat}." for caveat in summary.caveats] + ([""] if summary.caveats else [])
    lines += [f"**Skipped:** {why}." for why in summary.skipped] + ([""] if summary.skipped else [])
    if summary.rows:  # none when no trial finished with a metric: then only the verdict speaks
        lines += _rows_table(study, percent)
        lines += _reported_tables(study, percent)
        lines += _best_against_each(study)
    return lines + _guard_lines(study)


def _rows_table(study: StudyRecord, percent: bool) -> list[str]:
    """Table 1, each row's test gain over the unmasked backbone paired over items.parquet's items."""
    lines = ["| Model | Seeds | Validation | Test | Test gain over unmasked, 95% paired CI |", "|---|---:|---:|---:|---|"]
    for row in _ordered(study.summary.rows):
        gain = "—" if row.name == "unmasked" else _paired(study, "test", row.name, "unmasked")
        label = _label(study, row.name) + ("" if row.selected else " (not selected)")
        figures = " | ".join(_over_seeds(row, split, percent) for split in ("validation", "test"))
        lines.append(f"| {label} | {len(row.seeds) or 1} | {figures} | {gain} |")
    return lines + [""] + _seeds_note(study) + _settings_note(study)


def _over_seeds(row: SummaryRow, split: str, percent: bool) -> str:
    """mean ± std over the row's seeds, or its one run's figure."""
    spread = row.spread(split)
    if spread is None:
        return _metric(getattr(row, split), percent)
    mean, std = spread
    return f"{_metric(mean, percent)} ± {_metric(std, percent)}"


def _seeds_note(study: StudyRecord) -> list[str]:
    rows = [r for r in study.summary.rows if r.spread("validation") or r.spread("test")]
    if not rows:
        return []
    first = min(r.seeds[0] for r in rows)
    return [f"Rows run with several seeds show mean ± sample std over them; the paired gains and intervals are "
            f"of their first seed's run ({first}), scored item by item beside the others.", ""]


def _reported_tables(study: StudyRecord, percent: bool) -> list[str]:
    """Where a split's benchmark reports more than the metric that selects (both gsm8k filters,
    HumanEval+'s base, IFEval's strict and loose), each of the others, of each row's first seed."""
    lines = []
    for split in ("validation", "test"):
        rows = [r for r in _ordered(study.summary.rows) if r.reported.get(split)]
        names = list(dict.fromkeys(name for r in rows for name in r.reported[split]))
        if not names:
            continue
        lines += [f"The {split} benchmark's other metrics (first seed):", "",
                  f"| Model | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
        lines += [f"| {_label(study, r.name)} | " + " | ".join(_metric(r.reported[split].get(n), percent)
                                                            for n in names) + " |" for r in rows]
        lines.append("")
    return lines


def _best_against_each(study: StudyRecord) -> list[str]:
    """Best MFT against every other row, on each split where both were scored item by item."""
    lines = []
    for split in ("validation", "test"):
        gains = gains_over(study.items, study.name, split, "best_mft")
        unit = split_unit(study.items, study.name, split)
        if gains:
            listed = "; ".join(f"{_label(study, n)} {g.format(unit)}" for n, g in sorted(gains.items()))
            lines.append(f"- Best MFT against each on {split} (paired over items): {listed}")
    return lines + ([""] if lines else [])


def _guard_lines(study: StudyRecord) -> list[str]:
    """Each guard (domains[].guard): the best mask's change over the unmasked backbone on it, paired
    over items.parquet's items, against the tolerated drop; kept or broken as the sweep decided."""
    lines = []
    for guard in study.summary.guards:
        split = guard_split(guard["name"])
        gain = gains_over(study.items, study.name, split, "best_mft").get("unmasked")
        change = gain.format(split_unit(study.items, study.name, split)) if gain else "n/a (no per-item scores)"
        lines.append(f"- Guard {guard['name']} ({guard['benchmark']}): Best MFT vs unmasked {change}, tolerated "
                     f"drop {guard['max_drop']:g} pts: {'kept' if guard['kept'] else 'broken'}")
    return lines + ([""] if lines else [])


def _label(study: StudyRecord, name: str) -> str:
    row = study.summary.row(name) if study.summary else None
    return (row.label if row else None) or ROW_LABELS.get(name, name)


def _paired(study: StudyRecord, split: str, variant: str, reference: str) -> str:
    gain = gains_over(study.items, study.name, split, variant).get(reference)
    if gain is None:
        return "n/a (no per-item scores)"
    return gain.format(split_unit(study.items, study.name, split))


def _settings_note(study: StudyRecord) -> list[str]:
    """What produced the figures: each split's evaluation settings, as items.parquet records them."""
    rows = study.items.drop_duplicates(["split", "settings"])
    notes = [f"{r['split']}: {r['settings']}" for _, r in rows.iterrows()]
    return [f"Scored as: {'; '.join(notes)}. Gains: mean per-item difference, BCa bootstrap interval; p: exact "
            "McNemar test (0/1 scores).", ""] if notes else []


def _selection(exp_dir: Path, best: SummaryRow, broken: list[str]) -> list[str]:
    """`broken`: the guards the best mask breaks."""
    config = selected_config(best)
    trial = f" (trial {best.trial_id})" if best.trial_id else ""
    if not best.selected:
        # Said here in plain words whatever the verdict's wording: nothing was exported.
        why = (f"**The best mask breaks guard {', '.join(broken)}**" if broken else
               "**No mask's validation gain over the unmasked model was distinguishable from noise**")
        return [f"{why}, so no mask was selected or exported. "
                f"Best trial for reference{trial}: {config or 'parameters not recorded'}.", ""]
    lines = [f"**Selected configuration**{trial}: {config or 'parameters not recorded'}."]
    if best.mask:
        missing = "" if (exp_dir / best.mask).is_file() else " (missing on disk)"
        lines += ["", f"Mask: `{best.mask}`{missing}"]
    return lines + [""]


def selected_config(best: SummaryRow) -> str:
    """The searched values of the best trial, e.g. 'layer group 20-23, mode local, ratio 0.1', or ''."""
    return ", ".join(f"{label} {_value(best.params[name])}" for name, label in CONFIG_PARAMS.items()
                     if _present(best.params.get(name)))


def _figures(report: StudyReport) -> list[str]:
    imp = report.importances
    if imp.values:
        ranked = ", ".join(f"{name} {value:.2f}" for name, value in imp.values.items())
        caveat = f" ({imp.note})" if imp.note else ""
        flag = f" **Flagged:** {imp.flag}." if imp.flag else ""
        lines = [f"- Parameter importances from {imp.trials} completed trials: {ranked}{caveat}{flag}"]
    else:
        lines = [f"- Parameter importances skipped: {imp.note}"]
    lines += [f"- {note}" for note in report.notes]
    lines.append("")
    if report.figures:
        lines += [f"![{title}]({path.as_posix()})" for title, path in report.figures.items()] + [""]
    return lines


def _trials_section(studies: list[StudyRecord]) -> list[str]:
    lines = ["## Trials", "", f"| StudyRecord | {' | '.join(STATUSES)} | other | total |",
             "|---|" + "---:|" * (len(STATUSES) + 2)]
    for study in studies:
        counts = study.trials["status"].value_counts()
        known = [int(counts.get(s, 0)) for s in STATUSES]
        total = len(study.trials)
        lines.append(f"| {study.name} | {' | '.join(map(str, known))} | {total - sum(known)} | {total} |")
    lines.append("")
    for study in studies:
        lines += _top_trials(study)
        lines += _failed_trials(study)
    return lines


def _failed_trials(study: StudyRecord) -> list[str]:
    """Each failed or no-op trial with its reason: a NaN loss, an OOM or a mask that kept every
    weight says what to change."""
    failed = study.trials[study.trials["status"].isin(NOT_CANDIDATES)].drop_duplicates("trial_id", keep="last")
    if failed.empty:
        return []
    lines = [f"### {study.name}: failed and no-op trials", "", "| Trial | Stage | Layer group | Mode | Ratio / threshold | Reason |",
             "|---|---|---|---|---:|---|"]
    for _, t in failed.iterrows():
        reason = str(t.get("error") or "failed").replace("|", "\\|")
        cells = [t["trial_id"], t["stage"], _value(t.get("param.layer_group")), _value(t.get("param.mode")),
                 _value(_cut(t)), reason]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines + [""]


def _cut(t: pd.Series) -> Any:
    """The trial's ratio or threshold, whichever its mode uses."""
    mode = t.get("param.mode")
    return t.get(f"param.{CUT_SETTING[mode]}") if mode in CUT_SETTING else None


def _top_trials(study: StudyRecord) -> list[str]:
    # Ranked as the sweep selects: failed and no-op trials never qualify; ties go to the earlier trial.
    trials = study.trials[~study.trials["status"].isin(NOT_CANDIDATES)].dropna(subset=["metric"])
    scored = trials.sort_values("metric", ascending=False, kind="stable")
    lines = [f"### {study.name}: top {TOP} trials by validation metric (failed and no-op trials excluded)", ""]
    if scored.empty:
        return lines + ["No trial has a validation metric yet.", ""]
    percent = study.metric_is_fraction()
    lines += ["| # | Trial | Stage | Status | Metric | Report | Kept | Layer group | Mode | Ratio / threshold | Init | LR |",
              "|---:|---|---|---|---:|---:|---:|---|---|---:|---|---:|"]
    for rank, (_, t) in enumerate(scored.head(TOP).iterrows(), start=1):
        cells = [rank, t["trial_id"], t["stage"], t["status"], _metric(t["metric"], percent),
                 _value(t["report"]), _kept(t.get("kept_fraction")),
                 *(_value(t.get(f"param.{n}")) for n in ("layer_group", "mode")),
                 _value(_cut(t)), _value(t.get("param.init")), _value(t.get("param.lr"))]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines + [""]


def _ordered(rows: tuple[SummaryRow, ...]) -> list[SummaryRow]:
    """Table 1's order, then any baseline this report does not know, as the sweep listed them."""
    known = list(ROW_LABELS)
    return sorted(rows, key=lambda r: known.index(r.name) if r.name in known else len(known))


def _kept(value: Any) -> str:
    """The fraction of the masked modules' weights the mask keeps, e.g. 90.0%."""
    return f"{100 * value:.1f}%" if _present(value) else "n/a"


def _metric(value: Any, percent: bool) -> str:
    if not _present(value):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _value(value: Any) -> str:
    if not _present(value):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA
