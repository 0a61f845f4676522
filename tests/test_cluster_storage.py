"""Shared storage and a lost node, checked for real on a two-node local Ray.

The second node runs in its own mount namespace where a tmpfs hides one directory: a path that
exists on both "machines" but is not the same directory, as a node-local disk on a real cluster
is. The sweep must refuse it (exit 2, nothing written, the fix named: a bucket or NFS) and accept a
directory both nodes see, or a bucket (moto's S3 server, the nodes started with the standard AWS
variables): a sweep with its storage there runs trials on both nodes and writes every output to
the bucket. The last test kills a worker of a two-worker trial, then the whole second node, mid-sweep.
Needs root (mount namespaces) and unshare; the Ray processes are stopped by their own PIDs.
"""

import contextlib
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pandas as pd
import yaml
from processes import processes, stop_own, wait_for_job_agent

from mft_search.core import files

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes(s3):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to hide a directory from the second node (a mount namespace)")
    root = Path(tempfile.mkdtemp(prefix="mftnodes", dir="/tmp"))  # socket paths must stay short
    hidden, shared = root / "hidden", root / "shared"
    hidden.mkdir()
    shared.mkdir()
    temps = [str(root / "h"), str(root / "w")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(root), PATH=f"{BIN}:{os.environ['PATH']}")  # no token: authentication off
    env.update(s3.env)  # every node's processes reach the bucket as they would reach S3: the SDK's variables
    # Ports of their own: `ray start` otherwise binds fixed defaults (dashboard 8265, its agent
    # 52365, client server 10001) that another Ray on this machine may hold; 0 means any free one.
    port, dashboard = _free_port(), _free_port()
    ports = ["--dashboard-agent-listen-port=0", "--metrics-export-port=0"]
    # The GCS declares a node dead after health_check_failure_threshold (5) failed checks, one
    # every health_check_period_ms (3000 by default; Ray's ray_config_def.h): 15 s or more after
    # the lost node's raylet is killed. A check every second finds it in ~5 s and still needs 5
    # failures in a row (each up to health_check_timeout_ms, 10 s) to call a slow node dead. For this
    # test cluster only: a real cluster keeps Ray's defaults.
    env["RAY_health_check_period_ms"] = "1000"
    try:
        head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=3",
                               "--include-dashboard=true", f"--dashboard-port={dashboard}",
                               f"--ray-client-server-port={_free_port()}", *ports, f"--temp-dir={temps[0]}"],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs tmpfs {hidden} && exec {BIN / 'ray'} start --address=127.0.0.1:{port} "
             f"--num-cpus=3 {' '.join(ports)} --temp-dir={temps[1]}"],
            env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        _wait_for_nodes(env, port, 2)
        yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, "hidden": hidden, "shared": shared,
               "temps": temps, "jobs": f"http://127.0.0.1:{dashboard}"}
    finally:
        stop_own(temps)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_nodes(env: dict, port: int, count: int) -> None:
    probe = f"import ray; ray.init(address='127.0.0.1:{port}'); print(sum(n['Alive'] for n in ray.nodes()))"
    for _ in range(60):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster never had {count} nodes")


CHECK_BOTH = """
import json, ray, sys
from pathlib import Path
from mft_search.errors import ConfigError
from mft_search.core.files import location
from mft_search.tune.cluster import check_shared_storage
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]
verdicts = {}
for name in sys.argv[1:]:
    try:
        check_shared_storage(location(name) / "exp", nodes)
        verdicts[name] = "ok"
    except ConfigError as exc:
        verdicts[name] = str(exc)
print(json.dumps({"nodes": len(nodes), **verdicts}))
"""


def test_a_directory_one_node_cannot_see_is_refused_one_every_node_sees_passes(two_nodes):
    hidden, shared = two_nodes["hidden"], two_nodes["shared"]
    result = subprocess.run([sys.executable, "-c", CHECK_BOTH, str(hidden), str(shared)], env=two_nodes["env"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = json.loads(result.stdout.splitlines()[-1])
    assert verdicts["nodes"] == 2 and verdicts[str(shared)] == "ok"
    assert "is not the same storage on every node" in verdicts[str(hidden)]
    assert "No such file" in verdicts[str(hidden)]
    assert list(hidden.iterdir()) == [] and list(shared.iterdir()) == []  # the check leaves nothing


def sweep_config(storage: Path, tiny_backbone, problems_dir, **overrides) -> dict:
    return {
        "name": "e2e", "storage": str(storage),
        "backbones": [{"source": tiny_backbone.source, "name": "tiny"}],
        "domains": [{"name": "gsm", "validation": None, "test": None,
                     "train": {"source": str(problems_dir / "train.jsonl"), "prompt_field": "question",
                               "response_field": "answer", "limit": 48, "validation_fraction": 0.25}}],
        "search": {"num_trials": 1, "space": {"layer_group": [[1, 2]], "ratio": 0.1}},
        "stages": {"refine": {"top_k": 0}},
        "baselines": ["unmasked"], "seeds": 1,
        **overrides,
    }


def test_the_sweep_refuses_it_with_exit_2_before_any_trial(two_nodes, tmp_path, tiny_backbone, problems_dir):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(two_nodes["hidden"], tiny_backbone, problems_dir)))
    result = subprocess.run([sys.executable, "-m", "mft_search.sweep", "--config", str(path)],
                            env=two_nodes["env"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.splitlines()[-1]
    assert "storage:" in last and "s3://" in last and "NFS" in last and "Traceback" not in result.stderr
    assert list(two_nodes["hidden"].iterdir()) == []


def test_a_sweep_with_its_storage_in_a_bucket_runs_on_both_nodes(two_nodes, s3, tmp_path, tiny_backbone,
                                                                problems_dir):
    """No shared filesystem: every output goes to the bucket, from the driver and from the trials
    on either node. Two trials at once of 2 CPUs each on two 3-CPU nodes: one runs on each. The
    paper's protocol as the demo runs it: an fft stage first (its checkpoints in the bucket, the
    best one masked), and the baselines that train (LoRA, continued FFT) write theirs there too."""
    bucket = s3.new_bucket()
    rows = (problems_dir / "train.jsonl").read_text().splitlines()[200:208]  # past the 48 trained on
    (tmp_path / "fft_selection.jsonl").write_text("\n".join(rows) + "\n")
    config = sweep_config(f"s3://{bucket}/runs", tiny_backbone, problems_dir,
                          search={"num_trials": 2, "max_concurrent_trials": 2,
                                  "space": {"layer_group": [[1, 2], [2, 3]], "ratio": 0.1}},
                          train={"epochs": 1, "global_batch_size": 8, "micro_batch_size": 4},
                          stages={"fft": {"train": {"epochs": 2, "lr": 0.005}}, "probe": {"data_fraction": 1.0},
                                  "refine": {"top_k": 0}},
                          baselines=["unmasked", "revert", "lora", "continued_fft"], lora={"rank": 4},
                          resources={"workers_per_trial": 1, "cpus_per_worker": 2})
    config["domains"][0]["fft_selection"] = {"evaluator": "gsm8k", "source": str(tmp_path / "fft_selection.jsonl"),
                                             "max_new_tokens": 4}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    # As on a real cluster: a job submitted to the head (its driver runs there), the code shipped
    # with --working-dir; the nodes reach the bucket through the SDK's variables they started with.
    client = {k: v for k, v in two_nodes["env"].items() if k != "RAY_ADDRESS"}
    wait_for_job_agent(str(BIN / "ray"), client, "--address", two_nodes["jobs"])
    result = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", two_nodes["jobs"],
                             "--working-dir", str(REPO), "--", "python", "-m", "mft_search.sweep", "--config", str(path)],
                            cwd=tmp_path, env=client, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "succeeded" in result.stdout.lower(), result.stdout[-3000:] + result.stderr[-3000:]
    keys = s3.keys(bucket, "runs/e2e/")
    for output in ("results.parquet", "state.json", "config.yaml", "leaderboard.md", "studies/tiny__gsm/summary.json",
                   "studies/tiny__gsm/optuna.journal", "studies/tiny__gsm/fft.json"):
        assert f"runs/e2e/{output}" in keys, output
    masks = [k for k in keys if k.startswith("runs/e2e/studies/tiny__gsm/artifacts/tiny__gsm-probe-")
             and k.endswith(".safetensors")]
    frame = files.location(f"s3://{bucket}/runs/e2e/results.parquet").read_parquet()
    assert len({k.split("/")[-2] for k in masks}) == 2, (masks, frame.to_dict("records"), result.stdout[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fft_selection.jsonl", "sweep.yaml"]  # nothing written here
    fft_points = [k for k in keys if k.startswith("runs/e2e/studies/tiny__gsm/artifacts/tiny__gsm-fft/report_")]
    assert {k.split("/")[6] for k in fft_points} == {"report_001", "report_002"}, fft_points
    summary = files.location(f"s3://{bucket}/runs/e2e/studies/tiny__gsm/summary.json").read_bytes().decode()
    assert "Best LoRA" in summary and "Continued FFT" in summary and "revert" in summary, summary[:3000]
    assert len(_trial_nodes(two_nodes["env"])) == 2, "the trials did not run on both nodes"


# Last in this module but one: it takes the second node away for good.
def test_a_killed_train_worker_and_a_lost_node_leave_a_finished_sweep(two_nodes, tiny_backbone, problems_dir):
    """Two two-worker trials at once, one on each node (3 CPUs each: a trial holds 2 and its driver a sliver). SIGKILL one Ray Train worker on
    the head, then every process of the second node (its raylet, its workers), as a machine lost
    without warning. Each trial is restarted by Train, retried by Tune, or recorded failed with
    its reason; the sweep finishes on the head alone."""
    storage = two_nodes["shared"] / "faults"
    config = sweep_config(storage, tiny_backbone, problems_dir,
                          search={"num_trials": 2, "max_concurrent_trials": 2,
                                  "space": {"layer_group": [[1, 2], [2, 3]], "ratio": 0.1}},
                          train={"epochs": 3, "global_batch_size": 8, "micro_batch_size": 4},
                          # All 36 training rows: the probe's default 10% (4 rows) is fewer than a batch,
                          # and every attempt of every trial failed on that before it trained.
                          stages={"probe": {"data_fraction": 1.0}, "refine": {"top_k": 0}},
                          resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    path = storage.parent / "faults.yaml"
    path.write_text(yaml.safe_dump(config))
    log = storage.parent / "faults.log"  # not a pipe: nothing reads one while the test waits to kill
    with log.open("w") as sink:
        driver = subprocess.Popen([sys.executable, "-m", "mft_search.sweep", "--config", str(path)],
                                  env=two_nodes["env"], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    head, second = (_raylet(temp) for temp in two_nodes["temps"])
    try:
        killed = _kill_first(lambda: _train_workers(head))
        lost = _kill_first(lambda: _train_workers(second), also=lambda: [*_children(second), *processes(
            two_nodes["temps"][1])])
        driver.wait(timeout=900)
        out = log.read_text()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed and lost, "no training worker was found on each node"
    assert driver.returncode == 0, out[-4000:]
    exp = storage / "e2e"
    assert (exp / "leaderboard.md").exists() and (exp / "studies" / "tiny__gsm" / "summary.json").exists()
    frame = pd.read_parquet(exp / "results.parquet")
    probe = frame[frame["stage"] == "probe"].groupby("trial_id")["status"].last()
    assert len(probe) == 2 and set(probe) <= {"completed", "pruned", "failed"}, probe.to_dict()
    assert set(probe) & {"completed", "pruned"}, f"no trial trained past the faults: {probe.to_dict()}"
    errors = frame.loc[frame["status"] == "failed", "error"]
    # A trial fails of the faults, with its reason, never of its config (as every one did when the
    # probe kept 4 rows, fewer than a batch, and the faults hit trials that could not train).
    assert errors.notna().all() and not errors.str.contains("DataError|ConfigError").any(), errors.tolist()


TRIAL_NODES = """
import json
from ray.util.state import list_actors
actors = list_actors(filters=[("class_name", "=", "ImplicitFunc")], limit=10000, raise_on_missing_output=False)
print(json.dumps(sorted({a.node_id for a in actors})))
"""


def _trial_nodes(env: dict) -> list[str]:
    """The nodes Tune's trial actors ran on (Ray's state API keeps the dead ones)."""
    out = subprocess.run([sys.executable, "-c", TRIAL_NODES], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def _raylet(temp: str) -> int:
    (pid,) = [pid for pid, line in processes(temp).items() if "/raylet" in line.split()[1]]
    return pid


def _children(parent: int) -> dict[int, str]:
    """{pid: command line} of `parent`'s children, from one `ps` (the poll below runs it every
    0.1 s for minutes: a `ps` per child, as before, ran ~10 a poll on the 2 cores the cluster starts on)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = (line.split(None, 2) for line in out.splitlines()[1:])
    return {int(row[0]): row[-1] for row in rows if len(row) == 3 and int(row[1]) == parent}


def _train_workers(raylet: int) -> list[int]:
    return [pid for pid, line in _children(raylet).items() if "RayTrainWorker" in line]


def _kill_first(find, also=lambda: [], timeout: float = 600) -> list[int]:
    """SIGKILL what `find` returns (and `also`) as soon as it returns anything; the PIDs killed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = find()
        if found:
            pids = [found[0], *also()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return pids
        time.sleep(0.1)
    return []


# Last: it stops the dashboard.
def test_multi_worker_trials_are_refused_on_a_cluster_without_the_state_api(two_nodes, tmp_path, tiny_backbone,
                                                                           problems_dir):
    """Without the dashboard's state API, Ray Train cannot free the group of a trial that died and
    the sweep hangs (it did, here, before this check): refused before any trial, exit 2."""
    (dashboard,) = [pid for pid, line in processes(two_nodes["temps"][0]).items() if "dashboard/dashboard.py" in line]
    os.kill(dashboard, signal.SIGKILL)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(tmp_path / "runs", tiny_backbone, problems_dir,
                                                resources={"workers_per_trial": 2, "cpus_per_worker": 1})))
    result = subprocess.run([sys.executable, "-m", "mft_search.sweep", "--config", str(path)],
                            env=two_nodes["env"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: resources.workers_per_trial:") and "--include-dashboard=true" in last, last
    assert not (tmp_path / "runs" / "e2e").exists()
