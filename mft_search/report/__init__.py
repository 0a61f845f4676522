"""Leaderboard and figures of an experiment, rebuilt from its files alone (no Ray, no running sweep).

    python -m mft_search.report runs/demo        # prints leaderboard.md, lists plots/*.png

Reads results.parquet, studies/*/summary.json and studies/*/optuna.journal; writes
leaderboard.md and plots/<backbone>__<domain>/*.png atomically, so it is safe to run while the
sweep is still writing.
"""

from mft_search.report.build import ReportFiles, write_report
from mft_search.report.command import main

__all__ = ["ReportFiles", "main", "write_report"]
