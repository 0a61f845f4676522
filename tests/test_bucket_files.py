"""core.files on a real S3 API (moto's server): whole-object writes, reads, and a failed write
that leaves the old object, as on a local disk."""

import pytest

from mft_search.core import files


def test_a_bucket_location_writes_whole_objects_and_keeps_the_old_one_on_failure(s3):
    bucket = s3.new_bucket()
    root = files.location(f"s3://{bucket}/runs/e")
    assert str(root) == f"s3://{bucket}/runs/e" and not root.is_local
    files.write_text(root / "a.json", "old")
    with pytest.raises(RuntimeError), files.atomic_path(root / "a.json") as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert (root / "a.json").read_text() == "old"
    with files.atomic_directory(root / "best") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "m.bin").write_bytes(b"m")
    assert s3.keys(bucket) == ["runs/e/a.json", "runs/e/best/sub/m.bin"]  # no temporaries, no rename left-overs
    assert (root / "best").is_dir() and [p.name for p in (root / "best").iterdir()] == ["sub"]
    with (root / "best").local_copy() as local:
        assert (local / "sub" / "m.bin").read_bytes() == b"m"
    assert root.free_bytes() is None


def test_a_write_to_a_vanished_bucket_is_an_eio_the_sweep_reads_as_storage_gone(s3):
    bucket = s3.new_bucket()
    where = files.location(f"s3://{bucket}/x")
    s3.delete_bucket(bucket)
    with pytest.raises(OSError) as raised:
        files.write_text(where / "results.parquet", "data")
    assert raised.value.errno == 5 and files.UPLOAD_REFUSED in str(raised.value)


def test_a_directory_downloads_with_its_subdirectories(s3, tmp_path):
    root = files.location(f"s3://{s3.new_bucket()}/run")
    with files.atomic_directory(root / "checkpoint_000001") as staging:
        (staging / "a" / "b").mkdir(parents=True)
        (staging / "a" / "b" / "c.json").write_text("{}")
        (staging / "items.json").write_text("[]")
    local = (root / "checkpoint_000001").download(tmp_path / "fresh" / "checkpoint")
    assert (local / "items.json").read_text() == "[]" and (local / "a" / "b" / "c.json").read_text() == "{}"


def test_a_directory_staged_for_a_bucket_is_uploaded_whole_and_its_staging_removed(s3):
    root = files.location(f"s3://{s3.new_bucket()}/run")
    target = root / "checkpoint_000001"
    staged = target.staging_directory()
    assert not str(staged).startswith("s3:") and staged.is_dir()
    (staged / "weights.safetensors").write_bytes(b"w")
    target.store_directory(staged)
    assert not staged.exists() and (target / "weights.safetensors").read_bytes() == b"w"
    assert target.stale_staging() == []
