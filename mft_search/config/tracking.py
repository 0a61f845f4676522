"""The `tracking:` section: where the sweep also sends its trials, leaderboard and best masks
(MLflow and/or Weights & Biases). Validated here, before Ray starts; tune.tracking does the sending.

    tracking:
      mlflow: {tracking_uri: sqlite:////data/mlflow.db, experiment: mft}
      wandb: {project: mft, mode: offline}
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mft_search.config.space import FieldIssue

_STRICT = ConfigDict(extra="forbid")
# MLflow 3 refuses a plain-directory store unless this is set (its own opt-out, read by mlflow itself).
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"
PIP = {"mlflow": "pip install 'mft_search[tracking]' (or pip install mlflow-skinny)",
       "wandb": "pip install 'mft_search[tracking]' (or pip install wandb)"}


def installed(package: str) -> bool:
    """Whether `package` imports here; a function of its own so that tests can pretend it is missing."""
    return importlib.util.find_spec(package) is not None


class MLflowTracking(BaseModel):
    """One MLflow run per trial (named by its trial id) and one '<name>-summary' run with the results."""

    model_config = _STRICT
    tracking_uri: str = Field(description="where runs go: sqlite:///<path>/mlflow.db (a local database, no server), "
                              "http(s)://host:port (a tracking server), databricks, ...")
    experiment: str | None = Field(None, description="MLflow experiment name, created if missing; null = the sweep's name")
    artifact_location: str | None = Field(
        None, description="where a newly created MLflow experiment keeps artefacts; null = <the database's folder>/"
        "mlartifacts for sqlite (MLflow's default is the current directory), the server's choice otherwise")

    @field_validator("tracking_uri")
    @classmethod
    def _not_a_bare_directory(cls, uri: str) -> str:
        file_store = "://" not in uri or uri.startswith("file:")
        if file_store and os.environ.get(FILE_STORE_OPT_IN, "").lower() not in ("1", "true"):
            # MLflow would raise this only when the first trial starts, after Ray and the data.
            raise ValueError(f"'{uri}' is a plain-directory store, which MLflow 3 refuses; give "
                             f"sqlite:///<path>/mlflow.db, or set {FILE_STORE_OPT_IN}=true to keep a file store")
        return uri


class WandbTracking(BaseModel):
    """One W&B run per trial (id and name: its trial id, grouped by stage) and one '<name>-summary' run."""

    model_config = _STRICT
    project: str | None = Field(None, description="W&B project; null = the sweep's name")
    entity: str | None = Field(None, description="W&B team or user; null = the logged-in user's default")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="online (needs WANDB_API_KEY or `wandb login`), offline (files only, no network: "
        "`wandb sync` them later) or disabled")
    dir: str | None = Field(None, description="folder W&B writes under (<dir>/wandb/); null = the experiment directory")

    @model_validator(mode="after")
    def _online_needs_a_key(self) -> WandbTracking:
        # wandb would fail only when the first trial starts, after Ray and the data are up.
        if self.mode == "online" and not wandb_credentials():
            raise FieldIssue("mode", "online needs a W&B API key and none was found (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, "
                             "or `wandb login`, which writes ~/.netrc); log in, or set mode: offline and "
                             "`wandb sync` the runs later")
        return self


def wandb_credentials() -> bool:
    """Whether W&B can authenticate without asking: the sources wandb reads itself, bar its settings
    file (wandb.sdk.lib.wbauth: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the .netrc entry of its host)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no .netrc, or one wandb could not read either
        return False


class Tracking(BaseModel):
    """Experiment trackers the sweep reports to, besides its own files; each is optional."""

    model_config = _STRICT
    mlflow: MLflowTracking | None = Field(None, description="MLflow: trial runs and a summary run")
    wandb: WandbTracking | None = Field(None, description="Weights & Biases: trial runs and a summary run")

    @model_validator(mode="after")
    def _packages(self) -> Tracking:
        for name in ("mlflow", "wandb"):
            if getattr(self, name) is not None and not installed(name):
                raise FieldIssue(name, f"needs the {name} package, which is not installed; {PIP[name]}")
        return self
