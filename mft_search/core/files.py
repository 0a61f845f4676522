"""Where an experiment's files live, and atomic writes to it: a reader sees no file or a whole one.

Every file of an experiment goes through `Location`, a path on a pyarrow filesystem: a local (or
NFS) directory, or an object store (`s3://bucket/prefix`, `gs://bucket/prefix`, any URI
`pyarrow.fs.FileSystem.from_uri` accepts). Callers never ask which: they write with
`write_bytes`/`atomic_path`/`atomic_directory` and read with `read_bytes`/`local_copy`, one code
path. Only the atomic unit differs underneath, because the stores differ:

- a POSIX directory: a temporary sibling renamed over the target (a rename within a directory is
  atomic; mountpoint-s3/gcsfuse mounts cannot do it, which is why buckets are not mounted);
- an object store: the whole object uploaded in one request from a finished local file (an object
  appears whole or not at all; there is no rename and no append).

pyarrow rather than fsspec: Ray Tune and Train take a `pyarrow.fs.FileSystem` as
`storage_filesystem`, so one filesystem object (and one set of credentials) serves both, and
pyarrow is already installed (parquet) with S3 and GCS built in, where fsspec needs s3fs/gcsfs.
Credentials and endpoints come from the SDKs' own variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS),
which pyarrow's bundled AWS and Google SDKs read themselves, or from pyarrow's options in the URI
(`gs://anonymous@bucket/prefix?endpoint_override=host:port`), which every path made from it keeps.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import io
import os
import posixpath
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pyarrow.fs as pafs

_SCHEMES = {"s3": "s3", "gcs": "gs"}  # pyarrow's type_name -> the URI scheme users write
# pyarrow's filesystems whose listings show a directory only where a marker object names it
_LISTS_OBJECTS_ONLY = {"gcs"}
URI_SCHEMES = ("s3", "gs", "gcs")  # the object stores taken as storage (from_uri opens more: untested here)
_CONSISTENT_READ_TRIES = 8  # reads of an object a writer keeps replacing, backing off 0.05 s doubled
UPLOAD_REFUSED = "cannot write to the bucket"  # an upload's error (EIO), as a trial's error text shows it


def is_uri(text: str | os.PathLike) -> bool:
    """Whether `text` names an object store (a scheme other than file://) rather than a local path."""
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


class Location:
    """A file or directory on a pyarrow filesystem, with the part of pathlib.Path the project uses.

    Pickles (Ray ships it to trials), compares by URI, and `str()` gives what a user would type:
    the local path, or `s3://bucket/key` (`gs://user@bucket/key?options` where the URI had them)."""

    def __init__(self, fs: pafs.FileSystem, path: str, user: str = "", query: str = "") -> None:
        self.fs, self.path = fs, path.rstrip("/") or "/"
        # The URI's user and options (`gs://anonymous@bucket/key?endpoint_override=...`) are part of
        # which store this is: every path joined onto it keeps them, so its str() opens the same store
        # again (a mask path recorded in results.parquet is reopened from that text).
        self.user, self.query = user, query

    def _at(self, path: str) -> Location:
        return Location(self.fs, path, self.user, self.query)

    # -- naming -------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self.fs.type_name == "local"

    def __str__(self) -> str:
        if self.is_local:
            return self.path
        scheme = _SCHEMES.get(self.fs.type_name, self.fs.type_name)
        user, query = f"{self.user}@" if self.user else "", f"?{self.query}" if self.query else ""
        return f"{scheme}://{user}{self.path}{query}"  # the options last, as typed: the path stays readable

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if not self.is_local:  # a library asked for a local path: read through local_copy instead
            raise TypeError(f"{self} is in an object store, not on a local filesystem")
        return self.path

    def __eq__(self, other: object) -> bool:
        if isinstance(other, os.PathLike) and not isinstance(other, Location):  # a Path: equal where local
            return self.is_local and self.path == os.path.abspath(os.fspath(other))
        return isinstance(other, Location) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: Location) -> bool:  # sorted() of directory listings
        return self.path < other.path  # not str(): a URI's options after the path would sort 'a/b?..' after 'a?..'

    def __truediv__(self, part: str | os.PathLike) -> Location:
        return self._at(posixpath.join(self.path, str(part)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    @property
    def parent(self) -> Location:
        return self._at(posixpath.dirname(self.path))

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def relative_to(self, other: Location) -> PurePosixPath:
        return PurePosixPath(self.path).relative_to(other.path)

    # -- reading ------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        """The file's bytes, one whole version of it even while a writer replaces it (below)."""
        if self.is_local:  # a rename replaces a local file; an open file keeps the version it opened
            return self._read_once()
        # pyarrow reads an object's size and then its bytes in separate requests, so a read racing a
        # replacement (the sweep rewrites results.parquet after every trial while a report reads it)
        # got the new object cut at the old size. A read is kept only where the object's size and
        # time stood still around it and it gave that many bytes. A replacement of the same size
        # within the store's time resolution (S3: one second) would still pass, since pyarrow's
        # FileInfo shows no ETag: results.parquet, the file read during a sweep, only grows.
        for attempt in range(_CONSISTENT_READ_TRIES):
            before = self._info()
            try:
                data = self._read_once()
            except OSError:  # the object shrank mid-read ("unexpected end of stream"), or is gone
                if attempt == _CONSISTENT_READ_TRIES - 1 or not self.exists():
                    raise
                data = None
            after = self._info()
            if data is not None and len(data) == before.size == after.size and before.mtime == after.mtime:
                return data
            time.sleep(0.05 * 2**attempt)
        raise OSError(errno.EAGAIN, f"the object kept changing in {_CONSISTENT_READ_TRIES} reads", str(self))

    def _read_once(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_parquet(self):
        import pandas as pd  # only where a table is read

        return pd.read_parquet(io.BytesIO(self.read_bytes()))  # one whole version (read_bytes)

    def _children(self, recursive: bool) -> list[Location]:
        if self.fs.type_name not in _LISTS_OBJECTS_ONLY:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive))
            return [self._at(i.path) for i in infos]
        # The directories are inferred from the objects' names, as pyarrow's S3 listing does: on GCS
        # it shows a directory only through a marker object, which an object uploaded on its own
        # (ours, gsutil's) never has. So a listing reads the whole subtree, one level or not.
        found: set[str] = set()
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=True)):
            parts = PurePosixPath(info.path).relative_to(self.path).parts
            found.update(posixpath.join(self.path, *parts[:i]) for i in range(1, (len(parts) if recursive else 1) + 1))
        return [self._at(path) for path in found]

    def iterdir(self) -> Iterator[Location]:
        return iter(sorted(self._children(False)))

    def glob(self, pattern: str) -> list[Location]:
        """Children whose name matches `pattern` (one level: no '**')."""
        return sorted(c for c in self._children(False) if fnmatch.fnmatch(c.name, pattern))

    def rglob(self, pattern: str) -> list[Location]:
        return sorted(c for c in self._children(True) if fnmatch.fnmatch(c.name, pattern))

    @contextmanager
    def local_copy(self) -> Iterator[Path]:
        """A local path holding this file or directory, for libraries that only open paths
        (safetensors, transformers): the path itself when local, else a downloaded copy."""
        if self.is_local:
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="mft_download_") as scratch:
            target = Path(scratch) / (self.name or "root")
            if self.is_dir():
                self.download(target)
            else:
                target.write_bytes(self.read_bytes())
            yield target

    def download(self, target: Path | None = None) -> Path:
        """A local copy of this directory at `target`, or in a new temporary directory when None
        (the directory itself when local: no copy, nothing created)."""
        if self.is_local:
            return Path(self.path)
        target = target or Path(tempfile.mkdtemp(prefix="mft_download_")) / (self.name or "root")
        target.mkdir(parents=True, exist_ok=True)
        if self.fs.type_name in _LISTS_OBJECTS_ONLY:
            # copy_files creates only the directories the store's listing names, and GCS names none
            # without markers: made here from the files' names (a listing S3 downloads do not need)
            for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True)):
                if info.type == pafs.FileType.File:
                    (target / PurePosixPath(info.path).relative_to(self.path)).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(target), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return target

    def free_bytes(self) -> int | None:
        """Free space where this directory is; None on an object store (no capacity to run out of)."""
        return shutil.disk_usage(self.path).free if self.is_local else None

    # -- writing (atomic) ---------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> Location:
        with self.atomic_path() as temporary:
            temporary.write_bytes(data)
        return self

    def write_text(self, text: str) -> Location:
        return self.write_bytes(text.encode())

    @contextmanager
    def atomic_path(self) -> Iterator[Path]:
        """A local temporary file to write; it becomes this file when the block succeeds (nothing
        changes when it raises). Parent directories are created where directories exist."""
        if self.is_local:
            with _replacing(Path(self.path)) as temporary:
                yield temporary
            return
        scratch = upload_scratch()
        try:
            temporary = scratch / self.name
            yield temporary
            self._upload(temporary.read_bytes())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _upload(self, data: bytes) -> None:
        """One whole-object upload; a store that refuses it reads as EIO (storage gone) above."""
        try:
            with self.fs.open_output_stream(self.path) as out:
                out.write(data)
        except OSError as exc:
            raise OSError(errno.EIO, f"{UPLOAD_REFUSED} ({exc})", str(self)) from exc

    @contextmanager
    def atomic_directory(self) -> Iterator[Path]:
        """A local staging directory to fill; it replaces this directory (an earlier copy is removed
        first: a resumed run re-exports the same thing) when the block succeeds.

        On an object store the directory is uploaded file by file, each whole: a reader may see
        some of its files during the upload, never half a file."""
        staged = self.staging_directory()
        try:
            yield staged
            self.store_directory(staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def staging_directory(self) -> Path:
        """A new, empty local directory to fill and then `store_directory` here: beside this
        location on a local disk, so storing it is a rename (no copy, and no temporary disk the
        size of a checkpoint), or in the system's temporary directory for a bucket, which it is
        uploaded from. A hidden name (`.NAME.xxxx`): `stale_staging` finds those a kill left."""
        if self.is_local:
            parent = Path(self.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.name}."))
        return upload_scratch()

    def store_directory(self, staged: Path) -> None:
        """Make the filled `staged` directory (from `staging_directory`) this one, replacing an
        earlier one: a rename on a local disk, each file uploaded whole to a bucket."""
        if self.is_local:
            ordinary_permissions(staged)
            shutil.rmtree(self.path, ignore_errors=True)
            staged.rename(self.path)
            return
        self.rmtree()
        for path in sorted(staged.rglob("*")):
            if path.is_file():
                (self / path.relative_to(staged).as_posix())._upload(path.read_bytes())
        shutil.rmtree(staged, ignore_errors=True)

    def stale_staging(self) -> list[Path]:
        """Staging directories of this location that a killed process left beside it (local only)."""
        if not self.is_local:
            return []
        return sorted(Path(self.path).parent.glob(f".{self.name}.*"))

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """A directory where directories exist; nothing on an object store (a key's prefix is its directory)."""
        if self.is_local:
            Path(self.path).mkdir(parents=parents, exist_ok=exist_ok)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if not self.is_dir():
            return
        try:
            self.fs.delete_dir(self.path)
        except FileNotFoundError:
            # On GCS pyarrow deletes the contents, then the directory's marker object, which a
            # directory uploaded file by file never had: gone is what was asked
            if self.is_dir():
                raise

    def rename(self, target: Location) -> Location:
        """Move a file or directory (on an object store: copy, then delete: not atomic, used to
        set state aside, never to publish it)."""
        if self.is_local:
            self.fs.move(self.path, target.path)
        else:
            pafs.copy_files(self.path, target.path, source_filesystem=self.fs, destination_filesystem=target.fs)
            self.rmtree() if self.is_dir() else self.unlink()
        return target


class BucketUri(NamedTuple):
    scheme: str
    user: str  # before '@': `anonymous` for gs:// (no credentials), else empty
    bucket: str
    key: str  # the prefix inside the bucket, no leading '/'
    query: str  # pyarrow's options for the store (endpoint_override, scheme, region, ...), no '?'


def split_uri(text: str) -> BucketUri:
    """`scheme://[user@]bucket[/key][?options]` in parts; ValueError (naming the fix) for a URI
    with no bucket, or with a secret in it: a Location's text is written into results and logs, so
    credentials come from the SDKs' variables, never from the URI."""
    parts = urllib.parse.urlsplit(text, allow_fragments=False)  # '#' is a valid character in a key
    user, _, bucket = parts.netloc.rpartition("@")
    if not bucket:
        raise ValueError(f"'{text}' names no bucket; give {parts.scheme}://BUCKET/PREFIX")
    if ":" in user:
        raise ValueError(f"'{text}' has a secret before '@', which would be written into results and logs; "
                         "give credentials in the SDK's variables (AWS_SECRET_ACCESS_KEY, "
                         "GOOGLE_APPLICATION_CREDENTIALS) instead")
    return BucketUri(parts.scheme, user, bucket, parts.path.strip("/"), parts.query)


def join_uri(uri: str, name: str) -> str:
    """`name` appended to the path of a bucket URI, before its options: text only, no store opened."""
    path, mark, query = uri.partition("?")
    return f"{path.rstrip('/')}/{name}{mark}{query}"


@functools.cache
def _filesystem(root: str) -> pafs.FileSystem:
    # one filesystem per bucket: from_uri may ask the store for the bucket's region each time
    return pafs.FileSystem.from_uri(root)[0]


def location(where: str | os.PathLike | Location) -> Location:
    """`where` as a Location: a URI (s3://, gs://, ...) on its store, anything else a local path."""
    if isinstance(where, Location):
        return where
    if is_uri(str(where)):
        uri = split_uri(str(where))
        user = f"{uri.user}@" if uri.user else ""
        fs = _filesystem(f"{uri.scheme}://{user}{uri.bucket}" + (f"?{uri.query}" if uri.query else ""))
        return Location(fs, posixpath.join(uri.bucket, uri.key), uri.user, uri.query)
    if str(where).startswith("file://"):
        where = str(where).removeprefix("file://")
    return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(os.fspath(where))))


@contextmanager
def atomic_path(path: str | os.PathLike | Location) -> Iterator[Path]:
    """A local temporary path to write; it becomes `path` when the block succeeds, and is removed
    when it raises (Location.atomic_path)."""
    with location(path).atomic_path() as temporary:
        yield temporary


def write_bytes(path: str | os.PathLike | Location, data: bytes) -> Location:
    return location(path).write_bytes(data)


def write_text(path: str | os.PathLike | Location, text: str) -> Location:
    return write_bytes(path, text.encode())


@contextmanager
def atomic_directory(out: str | os.PathLike | Location) -> Iterator[Path]:
    with location(out).atomic_directory() as staging:
        yield staging


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
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


UPLOAD_PREFIX = "mft_upload_"  # then the staging process's pid and "_"
_uploads_swept = False


def upload_scratch() -> Path:
    """A new directory in the system's temporary directory to stage a bucket upload in, named for
    this process. A process killed mid-upload cannot remove its own, so the first upload of each
    process removes those whose process is gone (a kill would otherwise leave one per write)."""
    global _uploads_swept
    if not _uploads_swept:
        remove_abandoned(Path(tempfile.gettempdir()), UPLOAD_PREFIX)
        _uploads_swept = True
    return Path(tempfile.mkdtemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}_"))


def remove_abandoned(parent: Path, prefix: str) -> None:
    """Delete the directories in `parent` named `prefix`, a pid and "_" or "-" and more, whose
    process is gone. Another machine's pids mean nothing here: use it on local directories only."""
    for stale in parent.glob(f"{prefix}*"):
        pid = stale.name[len(prefix):].replace("-", "_").split("_", 1)[0]
        if stale.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
