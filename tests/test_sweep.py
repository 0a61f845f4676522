"""The sweep command for real: bad input, --dry-run, a small end-to-end sweep on a local Ray,
and a driver killed mid-sweep that --resume finishes without re-running finished trials.

Each sweep starts its own Ray in a subprocess, as a user's command does (slow: ~1-2 minutes)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from processes import kill_session, processes

from mft_search.config.schema import load_config_file
from mft_search.core import files
from mft_search.errors import ConfigError
from mft_search.tune.cluster import check_cluster

pytestmark = pytest.mark.ray


def write_config(tmp_path, backbone, data_dir, *, lean: bool = False, **overrides) -> Path:
    """The end-to-end sweep's YAML; `lean` drops what a test of the search stages does not look at
    (the test benchmark, every baseline but unmasked), which halves the evaluation after them."""
    cfg = {
        "name": "e2e",
        "storage": str(tmp_path / "runs"),
        "backbones": [{"source": backbone.source, "name": "tiny"}],
        "domains": [{
            "name": "gsm",
            "train": {"source": str(data_dir / "train.jsonl"), "prompt_field": "question",
                      "response_field": "answer", "limit": 96, "validation_fraction": 0.25, "max_length": 512},
            "validation": None,  # select on validation loss: fast, and distinct enough for ASHA
            "test": {"evaluator": "gsm8k", "source": str(data_dir / "test.jsonl"), "limit": 2, "max_new_tokens": 4},
        }],
        "train": {"lr": 0.02, "epochs": 2, "global_batch_size": 16, "micro_batch_size": 8},
        "search": {"num_trials": 4, "max_concurrent_trials": 2, "asha": {"grace_period": 1, "reduction_factor": 2},
                   "space": {"layer_group": {"size": 2, "start": {"low": 0, "high": 2}}, "mode": ["local", "global"],
                             "ratio": {"low": 0.05, "high": 0.3}, "threshold": {"low": -0.04, "high": -0.01},
                             "init": ["normal", "magnitude"]}},
        "stages": {"probe": {"data_fraction": 0.5}, "refine": {"top_k": 1}},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
        "baselines": ["unmasked", "random", "l1", "wanda", "revert", "continued_fft"],
        "seeds": 1,  # re-runs over seeds cost a training each: the shared sweep alone tests them
    }
    if lean:
        cfg["domains"][0]["test"], cfg["baselines"] = None, ["unmasked"]
    for key, value in overrides.items():
        cfg[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sweep(*args, timeout=900, **kwargs):
    return subprocess.run([sys.executable, "-m", "mft_search.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def sweep_here(capsys, *args) -> subprocess.CompletedProcess:
    """The sweep command in this process, as `python -m mft_search.sweep` runs it (cli.run of its
    main): for commands that end before Ray starts (a refusal, a dry run), without a new
    interpreter's ~5 s of imports. The sweeps themselves run as subprocesses, as a user's do."""
    from mft_search import cli
    from mft_search import sweep as command

    capsys.readouterr()
    code = cli.run(command.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_a_command_line_override_is_validated_like_the_yaml(tmp_path, tiny_backbone, problems_dir, capsys,
                                                            monkeypatch):
    # --storage with a URI once bypassed validation and wrote under ./s3:/ in the working directory.
    config = write_config(tmp_path, tiny_backbone, problems_dir)
    monkeypatch.chdir(tmp_path)
    result = sweep_here(capsys, "--config", config, "--storage", "ftp://host/runs", "--dry-run")
    assert error_line(result).startswith("error: --storage: 'ftp://host/runs' is not a bucket URI")
    assert not (tmp_path / "ftp:").exists()


def test_dry_run_validates_and_prints_the_plan_and_writes_nothing(tmp_path, tiny_backbone, problems_dir, capsys):
    result = sweep_here(capsys, "--config", write_config(tmp_path, tiny_backbone, problems_dir), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "studies (backbone x domain): 1 x 1 = 1" in result.stdout and "probe 4 trials" in result.stdout
    assert not (tmp_path / "runs").exists()
    # --set overrides reach the plan, and a bad one is refused naming the option
    config = str(write_config(tmp_path, tiny_backbone, problems_dir))
    result = sweep_here(capsys, "--config", config, "--set", "search.num_trials=6", "--dry-run")
    assert "probe 6 trials" in result.stdout
    assert error_line(sweep_here(capsys, "--config", config, "--set", "train.lr=-1", "--dry-run")).startswith(
        "error: --set train.lr=-1: train.lr:")


@pytest.mark.parametrize("change, expected", [
    ({"search": {"num_trials": 2, "space": {"layer_group": {"size": 2, "start": {"low": 0, "high": 3}}}}},
     "search.space.layer_group: start 3 + size 2 exceeds"),
    ({"storage": "/proc/version/runs"}, "storage:"),
    ({"trainn": {"lr": 0.1}}, "unknown key (did you mean 'train'?)"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(tmp_path, tiny_backbone, problems_dir, change,
                                                                expected, capsys):
    result = sweep_here(capsys, "--config", write_config(tmp_path, tiny_backbone, problems_dir, **change))
    assert expected in error_line(result)
    assert not (tmp_path / "runs" / "e2e").exists()
    assert not _ray_processes(), "the command left its Ray running"


def test_a_trial_the_cluster_cannot_place_is_one_line_exit_2_and_stops_the_ray_it_started(tmp_path, tiny_backbone,
                                                                                          problems_dir):
    # The one refusal that comes after Ray started (what the cluster holds): a command of its own.
    resources = {"workers_per_trial": 64, "cpus_per_worker": 1}
    result = sweep("--config", str(write_config(tmp_path, tiny_backbone, problems_dir, resources=resources)))
    assert "resources: a trial needs 64 worker(s)" in error_line(result)
    assert not (tmp_path / "runs" / "e2e").exists()
    assert not _ray_processes(), "the command left its Ray running"


def test_a_test_set_that_shares_prompts_with_training_is_refused(tmp_path, tiny_backbone, problems_dir, capsys):
    # Three held-out sets where they exist, and none may hold a training prompt: here the test
    # benchmark reads 5 rows of the training file itself (whitespace changed in one of them).
    rows = (problems_dir / "train.jsonl").read_text().splitlines()[:5]
    first = json.loads(rows[0])
    rows[0] = json.dumps({**first, "question": "  " + first["question"].replace(" ", "  ") + "\n"})
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text("\n".join(rows) + "\n")
    config = write_config(tmp_path, tiny_backbone, problems_dir)
    cfg = yaml.safe_load(config.read_text())
    cfg["domains"][0]["test"].update(source=str(leaked), limit=None)
    config.write_text(yaml.safe_dump(cfg))
    line = error_line(sweep_here(capsys, "--config", config, "--dry-run"))
    assert line.startswith("error: domains[0] (gsm): 'train' and 'test' share 5 prompts"), line
    assert not (tmp_path / "runs" / "e2e").exists()


def test_an_unreadable_tokenizer_is_refused_before_ray_starts(tmp_path, tiny_backbone, problems_dir, capsys):
    import ray

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone.source, backbone)
    (backbone / "tokenizer.json").write_text("{not json")
    config = write_config(tmp_path, tiny_backbone, problems_dir,
                          backbones=[{"source": str(backbone), "name": "tiny"}])
    assert "backbones[0].source: cannot read a tokenizer" in error_line(sweep_here(capsys, "--config", config))
    assert not (tmp_path / "runs" / "e2e").exists()
    assert not ray.is_initialized() and not _ray_processes(), "the command started Ray"


@pytest.mark.parametrize("nodes, workers, cpus, expected", [
    ([{"CPU": 1}, {"CPU": 1}], 1, 4, "resources: a trial needs 1 worker(s) x (4 CPU, 0 GPU)"),
    # two workers' CPUs and no more: the trial's Tune driver (0.01 CPU) has no room, the trial never starts
    ([{"CPU": 2}], 2, 1, "resources: a trial needs 2 worker(s) x (1 CPU, 0 GPU)"),
    # multi-worker trials' drivers are pinned to the head: a head without CPUs can never start one
    ([{"CPU": 0, "node:__internal_head__": 1}, {"CPU": 4}], 2, 1, "run their drivers on the head node"),
])
def test_the_cluster_check_refuses_unplaceable_trials(tmp_path, tiny_backbone, problems_dir, nodes, workers, cpus,
                                                      expected):
    # check_cluster reads what ray.nodes() gives; a fake cluster costs no Ray start (storage and the
    # state API are checked on a real two-node cluster: tests/test_cluster_storage.py)
    cfg = load_config_file(write_config(tmp_path, tiny_backbone, problems_dir,
                                        resources={"workers_per_trial": workers, "cpus_per_worker": cpus}))
    cluster = {"resources": {"CPU": sum(n["CPU"] for n in nodes)}, "nodes": [{"Resources": n} for n in nodes]}
    with pytest.raises(ConfigError) as info:
        check_cluster(cfg, cluster, tmp_path / "runs" / "e2e")
    assert expected.format(exp=tmp_path / "runs" / "e2e") in str(info.value)


def _ray_processes() -> list[str]:
    return [*processes("raylet").values(), *processes("gcs_server").values()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_backbone, problems_dir):
    tmp_path = tmp_path_factory.mktemp("sweep")
    # One trial at a time: which of two concurrent trials reports its first epoch first decides
    # what ASHA prunes, and these tests need both a pruned trial and two finished ones (the
    # importance figure). In order, trials 1 and 2 finish and 3 and 4 are pruned, every run.
    config = yaml.safe_load(write_config(tmp_path, tiny_backbone, problems_dir).read_text())
    search = {**config["search"], "max_concurrent_trials": 1}
    # A guard on 4 held-out problems (training-file rows past the 96 the domain reads), 4 tokens each
    rows = (problems_dir / "train.jsonl").read_text().splitlines()[300:304]
    (tmp_path / "guard.jsonl").write_text("\n".join(rows) + "\n")
    domain = {**config["domains"][0], "guard": [{"name": "held_out", "max_drop": 5.0, "benchmark": {
        "evaluator": "gsm8k", "source": str(tmp_path / "guard.jsonl"), "max_new_tokens": 4}}]}
    result = sweep("--config", str(write_config(tmp_path, tiny_backbone, problems_dir, search=search, seeds=2,
                                                domains=[domain])))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / "runs" / "e2e", result


def test_a_sweep_writes_every_output(finished):
    from mft_search.tune.study import journal_copies

    exp, result = finished
    assert "# MFT leaderboard" in result.stdout and "trial" in result.stdout
    assert (exp / "studies" / "tiny__gsm" / "optuna.journal").exists()  # published: its working copy is gone
    assert not journal_copies(files.location(exp)).exists()
    frame = pd.read_parquet(exp / "results.parquet")
    probe = frame[frame["stage"] == "probe"]
    assert probe["trial_id"].nunique() == 4 and (frame["stage"] == "refine").any()
    assert {"param.layer_group", "param.mode", "metric", "val_loss", "status", "wall_s", "seed"} <= set(frame.columns)
    summary = json.loads((exp / "studies" / "tiny__gsm" / "summary.json").read_text())
    names = {row["name"] for row in summary["rows"]}
    # The continued-FFT control's best epoch is a row of its own only when it is not its last
    assert names - {"continued_fft_best"} == {"unmasked", "random", "l1", "wanda", "continued_fft", "best_mft"}
    labels = {row["name"]: row["label"] for row in summary["rows"]}
    assert labels["continued_fft"] == "More FFT from the backbone, final (epoch 2)" and labels["unmasked"] is None
    assert all(row["test"] is not None for row in summary["rows"])
    assert (exp / "leaderboard.md").exists()
    for plot in ("history", "heatmap", "importances"):
        assert (exp / "plots" / "tiny__gsm" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = next(row for row in summary["rows"] if row["name"] == "best_mft")
    exported = exp / "best" / "tiny" / "gsm"
    assert best["selected"] == exported.exists()
    if best["selected"]:
        assert {p.name for p in exported.iterdir()} == {"mask.safetensors", "mask.json", "config.yaml"}
    # Every evaluation's per-item scores: validation losses per row (this domain has no benchmark)
    # and the test benchmark's 0/1 scores, the same items for every variant of a split
    items = pd.read_parquet(exp / "items.parquet")
    assert set(items["split"]) == {"validation", "test", "guard:held_out"}
    assert set(items.loc[items["split"] == "test", "variant"]) == names
    assert set(items.loc[items["split"] == "validation", "variant"]) == names - {"continued_fft", "continued_fft_best"}
    assert set(items.loc[items["split"] == "test", "score"]) <= {0.0, 1.0}
    assert items.groupby(["split", "variant"])["item"].apply(frozenset).groupby("split").nunique().eq(1).all()
    assert "95% paired CI" in (exp / "leaderboard.md").read_text()
    # Both gsm8k filters are reported (lm-eval's convention), the first selecting: each has its column
    assert set(best["reported"]["test"]) == {"accuracy_strict", "accuracy_flexible"}  # "accuracy" is the Test column
    assert "| Model | accuracy_strict | accuracy_flexible |" in (exp / "leaderboard.md").read_text()
    # Selected on the training source's carve-out, which the backbone may have seen: said where read
    assert "carved out of train.source" in summary["caveats"][0]
    assert "**Caveat:** selection is on 25% carved out" in (exp / "leaderboard.md").read_text()
    # No pretrained model named: revert cannot run, and the leaderboard says so and how to fix it
    assert "**Skipped:** revert skipped for tiny: it needs the pretrained model" in (exp / "leaderboard.md").read_text()


def test_the_selected_point_the_random_mask_and_the_control_run_again_with_every_seed(finished):
    exp, result = finished
    items = pd.read_parquet(exp / "items.parquet")
    seeds = items.groupby(["split", "variant"])["seed"].apply(lambda s: sorted(set(s))).to_dict()
    for variant in ("best_mft", "random"):
        assert seeds["validation", variant] == seeds["test", variant] == [0, 1]
    assert seeds["test", "continued_fft"] == [0, 1]  # its validation figure comes from its own run
    assert seeds["test", "unmasked"] == seeds["test", "l1"] == [0]  # deterministic: run once
    # The replicate is a training of its own at the selected point, with its own mask
    study = exp / "studies" / "tiny__gsm"
    summary = json.loads((study / "summary.json").read_text())
    best = next(row for row in summary["rows"] if row["name"] == "best_mft")
    assert best["seeds"] == [0, 1] and len(best["validation_seeds"]) == len(best["test_seeds"]) == 2
    assert best["validation"] == best["validation_seeds"][0]  # the first seed is the searched run
    replicate = list(study.glob(f"artifacts/*-{best['trial_id']}-seed1/report_*.mask.safetensors"))
    assert replicate and "seed 1: the selected configuration trained again" in result.stdout
    control = next(row for row in summary["rows"] if row["name"] == "continued_fft")
    assert control["seeds"] == [0, 1] and None not in control["test_seeds"]
    board = (exp / "leaderboard.md").read_text()
    assert "| Best MFT" in board and "mean ± sample std over them" in board
    row = next(line for line in board.splitlines() if line.startswith("| Best MFT"))
    assert row.split("|")[2].strip() == "2" and "±" in row.split("|")[3]


def test_a_guard_is_scored_by_every_trial_constrains_optuna_and_is_checked_for_the_selected_mask(finished):
    exp, _ = finished
    items = pd.read_parquet(exp / "items.parquet")
    split = items[items["split"] == "guard:held_out"]
    assert sorted(split["variant"].unique()) == ["best_mft", "unmasked"] and len(split) == 8
    reference = split[split["variant"] == "unmasked"]["score"].mean()
    frame = pd.read_parquet(exp / "results.parquet").dropna(subset=["metric"])
    assert frame["guard/held_out/metric"].notna().all()  # every report of every trial scored the guard
    # The searched trials that Optuna was told of (a failed one carries no constraint); refine
    # re-runs points without Optuna.
    probe = frame[(frame["stage"] == "probe") & (frame["status"] != "failed")]
    best = probe.sort_values(["metric", "report"], ascending=[False, True]).groupby("trial_id").head(1)
    expected = {r.trial_id: round(reference - r["guard/held_out/metric"] - 0.05, 9) for _, r in best.iterrows()}
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "studies" / "tiny__gsm" / "optuna.journal")))
    told = [t for t in optuna.load_study(study_name="tiny/gsm", storage=storage).trials
            if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(told) == len(expected)
    assert sorted(t.constraints["held_out"] for t in told) == pytest.approx(sorted(expected.values()))
    summary = json.loads((exp / "studies" / "tiny__gsm" / "summary.json").read_text())
    assert [g["name"] for g in summary["guards"]] == ["held_out"]
    line = next(l for l in (exp / "leaderboard.md").read_text().splitlines() if l.startswith("- Guard held_out"))
    assert f"(gsm8k ({exp.parent.parent / 'guard.jsonl'})): Best MFT vs unmasked " in line
    assert line.endswith(f"tolerated drop 5 pts: {'kept' if summary['guards'][0]['kept'] else 'broken'}")


def test_the_driver_tokenises_each_data_part_once_and_trials_only_read_it(finished):
    exp, _ = finished
    builds = [json.loads(line) for line in (exp / "cache" / "builds.jsonl").read_text().splitlines()]
    files = [b["file"] for b in builds]
    assert len(files) == len(set(files)) == len(list((exp / "cache").glob("*.parquet")))
    assert {b["program"] for b in builds} == {"sweep.py"}, "a trial tokenised data"
    assert {f.split("-")[0] for f in files} == {"train", "validation"}


def test_each_report_says_where_the_trial_time_went(finished):
    exp, _ = finished
    frame = pd.read_parquet(exp / "results.parquet").dropna(subset=["metric"])
    phases = frame[["time_load_s", "time_train_s", "time_eval_s", "time_save_s"]]
    assert (phases > 0).all().all() and (phases.sum(axis=1) <= frame["wall_s"] + 1e-6).all()


def test_asha_stopped_trials_are_pruned_in_the_optuna_study(finished):
    exp, _ = finished
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "studies" / "tiny__gsm" / "optuna.journal")))
    study = optuna.load_study(study_name="tiny/gsm", storage=storage)
    states = [t.state.name for t in study.trials]
    frame = pd.read_parquet(exp / "results.parquet")
    statuses = frame[frame["stage"] == "probe"].groupby("trial_id")["status"].first().tolist()
    assert sorted(states) == sorted({"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}[s] for s in statuses)
    assert "PRUNED" in states, "ASHA stopped no trial: the marking went untested"
    # One number per trial: a completed trial's Optuna value is the best report selection ranks it by
    probe = frame[frame["stage"] == "probe"]
    best = sorted(probe[probe["status"] == "completed"].groupby("trial_id")["metric"].max().round(9))
    assert sorted(round(t.value, 9) for t in study.trials if t.state.name == "COMPLETE") == best


def test_report_rebuilds_the_leaderboard_from_disk(finished):
    exp, _ = finished
    before = (exp / "leaderboard.md").read_text()
    (exp / "leaderboard.md").unlink()
    result = subprocess.run([sys.executable, "-m", "mft_search.report", str(exp)], capture_output=True, text=True)
    assert result.returncode == 0 and (exp / "leaderboard.md").read_text() == before


def test_an_existing_experiment_is_never_overwritten(finished, capsys):
    exp, _ = finished
    config = exp.parent.parent / "sweep.yaml"
    assert "already holds an experiment; pass --resume" in error_line(sweep_here(capsys, "--config", config))


def test_the_config_that_ran_is_saved_and_a_resume_with_another_is_refused(finished, capsys):
    exp, _ = finished
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    assert saved["search"]["max_concurrent_trials"] == 1 and saved["name"] == "e2e"
    config = exp.parent.parent / "sweep.yaml"
    line = error_line(sweep_here(capsys, "--config", config, "--resume", "--set", "train.lr=0.5"))
    assert line.startswith("error: --resume: this config differs") and "train.lr: 0.02 then, 0.5 now" in line


@pytest.mark.parametrize("where", ["bucket", "torn"])
def test_a_killed_driver_resumes_without_losing_or_rerunning_finished_trials(tmp_path, tiny_backbone, problems_dir,
                                                                            where, request):
    """"bucket": the experiment in S3 (moto's server on 127.0.0.1): every output goes there and
    nothing to the local disk, and --resume runs as on another machine (a fresh HOME and temp dir:
    no local state at all), then the report rebuilds the leaderboard from the bucket. "torn": a
    local directory, Tune's state torn as a kill during its own save leaves it."""
    s3 = request.getfixturevalue("s3") if where == "bucket" else None
    storage = f"s3://{s3.new_bucket()}/runs" if s3 else str(tmp_path / "runs")
    config = write_config(tmp_path, tiny_backbone, problems_dir, lean=True, storage=storage,
                          stages={"probe": {"data_fraction": 0.5}, "refine": {"top_k": 0}})
    exp = files.location(storage) / "e2e"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # bucket: both runs are the one command a retried RayJob runs (clusters/kuberay/rayjob.yaml), which
    # starts the experiment the first time and resumes it the second; torn: the plain forms.
    auto = ["--resume", "auto"] if where == "bucket" else []
    driver = subprocess.Popen([sys.executable, "-m", "mft_search.sweep", "--config", str(config), *auto], cwd=cwd,
                              env=_machine(tmp_path / "first", request), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not _finished_trials(exp):
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    before = _finished_trials(exp)
    assert before, "no trial finished before the deadline"
    assert len(before) < 4, "the probe had ended before the kill: nothing was left to resume"
    if where == "torn":  # as a kill during Tune's own save leaves it: --resume must not depend on it
        (exp / "ray" / "tiny__gsm-probe" / "tuner.pkl").write_bytes(b"")

    result = sweep("--config", str(config), *(auto or ["--resume"]), cwd=cwd, env=_machine(tmp_path / "second", request))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not auto or f"--resume auto: resuming the experiment in {exp}" in result.stdout
    after = (exp / "results.parquet").read_parquet()
    probe = after[after["stage"] == "probe"]
    # Tune saves its state every 10 s or more (uploads it to a bucket every 30 s): a trial it had not
    # saved yet is unknown to the restored Tune, which runs another in its place; such a trial's rows
    # stay (finished on record) or are marked interrupted. The budget is met, nothing is left "running".
    ended = probe[probe["status"] != "interrupted"]
    assert ended["trial_id"].nunique() >= 4 and "running" not in set(probe["status"])
    if where == "torn":  # Tune's state lost, the records say what ended: exactly the budget
        assert ended["trial_id"].nunique() == 4 and "could not be restored" in result.stdout
    for trial_id, rows in before.items():
        kept = probe[probe["trial_id"] == trial_id]
        assert kept["status"].iloc[0] == rows["status"].iloc[0]
        assert kept["metric"].tolist() == rows["metric"].tolist()  # not re-run: the same reports
    assert (exp / "studies" / "tiny__gsm" / "summary.json").exists()
    if s3 is not None:
        _assert_all_in_the_bucket(s3, exp, cwd, tmp_path, ended["trial_id"].nunique(), request)


def _machine(root: Path, request) -> dict[str, str]:
    """The environment of a sweep on a machine of its own: its own HOME and temp dir (the driver's
    working copy of the Optuna journal, the tokenised-data cache), empty at first."""
    home, temp = root / "home", Path(tempfile.mkdtemp(prefix="m", dir="/tmp"))  # short: Ray's socket paths
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    home.mkdir(parents=True)
    return {**os.environ, "HOME": str(home), "TMPDIR": str(temp)}


def _assert_all_in_the_bucket(s3, exp, cwd: Path, tmp_path: Path, finished: int, request) -> None:
    bucket, prefix = exp.path.split("/", 1)
    keys = {k.removeprefix(prefix + "/") for k in s3.keys(bucket, prefix)}
    for output in ("results.parquet", "items.parquet", "state.json", "config.yaml", "leaderboard.md",
                   "studies/tiny__gsm/summary.json", "studies/tiny__gsm/optuna.journal",
                   "plots/tiny__gsm/history.png"):
        assert output in keys, f"{output} is not in the bucket: {sorted(keys)[:40]}"
    summary = json.loads((exp / "studies" / "tiny__gsm" / "summary.json").read_text())
    if any(row.get("selected") for row in summary["rows"]):
        assert "best/tiny/gsm/mask.safetensors" in keys
    assert any(k.startswith("studies/tiny__gsm/artifacts/") and k.endswith(".mask.safetensors") for k in keys)
    assert any(k.startswith("ray/tiny__gsm-probe/") for k in keys)  # Ray Tune's own state
    assert not list(cwd.iterdir()) and not (tmp_path / "runs").exists(), "an output was written to the local disk"
    # The published Optuna journal holds every finished trial, and the report reads the bucket alone.
    with (exp / "studies" / "tiny__gsm" / "optuna.journal").local_copy() as journal:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        told = [t for t in optuna.load_study(study_name="tiny/gsm", storage=storage).trials if t.state.is_finished()]
    assert len(told) >= finished
    s3.client().delete_object(Bucket=bucket, Key=f"{prefix}/leaderboard.md")
    report = subprocess.run([sys.executable, "-m", "mft_search.report", str(exp)], capture_output=True, text=True,
                            cwd=cwd, env=_machine(tmp_path / "third", request))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "# MFT leaderboard" in (exp / "leaderboard.md").read_text() and not list(cwd.iterdir())


def _finished_trials(exp) -> dict:
    path = exp / "results.parquet"
    if not path.exists():
        return {}
    frame = path.read_parquet()
    done = frame[frame["status"].isin(["completed", "pruned"])]
    return {t: rows for t, rows in done.groupby("trial_id")}


def test_a_killed_trial_process_is_retried_or_recorded_and_the_sweep_finishes(tmp_path, tiny_backbone, problems_dir):
    # SIGKILL of a running trial's own process, found as a user would (ps), mid-probe. The refine
    # stage's Tuner is built after the error: that is where the sweep used to die (PicklingError).
    # The same sweep selects on a validation benchmark with rung-wise validation (ASHA's first
    # rung scores half of its 8 problems), the one e2e run of it through Ray Tune.
    rows = (problems_dir / "train.jsonl").read_text().splitlines()[200:208]  # past the 96 trained on
    (tmp_path / "validation.jsonl").write_text("\n".join(rows) + "\n")
    lean = yaml.safe_load(write_config(tmp_path, tiny_backbone, problems_dir, lean=True).read_text())
    domain = {**lean["domains"][0], "validation": {"evaluator": "gsm8k", "source": str(tmp_path / "validation.jsonl"),
                                                   "max_new_tokens": 4}}
    search = {**lean["search"], "asha": {**lean["search"]["asha"], "validation_subset": 0.5}}
    config = write_config(tmp_path, tiny_backbone, problems_dir, lean=True, domains=[domain], search=search)
    exp = tmp_path / "runs" / "e2e"
    driver = subprocess.Popen([sys.executable, "-m", "mft_search.sweep", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, killed = time.time() + 600, None
        while time.time() < deadline and killed is None and driver.poll() is None:
            actors = processes("ray::ImplicitFunc.train")  # Tune's trials training now: this sweep's only ones
            if actors:
                killed = next(iter(actors))
                os.kill(killed, signal.SIGKILL)
            # A `ps` of every process each time (tens of ms): every 0.05 s it took ~40% of a core from
            # the sweep it waits on; a trial runs for seconds, so 0.25 s still finds it running.
            time.sleep(0.25)
        out, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed is not None, "no trial process was found running"
    assert driver.returncode == 0, out[-4000:]
    assert (exp / "leaderboard.md").exists() and (exp / "studies" / "tiny__gsm" / "summary.json").exists()
    frame = pd.read_parquet(exp / "results.parquet")
    probe = frame[frame["stage"] == "probe"].groupby("trial_id")["status"].last()
    assert len(probe) == 4 and set(probe) <= {"completed", "pruned", "failed"}, probe.to_dict()
    failed = frame[frame["status"] == "failed"]
    assert failed["error"].notna().all()  # a trial whose retry failed too says why
    scored = frame[(frame["stage"] == "probe") & frame["metric"].notna()]
    rungs = {int(r): sorted(set(zip(g["validation_items"], g["validation_subset"])))
             for r, g in scored.groupby("report")}
    assert rungs == {1: [(4, 1)], 2: [(8, 0)]}, rungs  # rung 1 on a seeded half, the last rung on all
    refine = frame[(frame["stage"] == "refine") & frame["metric"].notna()]
    assert (refine["validation_items"] == 8).all()  # no ASHA there: every report scores every problem


def test_the_fft_stage_resumes_after_a_driver_kill_and_the_search_masks_its_best_point(
        tmp_path, tiny_backbone, problems_dir, capsys):
    """One sweep for both: a driver killed during the fft stage (after its first point, before its
    last) and resumed, then every row the stage brings. Two sweeps would cost a minute more."""
    import torch

    from mft_search.core.backbone import BackboneSpec, load_model
    from mft_search.core.maskfile import load_mask_file, verify_for_model
    from mft_search.errors import MaskFileError

    path = _four_point_fft_config(tmp_path, tiny_backbone, problems_dir)
    plan = sweep_here(capsys, "--config", path, "--dry-run")
    assert plan.returncode == 0 and "fft stage per study: full fine-tuning" in plan.stdout
    assert "caveat" not in plan.stdout  # the sweep fine-tuned it without the carved-out rows
    exp, study = tmp_path / "runs" / "e2e", tmp_path / "runs" / "e2e" / "studies" / "tiny__gsm"
    run = exp / "ray" / "tiny__gsm-fft"  # the job's DirectorySession: reports.jsonl and its latest checkpoint
    artifacts = study / "artifacts" / "tiny__gsm-fft"  # report_NNN/: every point's checkpoint
    driver = subprocess.Popen([sys.executable, "-m", "mft_search.sweep", "--config", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and not _report_lines(run):
        time.sleep(0.1)
    # The driver's process group alone would leave the FFT's Ray worker (a process group of its own)
    # training on for a second or two, reporting more points: every process of its session goes at once.
    kill_session(driver.pid)
    driver.wait()
    before = _report_lines(run)
    assert before, "the FFT reported no point before the deadline"
    assert len(before) < 4, "the FFT had ended before the kill: nothing was left to resume"
    assert not (study / "fft.json").exists()
    written = {line: _identity(artifacts / f"report_{json.loads(line)['report']:03d}") for line in before}

    result = sweep("--config", str(path), "--resume")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = _report_lines(run)
    # Resumed, not restarted: the reports on record before the kill stay as they were (timings
    # included, which a re-run would change), no point is reported twice, and the checkpoints of
    # the points before the kill were not written again.
    assert after[:len(before)] == before
    assert [json.loads(line)["report"] for line in after] == [1, 2, 3, 4]
    assert {line: _identity(artifacts / f"report_{json.loads(line)['report']:03d}") for line in before} == written
    record = json.loads((study / "fft.json").read_text())
    reports = [json.loads(line) for line in after]
    assert [(p["report"], p["metric"]) for p in record["points"]] == [(r["report"], r["metric"]) for r in reports]
    assert record["metric_name"] == "accuracy"
    best = min(record["points"], key=lambda p: (-p["metric"], p["report"]))  # the earliest of ties
    assert record["best"] == best["report"]
    # Every trial's mask was learned on the best FFT checkpoint, not on the pretrained model
    masks = sorted(study.glob("artifacts/*probe*/report_*.mask.safetensors"))
    assert masks
    verify_for_model(load_mask_file(masks[0]), load_model(BackboneSpec(source=best["checkpoint"]), torch.float32))
    with pytest.raises(MaskFileError, match="fingerprint differs"):
        verify_for_model(load_mask_file(masks[0]), load_model(tiny_backbone, torch.float32))
    summary = json.loads((study / "summary.json").read_text())
    labels = {row["name"]: row["label"] for row in summary["rows"]}
    assert labels["unmasked"] == f"Best FFT (epoch {best['epoch']:g} of 4)"
    assert labels["continued_fft"] == "Continued FFT (final, epoch 4)"
    assert summary["rows"][0]["name"] == "pretrained" and summary["rows"][0]["test"] is not None
    # revert runs here: the fft stage's start is the pretrained model
    assert next(r for r in summary["rows"] if r["name"] == "revert")["test"] is not None and not summary["skipped"]
    # LoRA from the pretrained model on the FFT's schedule, every point scored on fft_selection
    assert [p["epoch"] for p in summary["lora"]["points"]] == [1, 2, 3, 4] and summary["lora"]["origin"] == "LoRA"
    assert labels["continued_lora"] == "Continued LoRA (final, epoch 4)"
    assert labels["best_lora"] == f"Best LoRA (epoch {summary['lora']['best_epoch']:g} of 4)"
    assert summary["fft"]["origin"] == "fft stage" and summary["caveats"] == []
    items = pd.read_parquet(exp / "items.parquet")
    assert "continued_fft" in set(items.loc[items["split"] == "validation", "variant"])  # scored item by item
    # seeds: 2: revert of the re-run's own mask and LoRA trained again; Continued FFT is the stage's one run
    seeds = items[items["split"] == "test"].groupby("variant")["seed"].apply(lambda s: sorted(set(s))).to_dict()
    assert seeds["revert"] == seeds["best_lora"] == seeds["continued_lora"] == seeds["best_mft"] == [0, 1]
    assert seeds["continued_fft"] == seeds["pretrained"] == seeds["unmasked"] == [0]
    assert (study / "artifacts" / "tiny__gsm-lora-seed1").is_dir()
    assert (exp / "plots" / "tiny__gsm" / "fft.png").read_bytes()[:4] == b"\x89PNG"
    assert "Best FFT (epoch" in (exp / "leaderboard.md").read_text()
    # --resume of the finished sweep reads fft.json back and runs nothing again
    again = sweep("--config", str(path), "--resume")
    assert again.returncode == 0 and "fft:" not in again.stdout, again.stdout[-2000:]
    assert json.loads((study / "fft.json").read_text()) == record


def _four_point_fft_config(tmp_path, backbone, problems_dir) -> Path:
    """A sweep whose fft stage trains 4 epochs, each point scored on 8 held-out problems (about a
    second a point here), then 2 probe trials, revert, LoRA and the test table. The FFT-selection
    problems are training-file rows past the 96 the domain trains on: disjoint from train (and
    its carve-out) and from test."""
    rows = (problems_dir / "train.jsonl").read_text().splitlines()[200:208]
    (tmp_path / "fft_selection.jsonl").write_text("\n".join(rows) + "\n")
    config = yaml.safe_load(write_config(tmp_path, backbone, problems_dir).read_text())
    config["domains"][0]["fft_selection"] = {"evaluator": "gsm8k", "source": str(tmp_path / "fft_selection.jsonl"),
                                             "max_new_tokens": 4}
    config["domains"][0]["test"]["limit"] = 2
    config["search"].update(num_trials=2, asha=None)
    config.update(stages={"fft": {"train": {"epochs": 4, "lr": 0.005}}, "probe": {"data_fraction": 0.5},
                          "refine": {"top_k": 0}}, baselines=["unmasked", "revert", "lora", "continued_fft"],
                  lora={"rank": 4, "train": {"lr": 0.02}}, seeds=2)
    path = tmp_path / "fft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _report_lines(run: Path) -> list[str]:
    """The job's reports on record, whole lines only (the last may be mid-write)."""
    path = run / "reports.jsonl"
    return [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")] if path.exists() else []


def _identity(directory: Path) -> tuple[int, int]:
    """An FFT checkpoint's weights file as the file system knows it: rewriting it changes both."""
    stat = (directory / "model.safetensors").stat()
    return stat.st_ino, stat.st_mtime_ns
