"""Static checks of the cluster recipes in clusters/.

Nothing here starts a cluster: the files are checked against Ray's own launcher
schema, against each other (same Ray version, same shared path, same
dependencies as pyproject.toml), and against the repository (every command names
a module and a config that exist), which is what breaks silently when code moves.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
LAUNCHER_CONFIGS = [CLUSTERS / "aws" / "mft-gpu.yaml", CLUSTERS / "gcp" / "mft-gpu.yaml"]
RAYCLUSTER = CLUSTERS / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTERS / "kuberay" / "rayjob.yaml"
SHARED_PVC = CLUSTERS / "kuberay" / "shared-pvc.yaml"
RUNTIME_ENV = CLUSTERS / "runtime_env.yaml"

# The only search spaces cluster files may name (the paper's configs and the demo).
KNOWN_CONFIGS = {
    f"search_spaces/{name}.yaml"
    for name in (
        "llama2_7b_math",
        "llama2_7b_code",
        "llama2_7b_instruction",
        "llama3_1_8b_math",
        "llama3_1_8b_code",
        "llama3_1_8b_instruction",
        "llama3_1_8b_mixed_fft",
        "demo",
    )
}

MODULE_RE = re.compile(r"python3?\s+-m\s+mft_search\.([A-Za-z_]\w*)")
CONFIG_RE = re.compile(r"--config[=\s]+([^\s`'\"\\]+)")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTERS.rglob("*") if p.suffix in {".yaml", ".yml", ".md"})


def _commands() -> list[tuple[Path, str, str | None]]:
    """(file, module, config) for every `python -m mft_search.X` in clusters/.

    Raw text, comments included: a recipe in a comment is copied as often as a
    live one. A command's --config is the first one before the next command.
    """
    found = []
    for path in _cluster_files():
        text = path.read_text()
        starts = list(MODULE_RE.finditer(text))
        for i, match in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            config = CONFIG_RE.search(text, match.end(), end)
            found.append((path, match.group(1), config.group(1) if config else None))
    return found


def _project_deps_without_ray() -> list[str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not re.match(r"ray\b", d)]


# ---------------------------------------------------------------- launcher configs


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    return json.loads((files("ray") / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_config_validates_against_ray_schema(path: Path, ray_schema: dict) -> None:
    jsonschema.validate(_load(path), ray_schema)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_config_passes_ray_validation(path: Path) -> None:
    # `ray up` runs these after filling in provider defaults; they catch what the
    # schema cannot, e.g. a head_node_type missing from available_node_types.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(path)))


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_config_has_cpu_head_and_gpu_workers(path: Path) -> None:
    config = _load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "trial drivers belong on a CPU head"
    assert head["resources"]["CPU"] >= 2
    usable_gpu_types = [
        t for name, t in types.items()
        if name != config["head_node_type"] and t["resources"].get("GPU", 0) > 0
        and t.get("max_workers", 0) > 0
    ]
    assert usable_gpu_types, "no GPU worker type may launch"
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_config_installs_project_and_enables_token_auth(path: Path) -> None:
    config = _load(path)
    project_dir = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert any(f"pip install -e {project_dir}" in c for c in config["setup_commands"])
    assert config["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start, key
        # The job API runs arbitrary code: it must stay on 127.0.0.1 (`ray dashboard`).
        assert "0.0.0.0" not in start, key


# ---------------------------------------------------------------- KubeRay manifests


def _cluster_spec(path: Path) -> dict:
    manifest = _load(path)
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _mounts(pod_template: dict) -> dict[str, str]:
    """volume name -> mount path, for the Ray container (the first one)."""
    return {m["name"]: m["mountPath"] for m in pod_template["spec"]["containers"][0]["volumeMounts"]}


def _claims(pod_template: dict) -> dict[str, str]:
    """volume name -> PVC claim name."""
    return {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_template["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }


@pytest.mark.parametrize("path,kind", [(RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")],
                         ids=["raycluster", "rayjob"])
def test_kuberay_manifest_kind_and_groups(path: Path, kind: str) -> None:
    manifest = _load(path)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    spec = _cluster_spec(path)
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "trial drivers belong on a CPU head"
    gpu_groups = [
        g for g in spec["workerGroupSpecs"]
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0
    ]
    assert gpu_groups, "no GPU worker group"
    assert all(g["maxReplicas"] >= 1 for g in gpu_groups)
    assert spec["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_kuberay_shared_volume_same_path_everywhere(path: Path) -> None:
    pvc = _load(SHARED_PVC)
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every pod mounts it at once"
    spec = _cluster_spec(path)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    paths = set()
    for template in templates:
        (volume,) = [v for v, claim in _claims(template).items() if claim == pvc["metadata"]["name"]]
        paths.add(_mounts(template)[volume])
    assert len(paths) == 1, f"shared volume mounted at different paths: {paths}"


def test_rayjob_runs_sweep_on_shared_storage_and_shuts_down() -> None:
    manifest = _load(RAYJOB)
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    entrypoint = manifest["spec"]["entrypoint"]
    assert "python -m mft_search.sweep" in entrypoint
    storage = re.search(r"--storage\s+(\S+)", entrypoint).group(1)
    head = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    (mount,) = _mounts(head).values()
    assert storage.startswith(mount.rstrip("/") + "/"), "storage is not on the shared volume"


def test_ray_version_is_the_same_in_every_cluster_file() -> None:
    # Ray refuses nodes and clients of another version, so one pin for all.
    versions = set()
    for path in (RAYCLUSTER, RAYJOB):
        spec = _cluster_spec(path)
        versions.add(spec["rayVersion"])
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        versions.update(re.match(r"rayproject/ray:([\d.]+)-", t["spec"]["containers"][0]["image"]).group(1)
                        for t in templates)
    for path in LAUNCHER_CONFIGS:
        config = _load(path)
        for key in ("head_image", "worker_image"):
            versions.add(re.match(r"rayproject/ray:([\d.]+)-", config["docker"][key]).group(1))
        versions.update(re.findall(r"ray\[[\w,]+\]==([\d.]+)", " ".join(config["setup_commands"])))
    assert len(versions) == 1, versions


def test_gpu_images_are_gpu_variants() -> None:
    for path in (RAYCLUSTER, RAYJOB):
        for group in _cluster_spec(path)["workerGroupSpecs"]:
            assert group["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
    for path in LAUNCHER_CONFIGS:
        assert _load(path)["docker"]["worker_image"].endswith("-gpu")


# ---------------------------------------------------------------- runtime envs


def test_runtime_env_pip_lists_match_pyproject() -> None:
    expected = _project_deps_without_ray()
    rayjob_env = yaml.safe_load(_load(RAYJOB)["spec"]["runtimeEnvYAML"])
    for name, env in [("clusters/runtime_env.yaml", _load(RUNTIME_ENV)),
                      ("runtimeEnvYAML in clusters/kuberay/rayjob.yaml", rayjob_env)]:
        assert env["pip"] == expected, (
            f"{name} must list pyproject.toml's dependencies minus ray; update it"
        )
    assert "working_dir" in rayjob_env, "a RayJob needs the code as a zip URL"


# ---------------------------------------------------------------- commands vs repo


def test_commands_name_only_known_search_spaces() -> None:
    commands = _commands()
    assert commands, "no `python -m mft_search.X` command found in clusters/"
    for path, module, config in commands:
        where = f"{path.relative_to(REPO)}: mft_search.{module}"
        if module == "sweep":
            assert config is not None, f"{where} has no --config"
        if config is not None:
            assert config in KNOWN_CONFIGS, f"{where} names unknown config {config}"


@pytest.mark.xfail(
    not (REPO / "mft_search" / "sweep.py").exists(),
    reason="mft_search/sweep.py and search_spaces/*.yaml are not written yet",
    strict=False,
)
def test_commands_name_modules_and_configs_that_exist() -> None:
    commands = _commands()
    assert commands
    missing = []
    for path, module, config in commands:
        where = path.relative_to(REPO)
        package = REPO / "mft_search"
        if not ((package / f"{module}.py").exists() or (package / module / "__main__.py").exists()):
            missing.append(f"{where}: mft_search/{module}.py")
        if config is not None and not (REPO / config).is_file():
            missing.append(f"{where}: {config}")
    assert not missing, "cluster files name files that do not exist:\n" + "\n".join(sorted(set(missing)))
