"""The project as a user installs it: a wheel in a fresh venv, `python -m mft_search.sweep --dry-run`
run from another directory, with nothing of this checkout importable.

The venv sees this interpreter's packages (torch, Ray, ...) so that nothing is downloaded, but not
the checkout: PYTHONPATH is dropped, and when this interpreter is itself a venv its site-packages
join the new one as plain .pth paths, whose own .pth files (an editable install's finder among
them) are not run. Every mft_search module the command loads must come from the wheel.

The embedded demo's config ships as package data (mft_search/demo/demo.yaml); search_spaces/demo.yaml
is the copy users read and copy. Two real files rather than a symlink, so that the copy reads as
YAML on GitHub, in archives and in checkouts without symlinks; the first test keeps them identical.

The others are marked slow (~35 s on 2 cores: a wheel build, a venv, three interpreters importing
torch); `-m "not slow"` leaves them out.
"""

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from mft_search.config.schema import load_config_file

ROOT = Path(__file__).resolve().parents[1]
VISIBLE_DEMO = ROOT / "search_spaces" / "demo.yaml"
PACKAGED_DEMO = ROOT / "mft_search" / "demo" / "demo.yaml"

# What must not reach the build or the venv: this checkout, and pip settings that could download.
DROPPED = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV"}
# Build outputs and caches, which an in-tree build would otherwise leave in (or take from) the checkout.
NOT_COPIED = shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist", "runs")


def test_the_packaged_demo_config_is_search_spaces_demo_yaml():
    from mft_search.sweep import DEMO_CONFIG

    assert PACKAGED_DEMO.read_bytes() == VISIBLE_DEMO.read_bytes(), (
        "search_spaces/demo.yaml and mft_search/demo/demo.yaml differ: edit one, then copy it over the other "
        "(cp search_spaces/demo.yaml mft_search/demo/demo.yaml)")
    assert DEMO_CONFIG.read_bytes() == VISIBLE_DEMO.read_bytes()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith("PIP_")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", **extra}


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, Path]:
    """(python, site-packages) of a fresh venv holding only the wheel of this checkout."""
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("building and installing a wheel offline needs pip and setuptools in this interpreter")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_COPIED)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", tmp / "dist", src], env=_env(), cwd=tmp)
    wheel, = (tmp / "dist").glob("mft_search-*.whl")

    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", tmp / "venv"], env=_env())
    python = tmp / "venv" / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        env=_env(), cwd=tmp).stdout.strip())
    if sys.prefix != sys.base_prefix:
        # --system-site-packages reaches the base interpreter's packages, not this venv's: add them.
        (purelib / "_test_interpreter_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel],
         env=_env(), cwd=tmp)
    return python, purelib


# Every mft_search module that importing the CLI (and the demo it reads from) loads, with its file.
WHERE = """
import json, sys
import mft_search.sweep
print(json.dumps({"demo_config": str(mft_search.sweep.DEMO_CONFIG),
                  "modules": {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                              if name.split(".")[0] == "mft_search"}}))
"""


@pytest.mark.slow
def test_mft_search_is_imported_from_the_installed_wheel(venv, tmp_path):
    python, purelib = venv
    where = json.loads(_run([python, "-c", WHERE], env=_env(), cwd=tmp_path).stdout)
    assert where["modules"]["mft_search"] == str(purelib / "mft_search" / "__init__.py")
    outside = {name: path for name, path in where["modules"].items() if not (path or "").startswith(f"{purelib}/")}
    assert not outside, f"mft_search modules imported from outside the venv's site-packages: {outside}"
    assert where["demo_config"] == str(purelib / "mft_search" / "demo" / "demo.yaml")


def _fake_demo_build(home: Path) -> None:
    """What a dry run reads of a finished demo build: the base's config and tokenizer, the data."""
    from mft_search.demo import TEMPLATE
    from mft_search.demo.assets import COMPLETE, VERSION, DemoAssets
    from mft_search.demo.problems import make_splits
    from mft_search.demo.tiny import tiny_llama, tiny_tokenizer

    assets = DemoAssets(home / ".cache" / "mft_search" / "demo" / VERSION)
    splits = make_splits(0, 16, 8, 8, 8)
    assets.pretrained.mkdir(parents=True)
    tiny_llama().config.save_pretrained(assets.pretrained)  # no weights: a dry run never loads them
    tokenizer = tiny_tokenizer([TEMPLATE.format(prompt=p.question) + p.answer for p in splits.train])
    tokenizer.save_pretrained(assets.pretrained)
    for path, problems in ((assets.train, splits.train), (assets.fft_selection, splits.fft_selection),
                           (assets.validation, splits.validation), (assets.test, splits.test)):
        path.write_text("".join(json.dumps(p.record()) + "\n" for p in problems), encoding="utf-8")
    (assets.root / COMPLETE).write_text(VERSION + "\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("built", [False, True], ids=["demo-not-built", "demo-built"])
def test_installed_default_dry_run_plans_the_demo(venv, tmp_path, built):
    """The no-argument default, from the wheel, in a directory with no search_spaces/ nearby."""
    python, _ = venv
    home, cwd = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    cwd.mkdir()
    if built:
        _fake_demo_build(home)
    demo_cache = home / ".cache" / "mft_search"
    before = sorted(demo_cache.rglob("*"))
    result = subprocess.run([python, "-m", "mft_search.sweep", "--dry-run"], capture_output=True, text=True,
                            timeout=300, cwd=cwd, env=_env(HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    cfg = load_config_file(VISIBLE_DEMO)
    plan = result.stdout
    assert f"experiment {cfg.name}: outputs in {home}/mft_runs/{cfg.name}/" in plan
    assert f"probe {cfg.search.trials} trials" in plan
    per_study = cfg.search.trials + cfg.stages.refine.top_k
    assert f"trials: {per_study} per study, {per_study} in all, plus {len(cfg.baselines)} baseline run(s)" in plan
    assert f"({', '.join(cfg.baselines)})" in plan
    assert (f"backbone {cfg.backbones[0].label}: llama, 4 blocks" in plan) == built
    assert ("note: the demo backbone and its data are not built yet" in plan) == (not built)
    assert sorted(demo_cache.rglob("*")) == before  # a dry run builds nothing
    assert not (home / "mft_runs").exists()  # and writes no experiment
