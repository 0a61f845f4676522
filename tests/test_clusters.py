"""Static checks of the cluster recipes in clusters/.

Nothing here starts a cluster or builds an image: the files are checked against
Ray's own launcher schema, against each other (same Ray and Python everywhere,
the image's base tag included; same dependencies as pyproject.toml), against
what production needs (bucket storage, `--resume auto` with retries and a
deadline, a head off spot capacity, credentials from the platform and never
written in a file, dependencies baked into the image), and against the
repository (every command names a module and a config that exist), which is what
breaks silently when code moves.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
LAUNCHER_CONFIGS = [CLUSTERS / "aws" / "mft-gpu.yaml", CLUSTERS / "gcp" / "mft-gpu.yaml"]
RAYCLUSTER = CLUSTERS / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTERS / "kuberay" / "rayjob.yaml"
SHARED_PVC = CLUSTERS / "kuberay" / "shared-pvc.yaml"
SERVICE_ACCOUNT = CLUSTERS / "kuberay" / "serviceaccount.yaml"
RUNTIME_ENV = CLUSTERS / "runtime_env.yaml"
DOCKERFILE = CLUSTERS / "Dockerfile"
MANIFESTS = [RAYCLUSTER, RAYJOB]

# Where an object store is the storage: the URI schemes the sweep's --storage takes for buckets.
BUCKET_URI = re.compile(r"(s3|gs)://[a-z0-9][a-z0-9._-]*[a-z0-9](/\S*)?$", re.IGNORECASE)
# Each platform's label on spot/preemptible nodes and its spot value ("" where the label's presence says it).
SPOT_LABELS = {
    "eks.amazonaws.com/capacityType": "SPOT",            # EKS managed node groups
    "karpenter.sh/capacity-type": "spot",                # Karpenter (EKS and others)
    "cloud.google.com/gke-spot": "true",                 # GKE Spot VMs
    "cloud.google.com/gke-preemptible": "true",          # GKE preemptible VMs
    "kubernetes.azure.com/scalesetpriority": "spot",     # AKS spot node pools
}

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


def _command_spans() -> list[tuple[Path, str, str]]:
    """(file, module, text up to the next command, a blank line or the end of a
    code block) for every `python -m mft_search.X` in clusters/.

    Raw text, comments included: a recipe in a comment is copied as often as a
    live one.
    """
    found = []
    for path in _cluster_files():
        text = path.read_text()
        starts = list(MODULE_RE.finditer(text))
        for i, match in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            blank = re.compile(r"\n\s*#?\s*\n|```").search(text, match.end(), end)
            found.append((path, match.group(1), text[match.end():blank.start() if blank else end]))
    return found


def _commands() -> list[tuple[Path, str, str | None]]:
    """(file, module, config) for every `python -m mft_search.X` in clusters/; a
    command's --config is the first one in its span."""
    found = []
    for path, module, span in _command_spans():
        config = CONFIG_RE.search(span)
        found.append((path, module, config.group(1) if config else None))
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


def _pod_templates(path: Path) -> dict[str, dict]:
    """group name ("head" or a worker group's name) -> pod template."""
    spec = _cluster_spec(path)
    return {"head": spec["headGroupSpec"]["template"],
            **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}}


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


def _excludes_spot(expression: dict) -> str | None:
    """The spot label a node-selector expression keeps the pod away from, if any."""
    label, operator = expression["key"], expression["operator"]
    if label not in SPOT_LABELS:
        return None
    if operator == "DoesNotExist" or (operator == "NotIn" and SPOT_LABELS[label] in expression.get("values", [])):
        return label
    return None


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_kuberay_head_stays_off_spot_capacity(path: Path) -> None:
    # Losing the head loses the sweep's driver. Node-selector terms are ORed, so every term
    # must exclude every platform's spot label; a toleration of a spot taint would undo it.
    head = _pod_templates(path)["head"]
    affinity = head["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    for term in affinity["nodeSelectorTerms"]:
        excluded = {_excludes_spot(e) for e in term["matchExpressions"]} - {None}
        assert excluded == set(SPOT_LABELS), f"head may land on spot nodes: {set(SPOT_LABELS) - excluded}"
    tolerated = {t.get("key") for t in head["spec"].get("tolerations", [])}
    assert not tolerated & set(SPOT_LABELS), "the head tolerates a spot taint"
    # Node scale-down must not evict the head either.
    annotations = head["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"


def test_rayjob_resumes_on_retry_in_a_bucket_with_a_deadline() -> None:
    # backoffLimit retries on a new Ray cluster: only `--resume auto` both starts the first
    # attempt and resumes the later ones, and only a bucket outlives the attempt's cluster.
    spec = _load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    entrypoint = spec["entrypoint"]
    assert "python -m mft_search.sweep" in entrypoint
    assert re.search(r"--resume\s+auto\b", entrypoint), "a retried RayJob must resume, not fail"
    assert BUCKET_URI.match(re.search(r"--storage\s+(\S+)", entrypoint).group(1))


def test_rayjob_installs_nothing_per_job() -> None:
    # Dependencies are baked into the image (clusters/Dockerfile): a retry or a new GPU node
    # pulls an image instead of pip-installing torch again.
    env = yaml.safe_load(_load(RAYJOB)["spec"].get("runtimeEnvYAML") or "{}") or {}
    assert not {"pip", "uv", "conda"} & set(env), f"the RayJob installs packages per job: {sorted(env)}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_kuberay_pods_share_one_project_image_and_one_bucket_identity(path: Path) -> None:
    account = _load(SERVICE_ACCOUNT)
    assert account["kind"] == "ServiceAccount"
    images, accounts = set(), set()
    for template in _pod_templates(path).values():
        images.add(template["spec"]["containers"][0]["image"])
        # Workers write to the bucket themselves: they need the identity as much as the head.
        accounts.add(template["spec"].get("serviceAccountName"))
        secrets = {e["secretRef"]["name"] for e in template["spec"]["containers"][0].get("envFrom", [])}
        assert "mft-storage" in secrets, "an S3-compatible store's keys come from the Secret"
    assert accounts == {account["metadata"]["name"]}
    (image,) = images
    assert not image.startswith("rayproject/"), "production pods run the image clusters/Dockerfile builds"


def test_shared_volume_alternative_is_read_write_many() -> None:
    pvc = _load(SHARED_PVC)
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every pod mounts it at once"


# ---------------------------------------------------------------- storage and credentials


def test_sweep_commands_store_in_a_bucket() -> None:
    # Every recipe that runs a sweep on a cluster gives it a bucket URI; the launchers use
    # their cloud's store.
    commands = [(path, span) for path, module, span in _command_spans() if module == "sweep"]
    assert commands
    for path, span in commands:
        where = path.relative_to(REPO)
        storage = re.search(r"--storage[=\s]+([^\s`'\"\\]+)", span)
        if path.suffix == ".md" and storage is None:
            continue  # the README's one-machine example keeps the config's local storage
        assert storage, f"{where}: a cluster sweep without --storage"
        assert BUCKET_URI.match(storage.group(1)), f"{where}: --storage {storage.group(1)} is not a bucket URI"
        if path in LAUNCHER_CONFIGS:
            assert storage.group(1).startswith({"aws": "s3://", "gcp": "gs://"}[path.parent.name])


def test_no_mount_advice_for_writes() -> None:
    # mountpoint-s3 and gcsfuse cannot host the sweep's renames and appends: a paragraph of
    # the recipes may name them only to warn against them.
    for path in _cluster_files():
        for paragraph in re.split(r"\n\s*#?\s*\n", path.read_text()):
            if re.search(r"mountpoint-s3|gcsfuse|s3fs|goofys", paragraph, re.IGNORECASE):
                assert re.search(r"\b(not|no|cannot|never)\b", paragraph, re.IGNORECASE), (
                    f"{path.relative_to(REPO)} advises a bucket mount: {paragraph.strip()[:200]}")


SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIALS", re.IGNORECASE)
INLINE_SECRET = re.compile(
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"                     # an AWS access key id
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"              # a PEM key (a GCP key file holds one)
    r"|\"private_key\"\s*:"                             # a GCP service-account key file
    r"|\bhf_[A-Za-z0-9]{30,}"                           # a Hugging Face token
    r"|(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN)=(?!\.\.\.|\$|<|YOUR_)[^\s\\]")  # not a placeholder


def _env_entries(node) -> list[dict]:
    """Every container env entry anywhere in a manifest."""
    if isinstance(node, dict):
        found = [e for e in node.get("env", []) if isinstance(e, dict) and "name" in e]
        return found + [e for v in node.values() for e in _env_entries(v)]
    if isinstance(node, list):
        return [e for v in node for e in _env_entries(v)]
    return []


def test_no_credentials_are_written_in_cluster_files() -> None:
    for path in [*_cluster_files(), DOCKERFILE]:
        match = INLINE_SECRET.search(path.read_text())
        assert match is None, f"{path.relative_to(REPO)} holds a credential: {match.group(0)[:12]}..."
    for path in [*MANIFESTS, SERVICE_ACCOUNT]:
        for entry in _env_entries(_load(path)):
            if SECRET_NAME.search(entry["name"]):
                assert "value" not in entry and "valueFrom" in entry, (
                    f"{path.relative_to(REPO)}: {entry['name']} must come from a Secret, not a literal")


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_gpu_workers_have_a_bucket_identity_and_the_head_is_not_spot(path: Path) -> None:
    # `ray up` gives its own instance profile / service account to the head only, and workers
    # write their trials to the bucket themselves.
    config = _load(path)
    for name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        if name == config["head_node_type"]:
            assert "InstanceMarketOptions" not in node_config, "the head is on spot capacity (AWS)"
            scheduling = node_config.get("scheduling", {})
            scheduling = {k: v for item in scheduling for k, v in item.items()} if isinstance(scheduling, list) \
                else scheduling
            assert scheduling.get("provisioningModel") != "SPOT" and not scheduling.get("preemptible"), (
                "the head is on spot capacity (GCP)")
        elif path.parent.name == "aws":
            assert "IamInstanceProfile" in node_config, f"{name}: no instance profile for the bucket"
        else:
            assert node_config["serviceAccounts"][0]["email"], f"{name}: no service account for the bucket"


# ---------------------------------------------------------------- the image (clusters/Dockerfile)

DOCKER_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                       "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped and
    ${ARG} defaults substituted. A dozen lines instead of a dependency (dockerfile-parse):
    the checks need no more than this, and Docker's own syntax check needs a daemon."""
    instructions, args, pending = [], {}, ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        pending = ""
        assert word.upper() in DOCKER_INSTRUCTIONS and word == word.upper(), f"not an instruction: {word}"
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest.strip())
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        instructions.append((word, rest))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def _base_image() -> tuple[str, str, str]:
    """(ray version, python tag, variant) of the Dockerfile's base image."""
    (base,) = [rest for word, rest in _dockerfile() if word == "FROM"]  # one stage: what is built is what runs
    match = re.fullmatch(r"rayproject/ray:([\d.]+)-(py3\d+)(-gpu|-cu\d+)?", base)
    assert match, f"base image {base} is not a rayproject/ray:VERSION-pyXY[-gpu] tag"
    return match.group(1), match.group(2), match.group(3) or ""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_dockerfile_base_is_the_ray_and_python_the_project_supports() -> None:
    version, python, variant = _base_image()
    project = _pyproject()
    (ray_spec,) = [d for d in project["dependencies"] if re.match(r"ray\b", d)]
    assert Version(version) in SpecifierSet(re.sub(r"^ray(\[[\w,]+\])?", "", ray_spec)), (
        f"the image's Ray {version} does not satisfy pyproject.toml's {ray_spec}")
    python_version = f"{python[2]}.{python[3:]}"
    assert Version(python_version) in SpecifierSet(project["requires-python"])
    # One image for the head and the GPU workers: the CUDA variant.
    assert variant, "the image runs the GPU workers: use a -gpu (CUDA) base"


def test_dockerfile_installs_torch_for_gpu_then_the_project_with_every_extra() -> None:
    steps = _dockerfile()
    version, _, _ = _base_image()
    runs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN"]
    (torch_step,) = [(i, r) for i, r in runs if re.search(r"pip install .*\btorch\b", r) and "mft_search" not in r
                     and not re.search(r"pip install[^&;]*\s['\"]?\.(\[|\s|['\"])", r)]
    assert re.search(r"--index-url\s+https://download\.pytorch\.org/whl/cu\d+", torch_step[1]), (
        "torch must come from PyTorch's CUDA index")
    (project_step,) = [(i, r) for i, r in runs if re.search(r"pip install[^&;]*\s['\"]?\.(\[|\s|['\"])", r)]
    assert torch_step[0] < project_step[0], "torch first, so that installing the project keeps its CUDA build"
    extras = re.search(r"['\"]?\.\[([\w,-]+)\]", project_step[1])
    wanted = set(_pyproject()["optional-dependencies"]) - {"test"}
    assert extras and set(extras.group(1).split(",")) == wanted, f"install the extras {sorted(wanted)}"
    assert f"=={version}" in project_step[1] and "ray[" in project_step[1], "pin the image's Ray in the install"
    # What the install builds from is copied in before it, and exists in the repository.
    copied = set()
    for word, rest in steps[:project_step[0]]:
        if word == "COPY":
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            copied.update(sources)
    assert {"pyproject.toml", "README.md", "mft_search"} <= copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"


def test_rayjob_runs_from_the_images_project_directory() -> None:
    (workdir,) = [rest for word, rest in _dockerfile() if word == "WORKDIR"]
    copied = {s.rstrip("/").removeprefix("./") for word, rest in _dockerfile() if word == "COPY"
              for s in rest.split()[-1:]}
    assert "search_spaces" in copied, "the RayJob's --config search_spaces/... must be in the image"
    entrypoint = _load(RAYJOB)["spec"]["entrypoint"]
    assert re.match(rf"cd {re.escape(workdir)} &&", entrypoint), f"the entrypoint must cd to {workdir}"


def test_ray_version_is_the_same_in_every_cluster_file() -> None:
    # Ray refuses nodes and clients of another version, so one pin for all: the image's
    # base tag, the pin in its install, the manifests' rayVersion and the launchers' images.
    version, python, _ = _base_image()
    versions = {version}
    versions.update(re.findall(r"ray\[[\w,]+\]==([\d.]+)", DOCKERFILE.read_text()))
    pythons = {python}
    for path in MANIFESTS:
        versions.add(_cluster_spec(path)["rayVersion"])
    for path in LAUNCHER_CONFIGS:
        config = _load(path)
        for key in ("head_image", "worker_image"):
            match = re.match(r"rayproject/ray:([\d.]+)-(py3\d+)", config["docker"][key])
            versions.add(match.group(1))
            pythons.add(match.group(2))
        versions.update(re.findall(r"ray\[[\w,]+\]==([\d.]+)", " ".join(config["setup_commands"])))
    assert len(versions) == 1, versions
    assert len(pythons) == 1, pythons


def test_gpu_images_are_gpu_variants() -> None:
    for path in LAUNCHER_CONFIGS:
        assert _load(path)["docker"]["worker_image"].endswith("-gpu")


# ---------------------------------------------------------------- runtime envs


def test_runtime_env_pip_list_matches_pyproject() -> None:
    # clusters/runtime_env.yaml serves `ray job submit` onto a stock Ray image (trying things
    # out); production images have the dependencies baked in.
    expected = _project_deps_without_ray()
    assert _load(RUNTIME_ENV)["pip"] == expected, (
        "clusters/runtime_env.yaml must list pyproject.toml's dependencies minus ray; update it")


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
