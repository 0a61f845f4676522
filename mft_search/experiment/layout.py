"""Every path of an experiment directory, named once: the sweep writes them, the report reads them.

    <experiment>/results.parquet                     one row per trial report (experiment.results)
    <experiment>/studies/<backbone>__<domain>/       a study: optuna.journal, summary.json, artifacts/
    <experiment>/studies/<study>/artifacts/<trial>/  report_NNN.mask.safetensors (MFT) or report_NNN/ (FFT)
    <experiment>/best/<backbone>/<domain>/           the selected mask, its metadata and config
    <experiment>/cache/                              tokenised data shared by every trial
    <experiment>/ray/                                Ray Tune and Train state (what --resume restores)
"""

from __future__ import annotations

from pathlib import Path

RESULTS = "results.parquet"
STUDIES = "studies"
SUMMARY = "summary.json"
JOURNAL = "optuna.journal"
ARTIFACTS = "artifacts"
CACHE = "cache"
RAY = "ray"
BEST = "best"


def results_path(exp_dir: Path) -> Path:
    return Path(exp_dir) / RESULTS


def study_slug(backbone: str, domain: str) -> str:
    return f"{backbone}__{domain}"


def study_dir(exp_dir: Path, slug: str) -> Path:
    return Path(exp_dir) / STUDIES / slug


def trial_name(slug: str, stage: str, trial_id: str) -> str:
    """The name of an MFT trial's job, its Train run and its artifact directory."""
    return f"{slug}-{stage}-{trial_id}"


def is_experiment(exp_dir: Path) -> bool:
    return results_path(exp_dir).exists() or (Path(exp_dir) / STUDIES).exists()
