"""Storage that really fills up or really vanishes in the middle of a sweep.

The experiment directory is a small tmpfs (filled by the test once the first results are on
disk) or a bind mount (lazily unmounted mid-run, as a dropped NFS mount would be). Either way
the sweep must stop with one line and exit status 3, stop its Ray, and leave every result it
wrote readable by `python -m mft_search.report`. Mounting needs root: elsewhere these skip.
A bucket (moto's S3 server) deleted mid-sweep stops it the same way."""

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from test_sweep import _ray_processes, write_config

from mft_search.core import files

pytestmark = pytest.mark.ray


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}): storage faults need root")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _start_sweep(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mft_search.sweep", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the sweep ended before {path.name} was written: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.5)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass
    return filler


def _finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def _assert_one_line_exit_3(returncode: int, stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 3, stderr[-3000:]
    # Ray logs the tracebacks of trials that failed writing (a trial's own storage check may raise
    # StorageError there, depending on timing); the sweep's own error is one line, last, and no
    # traceback passes through the driver's entry point
    assert "mft_search/sweep.py" not in stderr and "OSError" not in lines[-1], stderr[-3000:]
    assert lines[-1].startswith("error: storage: ") and expected in lines[-1], lines[-1]
    assert not _ray_processes(), "the sweep left its Ray running"


def _assert_report_reads(exp: Path, rows_before: int) -> None:
    assert len(pd.read_parquet(exp / "results.parquet")) >= rows_before
    report = subprocess.run([sys.executable, "-m", "mft_search.report", str(exp)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "# MFT leaderboard" in (exp / "leaderboard.md").read_text()


def _config(tmp_path, storage, tiny_backbone, problems_dir) -> Path:
    search = {"num_trials": 6, "max_concurrent_trials": 2,
              "space": {"layer_group": {"size": 2, "start": {"low": 0, "high": 2}}, "mode": ["local"],
                        "ratio": {"low": 0.05, "high": 0.3}, "init": ["normal"]}}
    return write_config(tmp_path, tiny_backbone, problems_dir, storage=str(storage), search=search,
                        baselines=["unmasked"])


def test_storage_that_fills_mid_sweep_stops_it_cleanly_and_keeps_the_results(tmp_path, tiny_backbone, problems_dir,
                                                                             mounts):
    storage = tmp_path / "small"
    storage.mkdir()
    _mount("-t", "tmpfs", "-o", "size=96m", "tmpfs", str(storage))
    mounts.append(storage)
    process = _start_sweep(_config(tmp_path, storage, tiny_backbone, problems_dir))
    exp = storage / "e2e"
    _wait_for(exp / "results.parquet", process)
    rows = len(pd.read_parquet(exp / "results.parquet"))
    filler = _fill(storage)
    _assert_one_line_exit_3(*_finish(process), expected="is full")
    filler.unlink()
    _assert_report_reads(exp, rows)


def test_storage_that_vanishes_mid_sweep_stops_it_cleanly_and_keeps_the_results(tmp_path, tiny_backbone, problems_dir,
                                                                                mounts):
    real, storage = tmp_path / "real", tmp_path / "mounted"
    real.mkdir()
    storage.mkdir()
    _mount("--bind", str(real), str(storage))
    mounts.append(storage)
    process = _start_sweep(_config(tmp_path, storage, tiny_backbone, problems_dir))
    _wait_for(storage / "e2e" / "results.parquet", process)
    rows = len(pd.read_parquet(storage / "e2e" / "results.parquet"))
    subprocess.run(["umount", "-l", str(storage)], check=True)  # the mount drops: writes land elsewhere
    mounts.remove(storage)
    _assert_one_line_exit_3(*_finish(process), expected="disappeared mid-run")
    _assert_report_reads(real / "e2e", rows)  # the storage, back: everything written before is there


def test_a_bucket_deleted_mid_sweep_stops_it_cleanly(tmp_path, tiny_backbone, problems_dir, s3):
    # The bucket as storage (moto's S3 server): deleted once the first results are in it, as a
    # lifecycle rule or a wrong `aws s3 rb` would. Object writes are whole, so nothing is half-written;
    # the sweep must stop with one line, exit 3, and stop its Ray, like a dropped mount.
    bucket = s3.new_bucket()
    process = _start_sweep(_config(tmp_path, f"s3://{bucket}/runs", tiny_backbone, problems_dir))
    _wait_for(files.location(f"s3://{bucket}/runs/e2e/results.parquet"), process)
    s3.delete_bucket(bucket)
    _assert_one_line_exit_3(*_finish(process), expected=f"s3://{bucket}/runs/e2e")
    assert not (tmp_path / "runs").exists()
