"""--set key.path=value: parsed as YAML, applied before validation, errors naming the option;
and the experiment's config.yaml, which --resume compares with what it is given."""

import pytest
import yaml
from test_config import base

from mft_search.config.overrides import apply_overrides, parse_override
from mft_search.config.schema import load_config_file
from mft_search.errors import ConfigError
from mft_search.experiment.config_record import config_difference, save_config


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base()))
    return path


def test_values_are_yaml_paths_reach_into_lists_and_missing_sections_are_created():
    data = {"train": {"lr": 1.0}, "domains": [{"name": "a", "train": {"limit": 5}}]}
    sets = ["train.lr=1e-4", "domains.0.train.limit=200", "baselines=[unmasked, l1]", "selection.min_gain=0.5",
            "domains.0.validation=null"]
    out = apply_overrides(data, [parse_override(s) for s in sets])
    assert out == {"train": {"lr": 1e-4}, "domains": [{"name": "a", "train": {"limit": 200}, "validation": None}],
                   "baselines": ["unmasked", "l1"], "selection": {"min_gain": 0.5}}
    assert data["train"]["lr"] == 1.0  # the YAML's own data is left as it was


@pytest.mark.parametrize("text, expected", [
    ("train.lr", "--set train.lr: give key.path=value"),
    ("train..lr=1", "--set train..lr=1: give key.path=value"),
    ("0.lr=1", "--set 0.lr: starts with a list index"),
    ("domains.3.name=x", "--set domains[3].name: domains[3] is not an item of a list the config has"),
    ("train.lr=[1", "--set train.lr: the value is not valid YAML"),
    ("name.x=1", "--set name.x: the parent is a str, not a mapping"),
    ("name.x.y=1", "--set name.x.y: the parent of name.x is a str, not a mapping"),
])
def test_a_malformed_override_is_one_line_naming_it(text, expected):
    data = {"name": "n", "train": {"lr": 1.0}, "domains": [{"name": "a"}]}
    with pytest.raises(ConfigError) as info:
        apply_overrides(data, [parse_override(text)])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_overrides_are_validated_like_the_yaml_and_a_bad_one_is_blamed_on_its_option(config_file):
    cfg = load_config_file(config_file, sets=["train.lr=3e-5", "domains.0.train.limit=100", "search.num_trials=4"])
    assert cfg.train.lr == 3e-5 and cfg.domains[0].train.limit == 100 and cfg.search.num_trials == 4
    with pytest.raises(ConfigError) as info:
        load_config_file(config_file, sets=["train.lr=-1"])
    assert str(info.value).startswith("--set train.lr=-1: train.lr: ")
    with pytest.raises(ConfigError) as info:
        load_config_file(config_file, sets=["domains.0.train.limt=3"])
    assert str(info.value).startswith("--set domains.0.train.limt=3: domains[0].train.limt: ")
    assert "limit" in str(info.value)  # the did-you-mean of an unknown key
    with pytest.raises(ConfigError) as info:  # an error the overrides did not cause names the file
        load_config_file(config_file, sets=["train.lr=3e-5", "train.epochs=0"])
    assert str(info.value).startswith("--set train.epochs=0: train.epochs")


def test_resume_compares_the_config_with_the_one_the_experiment_ran(config_file, tmp_path):
    cfg = load_config_file(config_file, sets=["train.lr=3e-5"])
    save_config(tmp_path, cfg.model_dump(mode="json"))
    assert config_difference(tmp_path, cfg.model_dump(mode="json")) is None
    other = load_config_file(config_file, sets=["train.lr=1e-4"])
    assert config_difference(tmp_path, other.model_dump(mode="json")) == "train.lr: 3e-05 then, 0.0001 now"
    more = load_config_file(config_file, sets=["train.lr=3e-5", "baselines=[unmasked]"])
    assert config_difference(tmp_path, more.model_dump(mode="json")).startswith("baselines: ")
    assert config_difference(tmp_path / "old", cfg.model_dump(mode="json")) is None  # none recorded


# --------------------------------------------------------------- --resume auto (no Ray: dry runs and refusals)


@pytest.fixture
def sweep_cli(tmp_path, tiny_backbone, problems_dir):
    """(config path, experiment dir, run(argv) -> (status, stdout, stderr)) for `sweep` in this process."""
    from test_cost import _tiny_config
    from test_sweep import sweep_here

    config = _tiny_config(tmp_path, tiny_backbone, problems_dir)
    exp = tmp_path / "runs" / "cost"

    def run(argv, capsys):
        result = sweep_here(capsys, "--config", config, *argv)
        return result.returncode, result.stdout, result.stderr

    return config, exp, run


def _make_experiment(config: str, exp) -> None:
    """What a started sweep leaves before its first result: the config that ran and studies/."""
    from mft_search.experiment import layout

    save_config(exp, load_config_file(config).model_dump(mode="json"))
    (exp / layout.STUDIES).mkdir()
    assert layout.is_experiment(exp)


def test_resume_auto_starts_a_missing_experiment_where_a_bare_resume_refuses(sweep_cli, capsys):
    _, exp, run = sweep_cli
    status, out, _ = run(["--resume", "auto", "--dry-run"], capsys)
    assert status == 0 and f"--resume auto: starting a new experiment in {exp}" in out
    status, _, err = run(["--resume", "--dry-run"], capsys)
    assert status == 2 and err.startswith(f"error: --resume: {exp} holds no experiment to resume")
    assert not exp.exists()  # a dry run writes nothing


def test_resume_auto_resumes_an_existing_experiment_and_still_refuses_another_config(sweep_cli, capsys):
    config, exp, run = sweep_cli
    _make_experiment(config, exp)
    status, out, _ = run(["--resume", "auto", "--dry-run"], capsys)
    assert status == 0 and f"--resume auto: resuming the experiment in {exp}" in out
    status, _, err = run(["--resume", "auto", "--dry-run", "--set", "train.lr=0.5"], capsys)
    assert status == 2 and err.startswith("error: --resume: this config differs") and "train.lr:" in err
    status, _, err = run(["--resume", "--set", "train.lr=0.5", "--dry-run"], capsys)  # the bare form too
    assert status == 2 and "this config differs" in err
    # Without --resume an existing experiment is refused before Ray starts (no --dry-run: a real run).
    status, _, err = run([], capsys)
    assert status == 2 and "already holds an experiment; pass --resume" in err


def test_resume_takes_only_auto(sweep_cli, capsys):
    _, _, run = sweep_cli
    with pytest.raises(SystemExit) as info:
        run(["--resume", "always", "--dry-run"], capsys)
    err = capsys.readouterr().err  # argparse's wording of the choices differs across Python versions
    assert info.value.code == 2 and "--resume: invalid choice: 'always'" in err and "auto" in err
