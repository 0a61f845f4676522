"""What every command-line entry point shares: user errors as one line and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import MftError


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main`; an MftError prints `error: <message>` on stderr and returns 2."""
    try:
        return int(main(argv) or 0)
    except MftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
