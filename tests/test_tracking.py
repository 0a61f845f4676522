"""`tracking:` for real: the config's checks without Ray, then one small sweep that logs to a real
local MLflow database (sqlite, no server) and to W&B offline, read back from what they wrote."""

import json
import subprocess
import sys

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
