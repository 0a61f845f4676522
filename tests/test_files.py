"""Atomic writes: a failure leaves the old file (or directory) and no temporary behind."""

import os

import pytest

from mft_search.core import files


def test_write_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "a.json"
    files.write_text(path, "old")
    files.write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.parquet"
    files.write_text(path, "old")
    with pytest.raises(RuntimeError), files.atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.parquet"]


def test_directory_replaces_earlier_copy_or_keeps_it_on_failure(tmp_path):
    out = tmp_path / "best"
    with files.atomic_directory(out) as staging:
        (staging / "mask.safetensors").write_text("first")
    with pytest.raises(RuntimeError), files.atomic_directory(out) as staging:
        (staging / "mask.safetensors").write_text("second, half")
        raise RuntimeError("disk full")
    assert (out / "mask.safetensors").read_text() == "first"
    with files.atomic_directory(out) as staging:
        (staging / "mask.json").write_text("third")
    assert sorted(os.listdir(out)) == ["mask.json"]
    assert os.listdir(tmp_path) == ["best"]


def test_a_directory_staged_beside_its_target_is_stored_by_a_rename_not_a_copy(tmp_path):
    # A one-worker job's checkpoint (an FFT's weights: gigabytes) is filled in one call and stored
    # in a later one: staged beside its target, storing it moves no byte and needs no temp disk.
    target = files.location(tmp_path / "run" / "checkpoint_000001")
    staged = target.staging_directory()
    assert staged.parent == tmp_path / "run" and staged.name.startswith(".checkpoint_000001.")
    (staged / "weights.safetensors").write_text("w")
    inode = (staged / "weights.safetensors").stat().st_ino
    assert target.stale_staging() == [staged]  # until stored, a kill would leave it: findable
    target.store_directory(staged)
    assert (tmp_path / "run" / "checkpoint_000001" / "weights.safetensors").stat().st_ino == inode
    assert os.listdir(tmp_path / "run") == ["checkpoint_000001"] and target.stale_staging() == []
