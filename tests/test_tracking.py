"""`tracking:` for real: the config's checks without Ray, then one small sweep that logs to a real
local MLflow database (sqlite, no server) and to W&B offline, read back from what they wrote."""

import json
import os

import pytest
import yaml
from test_config import base

from mft_search.config import tracking as tracking_config
from mft_search.config.schema import parse_config
from mft_search.errors import ConfigError


def with_tracking(tracking):
    return {**base(), "tracking": tracking}


def error(tracking) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(with_tracking(tracking))
    return str(exc.value)


def test_a_tracking_section_validates_with_defaults():
    cfg = parse_config(with_tracking({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}, "wandb": {"mode": "offline"}}))
    assert cfg.tracking.mlflow.experiment is None and cfg.tracking.wandb.project is None  # both: the sweep's name
    assert parse_config(base()).tracking is None


@pytest.mark.parametrize("tracking, message", [
    ({"wandb": {"mode": "ofline"}}, "tracking.wandb.mode: 'ofline' is not one of online, offline, disabled "
                                    "(did you mean 'offline'?)"),
    ({"mlflow": {"tracking_uri": "sqlite:///m.db", "experimnet": "x"}},
     "tracking.mlflow.experimnet: unknown key (did you mean 'experiment'?); valid keys: artifact_location, "
     "experiment, tracking_uri"),
    ({"neptune": {}}, "tracking.neptune: unknown key; valid keys: mlflow, wandb"),
    ({"mlflow": {}}, "tracking.mlflow.tracking_uri: required; add it"),
])
def test_a_bad_tracking_field_is_named_with_its_fix(tracking, message):
    assert error(tracking) == message


def test_online_wandb_without_a_key_is_refused_at_load_and_accepted_with_one(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # none there yet
    message = error({"wandb": {"project": "p"}})  # online is the default mode
    assert message.startswith("tracking.wandb.mode: online needs a W&B API key") and "mode: offline" in message
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    parse_config(with_tracking({"wandb": {"project": "p"}}))  # what `wandb login` writes
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a server of one's own: its own entry
    assert error({"wandb": {"project": "p"}}).startswith("tracking.wandb.mode: online needs")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    parse_config(with_tracking({"wandb": {"project": "p"}}))


def test_a_directory_store_is_refused_unless_mlflow_is_told_to_allow_it(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking_config.FILE_STORE_OPT_IN, raising=False)
    message = error({"mlflow": {"tracking_uri": f"file://{tmp_path}/mlruns"}})
    assert message.startswith("tracking.mlflow.tracking_uri: ") and "sqlite:///<path>/mlflow.db" in message
    monkeypatch.setenv(tracking_config.FILE_STORE_OPT_IN, "true")
    parse_config(with_tracking({"mlflow": {"tracking_uri": f"file://{tmp_path}/mlruns"}}))


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_names_the_pip_command(monkeypatch, package):
    monkeypatch.setattr(tracking_config, "installed", lambda name: name != package)
    spec = {"mlflow": {"tracking_uri": "sqlite:///m.db"}, "wandb": {"mode": "offline"}}
    assert error(spec) == (f"tracking.{package}: needs the {package} package, which is not installed; "
                           + tracking_config.PIP[package])


# ---------------------------------------------------------------- a real sweep, read back from the trackers


def wandb_records(path):
    """The records of an offline W&B run file: a 7-byte ':W&B' header, then LevelDB-log chunks in
    32 KiB blocks (7-byte headers: crc, length, type) of protobuf Records. wandb 0.31 has no
    Python reader of its own any more (its Go core writes and syncs them)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, chunk = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + header:pos + header + length], pos + header + length
        if kind in (1, 4):  # FULL, or LAST of a FIRST/MIDDLE.../LAST chain
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_run(run_dir):
    """{"id", "name", "config", "history": [{key: value}], "artifacts": {name: [paths]}} of one offline run."""
    run = {"history": [], "artifacts": {}}
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group,
                       config={i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            run["artifacts"][record.artifact.name] = sorted(e.path for e in record.artifact.manifest.contents)
    return run


def sampled(row) -> dict:
    """A results.parquet row's sampled point (its param.* columns that are set: the space is conditional)."""
    import pandas as pd

    return {k.removeprefix("param."): v.item() if hasattr(v, "item") else v
            for k, v in row.items() if k.startswith("param.") and not pd.isna(v)}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_backbone, problems_dir):
    """A one-epoch sweep (the unmasked baseline only) that tracks to both. It also carries the
    time budget's end-to-end check (one sweep fewer in the suite): a 1 s budget ends the probe
    after its first trial (one at a time), and refine still re-runs it."""
    from test_sweep import sweep, write_config

    tmp = tmp_path_factory.mktemp("tracked")
    lean = yaml.safe_load(write_config(tmp, tiny_backbone, problems_dir, lean=True).read_text())
    tracking = {"mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "mft-tracking"},
                "wandb": {"project": "mft-tracking", "mode": "offline", "dir": str(tmp / "wandb")}}
    config = write_config(
        tmp, tiny_backbone, problems_dir, lean=True, tracking=tracking,
        train={**lean["train"], "epochs": 1}, stages={"probe": {"data_fraction": 0.5}, "refine": {"top_k": 1}},
        search={**lean["search"], "num_trials": 3, "max_concurrent_trials": 1, "asha": None, "time_budget_s": 1},
        selection={"min_gain": -1e9})  # always export the best mask: the summary's artefact
    # W&B's own settings, cache and staged artefacts under tmp, never in the user's home
    env = {**os.environ, "WANDB_SILENT": "true", **{f"WANDB_{d}_DIR": str(tmp / d.lower()) for d in ("CONFIG", "CACHE", "DATA")}}
    result = sweep("--config", str(config), env=env)
    (tmp / "sweep.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp, tmp / "runs" / "e2e", result


@pytest.mark.ray
def test_every_trial_and_the_results_arrive_in_mlflow(tracked):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    tmp, exp, result = tracked
    trials = pd.read_parquet(exp / "results.parquet").groupby("trial_id").last()
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("mft-tracking")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {*trials.index, "e2e-summary"}  # one run per trial, named by its trial id
    for trial_id, row in trials.iterrows():
        run = runs[trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == row["stage"]
        assert run.data.tags["study"] == "tiny/gsm"
        params, metrics = run.data.params, run.data.metrics
        assert params == {k: str(v) for k, v in sampled(row).items()}
        assert not any(k.startswith("params/") for k in params)  # the sampled point, not Tune's config
        assert not any(k.startswith("config/") for k in metrics) and "pid" not in metrics  # what the trial reported
        assert metrics["val_loss"] == pytest.approx(row["val_loss"])
    summary = runs["e2e-summary"].info.run_id
    assert [a.path for a in client.list_artifacts(summary)] == ["best", "leaderboard.md"]
    best = {a.path for a in client.list_artifacts(summary, "best/tiny/gsm")}
    assert best == {f"best/tiny/gsm/{name}" for name in ("config.yaml", "mask.json", "mask.safetensors")}
    # beside the database, not in whatever directory the sweep ran in
    assert experiment.artifact_location == (tmp / "mlartifacts" / "mft-tracking").as_uri()
    assert "MLflow: 4 result file(s) in run e2e-summary" in result.stdout


@pytest.mark.ray
def test_every_trial_and_the_results_arrive_in_offline_wandb(tracked):
    import pandas as pd

    tmp, exp, _ = tracked
    trials = pd.read_parquet(exp / "results.parquet").groupby("trial_id").last()
    runs = [wandb_run(d) for d in sorted((tmp / "wandb" / "wandb").glob("offline-run-*"))]
    by_name = {run["name"]: run for run in runs}
    assert set(by_name) == {*trials.index, "e2e-summary"}
    for trial_id, row in trials.iterrows():
        run = by_name[trial_id]
        assert run["id"] == trial_id and run["group"] == f"tiny__gsm-{row['stage']}"
        assert {k: v for k, v in run["config"].items() if k != "_wandb"} == sampled(row)
        assert run["history"][-1]["val_loss"] == pytest.approx(row["val_loss"])
        assert "config/ratio" not in run["history"][-1]
    assert by_name["e2e-summary"]["artifacts"] == {"e2e-results": [
        "best/tiny/gsm/config.yaml", "best/tiny/gsm/mask.json", "best/tiny/gsm/mask.safetensors", "leaderboard.md"]}


def test_the_summary_of_a_sweep_stored_in_a_bucket_reaches_mlflow_and_wandb(s3, tmp_path, monkeypatch):
    """The summary's files (leaderboard, best mask) live in the bucket: the trackers' clients open
    local paths, so they are downloaded first, and arrive under their own names and folders."""
    from mlflow.tracking import MlflowClient

    from mft_search.core import files
    from mft_search.tune.tracking import log_summary

    for d in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{d}_DIR", str(tmp_path / d.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    exp = files.location(f"s3://{s3.new_bucket()}/runs/demo")
    files.write_text(exp / "leaderboard.md", "| Model |\n")
    files.write_text(exp / "best" / "tiny" / "math" / "mask.json", "{}")
    cfg = parse_config(with_tracking({
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "bucketed"},
        "wandb": {"mode": "offline", "dir": str(tmp_path / "wandb")}}))
    lines = []
    log_summary(cfg, exp, log=lines.append)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("bucketed").experiment_id])[0]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["best", "leaderboard.md"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "best/tiny/math")] == ["best/tiny/math/mask.json"]
    offline = next((tmp_path / "wandb").rglob("offline-run-*"))
    assert wandb_run(offline)["artifacts"] == {"demo-results": ["best/tiny/math/mask.json", "leaderboard.md"]}
    assert lines == ["MLflow: 2 result file(s) in run demo-summary of experiment bucketed",
                     "W&B (offline): 2 result file(s) in run demo-summary"]


@pytest.mark.ray
def test_a_time_budget_stops_the_probe_and_keeps_its_finished_trials(tracked):
    import pandas as pd

    _, exp, result = tracked
    frame = pd.read_parquet(exp / "results.parquet")
    probe = frame[frame["stage"] == "probe"]
    assert probe["trial_id"].nunique() == 1 and (probe["status"] == "completed").all()
    assert (frame["stage"] == "refine").any()  # refine and evaluation still ran
    assert "the probe search stopped early: search.time_budget_s 1 s spent" in result.stdout
    assert "after 1 of 3 trials" in result.stdout
    summary = json.loads((exp / "studies" / "tiny__gsm" / "summary.json").read_text())
    assert "after 1 of 3 trials" in summary["budget_stop"]
    assert "stopped early" in (exp / "leaderboard.md").read_text()
