"""`storage` suite: what keeping the Optuna study on a bucket costs per trial.

The sweep keeps the journal on the driver's disk and publishes it whole after every trial
(tune.study.publish_journal, the same call timed here): the cost is one upload of the whole
journal, which grows with the trials. Measured against a real S3 API, moto's server on 127.0.0.1
(started here unless AWS_ENDPOINT_URL names another), and against a local directory, for a study
whose trials look like the demo's (4 parameters, 2 reports each)."""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from mft_search.core.files import location
from mft_search.tune.study import publish_journal

CHECKPOINTS = (10, 100, 500)


def run(quick: bool = False) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = CHECKPOINTS[:2] if quick else CHECKPOINTS
    with _bucket() as bucket, tempfile.TemporaryDirectory() as scratch:
        journal = Path(scratch) / "optuna.journal"
        study = optuna.create_study(study_name="bench", direction="maximize",
                                    storage=JournalStorage(JournalFileBackend(str(journal))))
        targets = {"bucket (S3 API)": f"{bucket}/optuna.journal", "local directory": str(Path(scratch) / "pub.journal")}
        print("# publishing the Optuna journal after a trial: one whole upload (median of 5)")
        print(f"{'trials':>7} {'journal KiB':>12} " + " ".join(f"{name + ' ms':>22}" for name in targets))
        for n in range(1, max(checkpoints) + 1):
            _trial(study)
            if n in checkpoints:
                times = {name: _median_ms(str(journal), target) for name, target in targets.items()}
                print(f"{n:>7} {journal.stat().st_size / 1024:>12.1f} "
                      + " ".join(f"{ms:>22.1f}" for ms in times.values()))


def _trial(study: optuna.Study) -> None:
    trial = study.ask()
    x = trial.suggest_float("ratio", 0.05, 0.3) + trial.suggest_int("start", 0, 2)
    trial.suggest_categorical("mode", ["local", "global"])
    trial.suggest_categorical("init", ["normal", "magnitude"])
    for step in (1, 2):
        trial.report(x * step, step)
    study.tell(trial, x)


def _median_ms(journal: str, target: str) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        publish_journal(journal, target)
        times.append((time.perf_counter() - start) * 1000)
    assert location(target).read_bytes() == Path(journal).read_bytes()
    return statistics.median(times)


@contextmanager
def _bucket():
    """s3://<new bucket> on AWS_ENDPOINT_URL's S3 API, or on a moto server started for the run."""
    import boto3

    name = f"mft-bench-{uuid.uuid4().hex[:8]}"
    if os.environ.get("AWS_ENDPOINT_URL"):
        boto3.client("s3").create_bucket(Bucket=name)
        yield f"s3://{name}"
        return
    from moto.server import ThreadedMotoServer  # the test extra's moto[server]; its own thread, real HTTP

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=name)
        yield f"s3://{name}"
    finally:
        server.stop()
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
