"""Errors a user can cause. The CLI prints them on one line and exits with status 2.

Each message names the offending field (or file) and the fix. Bugs are not `MftError`s and
are allowed to traceback.
"""

import difflib
from typing import Any


def did_you_mean(word: str, options: Any) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class MftError(Exception):
    """Base of every error caused by user input."""


class ConfigError(MftError):
    """A configuration value is wrong: the message names the field and the fix."""


class MaskFileError(MftError):
    """A mask file is unreadable, tampered with, or belongs to another backbone."""


class DataError(MftError):
    """A dataset cannot be read or lacks the fields the config maps."""


class ArchitectureError(ConfigError):
    """The backbone's architecture has no known mapping of module kinds to module names."""
