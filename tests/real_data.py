"""Where the real benchmark files are: ../shared/data beside the repository, or $MFT_SEARCH_REAL_DATA.

Only tests about those files (GSM8K's 7,473 / 1,319 rows, its calculator notes, IFEval's prompts)
read them, and they skip without them. Every other test runs on data the tests generate
(conftest.py's `problems_dir`), so a fresh clone runs them all. MFT_SEARCH_REAL_DATA=/nonexistent
runs the suite as a clone without the folder would.
"""

import os
from pathlib import Path

REAL_DATA = Path(os.environ.get("MFT_SEARCH_REAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
GSM8K = REAL_DATA / "gsm8k"
IFEVAL = REAL_DATA / "ifeval" / "input_data.jsonl"


def absent(path: Path, what: str) -> str:
    """The skip reason of a test about a real data file that is not there."""
    return (f"real {what} data not found at {path}: this test is about the real files "
            "(../shared/data or $MFT_SEARCH_REAL_DATA)")
