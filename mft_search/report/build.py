"""write_report: the leaderboard and the figures of one experiment directory, written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mft_search.core import files
from mft_search.errors import ConfigError
from mft_search.experiment import layout
from mft_search.report import plots
from mft_search.report.experiment import StudyRecord, load_experiment
from mft_search.report.importance import param_importances
from mft_search.report.leaderboard import StudyReport, render
from mft_search.report.noise import unmasked_reference


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote: the leaderboard and every figure, under the directory it was given."""

    leaderboard: Path | files.Location  # a Location when the experiment is in a bucket
    plots: tuple[Path | files.Location, ...]


def write_report(exp_dir) -> ReportFiles:
    """Rebuild `<exp>/leaderboard.md` and `<exp>/plots/` from the files a sweep wrote.

    Works on a finished or a running experiment and reads nothing but files: results.parquet,
    studies/*/summary.json and studies/*/optuna.journal, none of which it modifies.

        files = write_report("runs/demo")  # or "s3://bucket/runs/demo"
        print(files.leaderboard.read_text())
    """
    exp_dir = files.location(exp_dir)
    experiment = load_experiment(exp_dir)
    reports = [_study_report(exp_dir, study) for study in experiment.studies]
    leaderboard = exp_dir / layout.LEADERBOARD
    write_atomic(leaderboard, render(experiment, reports).encode())
    return ReportFiles(_public(leaderboard), tuple(_public(exp_dir / p) for r in reports for p in r.figures.values()))


def _public(where: files.Location) -> Path | files.Location:
    """A Path on disk, as write_report always returned; a Location in a bucket."""
    return Path(where.path) if where.is_local else where


def _study_report(exp_dir: files.Location, study: StudyRecord) -> StudyReport:
    """Draw and write the study's figures; a figure with nothing to show yet becomes a note."""
    importances = param_importances(study.journal, study.name)
    percent = study.metric_is_fraction()
    reference = unmasked_reference(study)
    drawn = (  # title, file, figure, why it is missing (None: the importances line says why)
        ("optimisation history", "history.png", plots.history(study, percent, reference), "no trials yet"),
        ("best metric by layer group x mask ratio", "heatmap.png",
         plots.ratio_heatmap(study, percent, reference), "no scored local-mode trial yet"),
        ("parameter importances", "importances.png", plots.importance_bars(study, importances), None),
        ("FFT curve", "fft.png", plots.fft_curve(study), None),  # only where an FFT ran
    )
    figures, notes = {}, []
    for title, name, figure, why_not in drawn:
        if figure is None:
            notes += [f"No {title} figure: {why_not}"] if why_not else []
            continue
        relative = PurePosixPath(layout.PLOTS) / study.slug / name
        write_atomic(exp_dir / relative, plots.png_bytes(figure))
        figures[title] = relative
    return StudyReport(study, importances, figures, tuple(notes))


def write_atomic(path: files.Location, data: bytes) -> None:
    """Write the whole file at once (core.files), so that a reader never sees half a file."""
    try:
        files.write_bytes(path, data)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write it ({exc.strerror}); the report writes into the experiment "
                          "directory, so copy it somewhere writable first") from exc
