"""clusters/README.md's one-machine recipe against a real local cluster started with `ray start
--head`, token authentication on (Ray 2.59+), stopped after: the fixture's empty job goes through
the token; a client without it is refused. A sweep submitted with `ray job submit --working-dir`
runs in tests/test_cluster_storage.py, on two nodes with its storage in a bucket."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from processes import stop_own, wait_for_job_agent

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT = "8266"  # not the default 8265, so a developer's own cluster is left alone


@pytest.fixture(scope="module")
def cluster():
    """clusters/README.md's "One machine" recipe, step by step as written there, in a fresh HOME
    (no token yet): the token first, then `ray start --head`; the client adds RAY_AUTH_MODE=token."""
    home = Path(tempfile.mkdtemp(prefix="mfthome", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}:{os.environ['PATH']}")
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    temp_dir = tempfile.mkdtemp(prefix="mftray", dir="/tmp")  # socket paths must stay under 107 bytes
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--dashboard-port={PORT}",
                            "--port=6389", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"],
                           env=env, capture_output=True, text=True)
    assert start.returncode == 0, start.stderr[-2000:]
    client = {**env, "RAY_AUTH_MODE": "token", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{PORT}"}
    try:
        wait_for_job_agent(str(BIN / "ray"), client)
        yield client
    finally:
        stop_own([temp_dir])  # never `ray stop`: it stops every Ray on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_recipe_the_test_runs_is_the_one_clusters_readme_writes():
    readme = (REPO / "clusters" / "README.md").read_text()
    block = readme[readme.index("**One machine**"):].split("```bash", 1)[1].split("```", 1)[0]
    order = [block.index(step) for step in ("ray get-auth-token --generate", "ray start --head",
                                            "RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=", "ray job submit")]
    assert order == sorted(order), block


def test_without_the_token_mode_the_client_is_refused(cluster):
    env = {k: v for k, v in cluster.items() if k != "RAY_AUTH_MODE"}
    listing = subprocess.run([str(BIN / "ray"), "job", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode != 0
    assert shutil.which("ray", path=str(BIN))
