"""Shared storage, checked for real on a two-node local Ray.

The second node runs in its own mount namespace where a tmpfs hides one directory: a path that
exists on both "machines" but is not the same directory, as a node-local disk on a real cluster
is. The sweep must refuse it (exit 2, nothing written) and accept a directory both nodes see.
Needs root (mount namespaces) and unshare; the Ray processes are stopped by their own PIDs.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from processes import stop_own

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
PORT = 6391


@pytest.fixture(scope="module")
def two_nodes():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to hide a directory from the second node (a mount namespace)")
    root = Path(tempfile.mkdtemp(prefix="mftnodes", dir="/tmp"))  # socket paths must stay short
    hidden, shared = root / "hidden", root / "shared"
    hidden.mkdir()
    shared.mkdir()
    temps = [str(root / "h"), str(root / "w")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(root), PATH=f"{BIN}:{os.environ['PATH']}")  # no token: authentication off
    try:
        head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={PORT}", "--num-cpus=1",
                               "--include-dashboard=false", f"--temp-dir={temps[0]}"],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stderr[-2000:]
        worker = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs tmpfs {hidden} && exec {BIN / 'ray'} start --address=127.0.0.1:{PORT} "
             f"--num-cpus=1 --temp-dir={temps[1]}"],
            env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        _wait_for_nodes(env, 2)
        yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{PORT}"}, "hidden": hidden, "shared": shared}
    finally:
        stop_own(temps)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_nodes(env: dict, count: int) -> None:
    probe = f"import ray; ray.init(address='127.0.0.1:{PORT}'); print(sum(n['Alive'] for n in ray.nodes()))"
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
from mft_search.tune.cluster import check_shared_storage
ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]
verdicts = {}
for name in sys.argv[1:]:
    try:
        check_shared_storage(Path(name) / "exp", nodes)
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
    assert "is not the same directory on every node" in verdicts[str(hidden)]
    assert "No such file" in verdicts[str(hidden)]
    assert list(hidden.iterdir()) == [] and list(shared.iterdir()) == []  # the check leaves nothing


def test_the_sweep_refuses_it_with_exit_2_before_any_trial(two_nodes, tmp_path, tiny_backbone, problems_dir):
    config = {
        "name": "e2e", "storage": str(two_nodes["hidden"]),
        "backbones": [{"source": tiny_backbone.source, "name": "tiny"}],
        "domains": [{"name": "gsm", "validation": None, "test": None,
                     "train": {"source": str(problems_dir / "train.jsonl"), "prompt_field": "question",
                               "response_field": "answer", "limit": 48, "validation_fraction": 0.25}}],
        "search": {"num_trials": 1, "space": {"layer_group": [[1, 2]], "ratio": 0.1}},
        "stages": {"refine": {"top_k": 0}},
        "baselines": ["unmasked"],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "mft_search.sweep", "--config", str(path)],
                            env=two_nodes["env"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "storage:" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr
    assert list(two_nodes["hidden"].iterdir()) == []
