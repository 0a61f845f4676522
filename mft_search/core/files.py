"""Atomic writes: a reader sees no file or a whole one, never half of one.

Every file of an experiment is written here, by writing a temporary sibling and renaming it over
the target (a rename within one directory is atomic on POSIX filesystems). Concurrent trials,
a killed driver and a full disk all leave either the old file or the new one. Keeping the rule in
one module is also what lets another storage (an object store, where the atomic unit is a
whole-object upload, not a rename) replace it in one place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block succeeds,
    removed when it raises. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open follows the umask
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """A staging directory beside `out` to fill; it replaces `out` (an earlier copy is removed
    first: a resumed run re-exports the same thing) when the block succeeds, and is removed when
    it raises."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield staging
        ordinary_permissions(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ordinary_permissions(root: str | Path) -> None:
    """Give every file and directory under `root` (and `root`) the permissions the umask gives an
    ordinary one: writers that go through temporary files (transformers' save_pretrained writes
    weights 0600) would otherwise leave them unreadable to other users of a shared volume."""
    root = Path(root)
    os.chmod(root, 0o777 & ~_UMASK)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()
