"""Errors a user can cause. The CLI prints them on one line and exits with status 2.

Each message names the offending field (or file) and the fix. Bugs are not `MftError`s and
are allowed to traceback.
"""


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
