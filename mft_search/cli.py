"""What every command-line entry point shares: errors a user can act on as one line.

Exit status 2: bad input (nothing was run or written). 3: storage failed during the run
(mft_search.experiment.storage: full or vanished); what was written before is intact.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from mft_search.errors import MftError


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main`; an MftError prints `error: <message>` on stderr and returns its exit status."""
    try:
        return int(main(argv) or 0)
    except MftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
