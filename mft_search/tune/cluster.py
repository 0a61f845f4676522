"""Checks of the cluster a sweep joined, before any trial: can a trial be placed, does every
node see the experiment's storage, and can Ray Train clean up after a trial that dies.

This module imports only Ray (and, inside the check's task, core.files over pyarrow, which Ray
loads anyway): its storage check is a task on every node, and a task's worker imports the module
that defines it (before, that was torch, transformers and the config schema, some 4,700 modules
and ~10 s of CPU per node, to read one file).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mft_search.errors import ConfigError
from mft_search.tune.placement import DRIVER_CPU, HEAD_RESOURCE

if TYPE_CHECKING:
    from mft_search.config.schema import SweepConfig
    from mft_search.core.files import Location

ANSWER_TIMEOUT_S = 120  # a node's check task waits for a worker process to start there
STATE_API_TIMEOUT_S = 10


def check_cluster(cfg: SweepConfig, cluster: dict, exp_dir: Location) -> None:
    """ConfigError when a trial can never be placed, or a node cannot see the storage."""
    r, nodes = cfg.resources, cluster["nodes"]
    need = {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
    fits = [n for n in nodes if all(n["Resources"].get(k, 0) >= v for k, v in need.items() if v)]
    total = {k: cluster["resources"].get(k, 0) for k in need}
    # A multi-worker trial's Tune driver holds a sliver of CPU beside its workers: a cluster with
    # exactly the workers' CPUs can never start one (it waits forever).
    driver = DRIVER_CPU if r.workers_per_trial > 1 else 0.0
    if not fits or any(r.workers_per_trial * v + (driver if k == "CPU" else 0) > total[k]
                       for k, v in need.items() if v):
        raise ConfigError(
            f"resources: a trial needs {r.workers_per_trial} worker(s) x ({r.cpus_per_worker:g} CPU, "
            f"{r.gpus_per_worker:g} GPU){f' + {driver:g} CPU for its Tune driver' if driver else ''} but the cluster has {total['CPU']:g} CPU and {total['GPU']:g} GPU in all; "
            "lower resources.workers_per_trial or the per-worker needs")
    head = next((n for n in nodes if n["Resources"].get(HEAD_RESOURCE)), None)
    if r.workers_per_trial > 1 and head is not None and head["Resources"].get("CPU", 0) < DRIVER_CPU:
        raise ConfigError(
            f"resources.workers_per_trial: multi-worker trials run their drivers on the head node (a lost worker "
            f"node must not take a trial's controller with it), which has {head['Resources'].get('CPU', 0):g} CPU; "
            "give the head at least 1 CPU (ray start --head --num-cpus=1), or set resources.workers_per_trial: 1")
    if r.workers_per_trial > 1 and not state_api_reachable():
        # Ray Train's placement-group cleaner asks the state API whether a trial's controller is
        # alive; without it, the group of a trial that died (stopped by ASHA, on a lost node)
        # keeps its CPUs forever and the next trials wait for them: the sweep hangs.
        raise ConfigError(
            "resources.workers_per_trial: multi-worker trials need the Ray dashboard (its state API), which this "
            "cluster does not serve; start the head with `ray start --head --include-dashboard=true` "
            "(install ray[default]), or set resources.workers_per_trial: 1")
    if len(nodes) > 1:
        check_shared_storage(exp_dir, nodes)


def state_api_reachable() -> bool:
    """Whether the connected cluster answers Ray's state API (served by its dashboard), asked
    again for a few seconds: a dashboard started with this driver may not listen yet."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    deadline = time.monotonic() + STATE_API_TIMEOUT_S
    while True:
        try:
            list_nodes(limit=1, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
            return True
        except (RayStateApiException, ConnectionError):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def check_shared_storage(exp_dir: Location, nodes: list[dict]) -> None:
    """ConfigError naming the nodes that cannot read a marker the driver writes into `exp_dir`.

    Checked for real, by a task pinned to every alive node: a filesystem type says nothing about
    whether the nodes mount the same thing (a local FUSE mount is not shared, one path on one
    host shared by several nodes is), and a bucket needs its credentials on every node. Anything
    the check creates is removed again.
    """
    created = _missing_ancestors(exp_dir) if exp_dir.is_local else []
    exp_dir.mkdir(parents=True, exist_ok=True)
    marker, token = exp_dir / f".mft_storage_check_{uuid.uuid4().hex}", uuid.uuid4().hex
    marker.write_text(token)
    try:
        answers = [_read_marker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                   .remote(str(marker)) for n in nodes]
        ready, _ = ray.wait(answers, num_returns=len(answers), timeout=ANSWER_TIMEOUT_S)
        seen = [ray.get(a) if a in ready else "no answer" for a in answers]
    finally:
        marker.unlink(missing_ok=True)
        for path in reversed(created):
            path.fs.delete_dir(path.path)
    blind = [f"{n.get('NodeManagerAddress', '?')} ({answer if answer != token else 'ok'})"
             for n, answer in zip(nodes, seen) if answer != token]
    if blind:
        raise ConfigError(f"storage: {exp_dir} is not the same storage on every node: {', '.join(blind)} cannot read "
                          "what the driver wrote there; use a bucket (storage: s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, "
                          "its credentials on every node) or a directory every node mounts (NFS, a shared volume)")


@ray.remote(num_cpus=0, max_retries=0)
def _read_marker(path: str) -> str:
    from mft_search.core.files import location  # here: the task's worker imports it, the driver's module need not

    try:
        return location(path).read_text()
    except OSError as exc:
        return exc.strerror or str(exc).splitlines()[0][:120] or type(exc).__name__


def _missing_ancestors(path: Location) -> list[Location]:
    """`path` and its parents that do not exist yet, outermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing[::-1]
