"""core.files on real object-store APIs (moto's S3 server, the GCS emulator): whole-object writes,
reads, and a failed write that leaves the old object, as on a local disk."""

import pickle
import re

import pytest

from mft_search.core import files


def test_a_bucket_location_writes_whole_objects_and_keeps_the_old_one_on_failure(store):
    bucket = store.new_bucket()
    root = files.location(store.uri(bucket, "runs/e"))
    assert str(root) == store.uri(bucket, "runs/e") and not root.is_local  # what was typed, options and all
    files.write_text(root / "a.json", "old")
    with pytest.raises(RuntimeError), files.atomic_path(root / "a.json") as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert (root / "a.json").read_text() == "old"
    with files.atomic_directory(root / "best") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "m.bin").write_bytes(b"m")
    assert store.keys(bucket) == ["runs/e/a.json", "runs/e/best/sub/m.bin"]  # no temporaries, no rename left-overs
    # directories written object by object (no marker objects) are listed, one level or all
    assert (root / "best").is_dir() and [p.name for p in (root / "best").iterdir()] == ["sub"]
    assert [p.name for p in root.iterdir()] == ["a.json", "best"] and [p.name for p in root.glob("b*")] == ["best"]
    assert [str(p.relative_to(root)) for p in root.rglob("*")] == ["a.json", "best", "best/sub", "best/sub/m.bin"]
    with (root / "best").local_copy() as local:
        assert (local / "sub" / "m.bin").read_bytes() == b"m"
    assert root.free_bytes() is None


def test_a_write_to_a_vanished_bucket_is_an_eio_the_sweep_reads_as_storage_gone(store):
    bucket = store.new_bucket()
    where = files.location(store.uri(bucket, "x"))
    store.delete_bucket(bucket)
    with pytest.raises(OSError) as raised:
        files.write_text(where / "results.parquet", "data")
    assert raised.value.errno == 5 and files.UPLOAD_REFUSED in str(raised.value)


def test_a_directory_downloads_with_its_subdirectories(store, tmp_path):
    root = files.location(store.uri(store.new_bucket(), "run"))
    with files.atomic_directory(root / "checkpoint_000001") as staging:
        (staging / "a" / "b").mkdir(parents=True)
        (staging / "a" / "b" / "c.json").write_text("{}")
        (staging / "items.json").write_text("[]")
    local = (root / "checkpoint_000001").download(tmp_path / "fresh" / "checkpoint")
    assert (local / "items.json").read_text() == "[]" and (local / "a" / "b" / "c.json").read_text() == "{}"


def test_a_directory_staged_for_a_bucket_is_uploaded_whole_and_its_staging_removed(store):
    root = files.location(store.uri(store.new_bucket(), "run"))
    target = root / "checkpoint_000001"
    staged = target.staging_directory()
    assert "://" not in str(staged) and staged.is_dir()
    (staged / "weights.safetensors").write_bytes(b"w")
    target.store_directory(staged)
    assert not staged.exists() and (target / "weights.safetensors").read_bytes() == b"w"
    assert target.stale_staging() == []
    again = target.staging_directory()  # a resumed run stores the same checkpoint again: the earlier copy goes
    (again / "sub").mkdir()
    (again / "sub" / "optimizer.pt").write_bytes(b"o")
    target.store_directory(again)
    assert [str(p.relative_to(target)) for p in target.rglob("*")] == ["sub", "sub/optimizer.pt"]


def test_upload_staging_a_killed_process_left_is_removed_by_the_next_process(store, tmp_path, monkeypatch):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system's temporary directory, here
    monkeypatch.setattr(files, "_uploads_swept", False)  # as in a new process
    dead, live, unknown = (tmp_path / f"{files.UPLOAD_PREFIX}{name}" for name in
                           ("999999999_kill", f"{os.getpid()}_mine", "legacy"))
    for left in (dead, live, unknown):
        left.mkdir()
        (left / "results.parquet").write_bytes(b"half")
    root = files.location(store.uri(store.new_bucket(), "run"))
    files.write_text(root / "a.json", "x")
    # the dead process's staging went; this process's and one without a pid stay; the write left none
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, unknown))
    files.write_text(root / "b.json", "y")
    with files.atomic_directory(root / "best") as staged:
        assert staged.parent == tmp_path and staged.name.startswith(f"{files.UPLOAD_PREFIX}{os.getpid()}_")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, unknown))


def test_a_directory_set_aside_is_moved_whole_and_removed(store):
    bucket = store.new_bucket()
    root = files.location(store.uri(bucket, "run"))
    with files.atomic_directory(root / "trial") as staging:
        (staging / "a").mkdir()
        (staging / "a" / "r.json").write_text("{}")
        (staging / "b.json").write_text("[]")
    moved = (root / "trial").rename(root / "aside" / "trial")
    objects = [k for k in store.keys(bucket) if not k.endswith("/")]  # pyarrow's S3 copy adds empty directory markers
    assert objects == ["run/aside/trial/a/r.json", "run/aside/trial/b.json"]
    assert not (root / "trial").exists() and (moved / "a" / "r.json").read_text() == "{}"
    moved.rmtree()
    assert not any(k.startswith("run/aside/trial/") for k in store.keys(bucket)) and not moved.exists()


def test_a_uri_keeps_its_user_and_options_through_every_path_made_from_it(gcs):
    # gs://anonymous@BUCKET/...?endpoint_override=...: every joined path must reach the same store,
    # and its text (written into results.parquet as a mask's path) must open it again
    bucket = gcs.new_bucket()
    root = files.location(gcs.uri(bucket, "runs/"))
    mask = root / "trials" / "t0" / "mask.safetensors"
    assert str(mask) == gcs.uri(bucket, "runs/trials/t0/mask.safetensors")  # readable: options after the path
    mask.write_bytes(b"m")
    assert files.location(str(mask)).read_bytes() == b"m" and files.location(str(mask)) == mask
    assert mask.parent.parent.parent == root and mask.with_name("x").name == "x"
    assert root.rglob("*.safetensors") == [mask] and pickle.loads(pickle.dumps(mask)) == mask  # Ray pickles it
    assert files.join_uri(gcs.uri(bucket, "runs"), "demo/") == gcs.uri(bucket, "runs/demo/")


@pytest.mark.parametrize("uri, fix", [("gs://KEY:SECRET@bucket/runs", "credentials in the SDK's variables"),
                                      ("s3:///runs", "give s3://BUCKET/PREFIX")])
def test_a_uri_with_a_secret_or_no_bucket_is_refused_naming_the_fix(uri, fix):
    with pytest.raises(ValueError, match=re.escape(fix)):
        files.location(uri)


def test_a_reader_never_sees_a_torn_object_while_a_writer_replaces_it(store):
    """The sweep rewrites results.parquet after every trial while a report (or a resumed driver's
    check) reads it. pyarrow reads a bucket object's size and its bytes in separate requests, so a
    reader racing a replacement got the new object's bytes cut at the old size (CI: "Parquet magic
    bytes not found in footer"). Every read must give one whole version."""
    import threading
    import time

    import pandas as pd

    where = files.location(store.uri(store.new_bucket(), "e")) / "results.parquet"
    versions = [pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "v": range(n)}) for n in range(1, 120)]
    blobs = [frame.to_parquet() for frame in versions]  # each version a distinct size, as the rows grow
    where.write_bytes(blobs[0])
    done = threading.Event()

    def replace_again_and_again():
        for blob in blobs[1:]:
            if done.is_set():  # the reader failed: stop before the servers go
                return
            where.write_bytes(blob)
            time.sleep(0.01)  # reads fall between replacements and across them
        done.set()

    writer = threading.Thread(target=replace_again_and_again)
    writer.start()
    reads = 0
    try:
        while not done.is_set():
            data, frame = where.read_bytes(), where.read_parquet()
            assert data in blobs and len(frame) in range(1, 120)
            reads += 1
    finally:
        done.set()
        writer.join()
    assert reads >= 2  # reads that began while the writer ran (a loaded machine reads slowly)
