"""`python -m mft_search.report DIR|URI`: rebuild and print the leaderboard of an experiment (a local
directory, or its prefix in a bucket: s3://BUCKET/PREFIX/NAME)."""

from __future__ import annotations

import argparse

from mft_search.report.build import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mft_search.report",
        description="Rebuild leaderboard.md and plots/ of a finished or running experiment from its files.")
    parser.add_argument("experiment", help="the experiment directory a sweep wrote (<storage>/<name>), or its bucket URI")
    args = parser.parse_args(argv)
    files = write_report(args.experiment)
    print(files.leaderboard.read_text(), end="")
    print(f"\nleaderboard: {files.leaderboard}")
    print(f"plots ({len(files.plots)}):" if files.plots else "plots: none yet")
    for path in files.plots:
        print(f"  {path}")
    return 0
