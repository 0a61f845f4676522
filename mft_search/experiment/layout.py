"""Every path of an experiment directory, named once: the sweep writes them, the report reads them.
The directory is a core.files.Location: a local (or NFS) directory or a bucket prefix.

    <experiment>/.mft_experiment                     this experiment's id (experiment.storage checks it)
    <experiment>/results.parquet                     one row per trial report (experiment.results)
    <experiment>/state.json                          which (study, step) pairs are done (--resume)
    <experiment>/config.yaml                         the validated config it runs, --set overrides applied
    <experiment>/leaderboard.md                      the report (python -m mft_search.report)
    <experiment>/plots/<study>/*.png                 the report's figures
    <experiment>/studies/<backbone>__<domain>/       a study: optuna.journal, summary.json, fft.json, artifacts/,
                                                     budget_stop.json when a budget (or an exhausted space) stopped its probe
    <experiment>/studies/<study>/artifacts/<trial>/  report_NNN.mask.safetensors (MFT) or report_NNN/ (FFT)
    <experiment>/best/<backbone>/<domain>/           mask.safetensors, mask.json, config.yaml of the selection
    <experiment>/cache/                              tokenised data shared by every trial, builds.jsonl
    <experiment>/ray/                                Ray Tune and Train state (what --resume restores)

Inside a trial's artifact directory the job names its own files (train.spec.report_artifact).
"""

from __future__ import annotations

from mft_search.core.files import Location, location

MARKER = ".mft_experiment"
RESULTS = "results.parquet"
STATE = "state.json"
CONFIG = "config.yaml"
LEADERBOARD = "leaderboard.md"
PLOTS = "plots"
STUDIES = "studies"
SUMMARY = "summary.json"
FFT = "fft.json"  # what the fft stage produced (experiment.fft_record)
BUDGET_STOP = "budget_stop.json"
JOURNAL = "optuna.journal"
ARTIFACTS = "artifacts"
CACHE = "cache"
RAY = "ray"
BEST = "best"
BEST_MASK = "mask.safetensors"
BEST_META = "mask.json"
BEST_CONFIG = "config.yaml"


def results_path(exp_dir) -> Location:
    return location(exp_dir) / RESULTS


def study_slug(backbone: str, domain: str) -> str:
    return f"{backbone}__{domain}"


def study_dir(exp_dir, slug: str) -> Location:
    return location(exp_dir) / STUDIES / slug


def best_dir(exp_dir, backbone: str, domain: str) -> Location:
    return location(exp_dir) / BEST / backbone / domain


def run_name(slug: str, what: str) -> str:
    """The name of a study's job, its Train run and its artifact directory: `what` is a trial
    (trial_name) or a study-level run (continued_fft, an evaluation)."""
    return f"{slug}-{what}"


def trial_name(slug: str, stage: str, trial_id: str) -> str:
    return run_name(slug, f"{stage}-{trial_id}")


def is_experiment(exp_dir) -> bool:
    return results_path(exp_dir).exists() or (location(exp_dir) / STUDIES).exists()
