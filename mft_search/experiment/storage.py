"""The experiment directory as storage that can fill up or vanish in the middle of a sweep.

A sweep writes for hours into one directory, on a network filesystem or in a bucket. When that
storage fills (ENOSPC, a quota) or disappears (an NFS mount dropped, the directory moved, a bucket
deleted or refusing writes: core.files turns a failed upload into EIO), the sweep must
stop with one clear line rather than record every following trial as "failed", and leave what it
wrote intact: every writer replaces files atomically, so the last good results.parquet,
state.json and summaries stay readable by `python -m mft_search.report`.
"""

from __future__ import annotations

import errno
import uuid

from mft_search.core.files import UPLOAD_REFUSED, Location, location
from mft_search.errors import MftError
from mft_search.experiment.layout import MARKER  # holds the experiment's id: gone or different = storage vanished

MIN_FREE_BYTES = 16 << 20  # below this, the next checkpoint or results write may fail half way
FULL = {errno.ENOSPC, errno.EDQUOT}
GONE = {errno.ESTALE, errno.EIO, errno.EROFS}
# Ray passes a trial's error on as text; these are how an OSError of ours reads there.
FULL_TEXT = ("No space left on device", "Disk quota exceeded")


class StorageError(MftError):
    """Storage failed at run time: not the user's input, so the CLI exits with its own status."""

    exit_status = 3


class Storage:
    """The experiment directory, checked before the sweep writes into it."""

    def __init__(self, exp_dir: Location | str) -> None:
        self.exp_dir = location(exp_dir)
        self.id: str | None = None

    def claim(self) -> None:
        """Mark the directory as this experiment's (keeping the mark a resumed sweep finds)."""
        marker = self.exp_dir / MARKER
        if not marker.exists():
            marker.write_text(uuid.uuid4().hex)
        self.id = marker.read_text().strip()

    def check(self) -> None:
        """StorageError when the directory vanished or is (almost) full."""
        try:
            found = (self.exp_dir / MARKER).read_text().strip()
        except OSError:
            found = None
        if found != self.id:
            raise StorageError(f"storage: {self.exp_dir} disappeared mid-run (its {MARKER} file is gone: a dropped "
                               "mount, a moved directory or a deleted bucket); bring it back, then rerun with --resume")
        free = self.exp_dir.free_bytes()
        if free is not None and free < MIN_FREE_BYTES:
            raise self.full(f"only {free >> 20} MiB free")

    def full(self, why: str) -> StorageError:
        return StorageError(f"storage: {self.exp_dir} is full ({why}); free space there or move the experiment "
                            "to a larger filesystem, then rerun with --resume")

    def failure(self, exc: BaseException) -> StorageError | None:
        """The StorageError behind `exc`: itself, a cause, a storage OSError, or (when a library
        turned the failed write into its own error: Optuna's journal lock, Ray's syncer) the
        state of the storage now."""
        return self._in_chain(exc) or self._now()

    def _now(self) -> StorageError | None:
        try:
            self.check()
        except StorageError as exc:
            return exc
        return None

    def _in_chain(self, exc: BaseException | None) -> StorageError | None:
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, StorageError):
                return exc
            if isinstance(exc, OSError) and exc.errno in FULL:
                return self.full(f"{exc.strerror} writing {exc.filename or 'a file'}")
            if isinstance(exc, OSError) and exc.errno in GONE:
                return StorageError(f"storage: {self.exp_dir} failed ({exc.strerror} on {exc.filename or 'a file'}); "
                                    "check the mount, then rerun with --resume")
            exc = exc.__cause__ or exc.__context__
        return None

    def failed_trial(self, error_text: str) -> StorageError | None:
        """A trial that failed because its writes did: every later trial would fail the same way."""
        hit = next((t for t in FULL_TEXT if t in error_text), None)
        if UPLOAD_REFUSED in error_text:
            return StorageError(f"storage: {self.exp_dir} refused a trial's write ({error_text[-200:]}); check the "
                                "bucket and its credentials, then rerun with --resume")
        return self.full(f"a trial failed with '{hit}'") if hit else None
