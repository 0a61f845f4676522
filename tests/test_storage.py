"""The storage guard without Ray: what counts as full or vanished storage, and what does not."""

import errno
import os

import pytest

from mft_search import cli
from mft_search.experiment.storage import MARKER, Storage, StorageError


@pytest.fixture
def storage(tmp_path):
    guard = Storage(tmp_path / "exp")
    guard.exp_dir.mkdir()
    guard.claim()
    return guard


def test_a_claimed_directory_passes_and_a_resumed_sweep_keeps_its_mark(storage):
    storage.check()
    again = Storage(storage.exp_dir)
    again.claim()
    assert again.id == storage.id


def test_a_vanished_or_replaced_directory_is_a_storage_error(storage):
    (storage.exp_dir / MARKER).unlink()
    with pytest.raises(StorageError, match="disappeared mid-run"):
        storage.check()
    (storage.exp_dir / MARKER).write_text("another experiment")
    with pytest.raises(StorageError, match="disappeared mid-run"):
        storage.check()


def test_errors_are_storage_failures_only_when_storage_failed(storage):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results.parquet")
    wrapped = RuntimeError("Ray wrapped it")
    wrapped.__cause__ = full
    assert "is full (No space left on device writing results.parquet)" in str(storage.failure(wrapped))
    assert storage.failure(ValueError("a bug")) is None  # healthy storage: the error is not about it
    assert storage.failure(OSError(errno.ENOENT, "No such file", "data.jsonl")) is None
    assert storage.failed_trial("OSError: [Errno 28] No space left on device") is not None
    assert storage.failed_trial("FloatingPointError: training loss became nan") is None


def test_the_cli_exits_3_for_storage_and_2_for_bad_input(capsys):
    def fails(error):
        return lambda argv: (_ for _ in ()).throw(error)
    assert cli.run(fails(StorageError("storage: x is full"))) == 3
    assert cli.run(fails(cli.MftError("name: bad"))) == 2
    assert capsys.readouterr().err.splitlines() == ["error: storage: x is full", "error: name: bad"]
