"""The mask a study selected, as `best/<backbone>/<domain>/` holds it: the mask file, its metadata
(mask.json) and the exact config behind it (config.yaml: trial_id, stage, params, mask, train,
backbone, sweep), all written by tune/evaluate.py's export_best. Read only, never modified."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mft_search.core.backbone import BackboneSpec
from mft_search.core.maskfile import load_mask_file
from mft_search.errors import ConfigError
from mft_search.experiment.layout import BEST_CONFIG, BEST_MASK, BEST_META, SUMMARY, best_dir
from mft_search.report.experiment import StudyRecord, first_line

FILES = (BEST_MASK, BEST_META, BEST_CONFIG)


@dataclass(frozen=True)
class SelectedMask:
    """A study's exported selection: where it lies, the mask file's metadata and the selected trial's config."""

    directory: Path
    meta: dict[str, Any]  # mask.json
    config: dict[str, Any]  # config.yaml
    backbone: BackboneSpec  # config.yaml's backbone: the model the mask was learned on

    @property
    def kept(self) -> tuple[int, int]:
        """(weights kept, weights in the masked modules)."""
        modules = self.meta["modules"]
        return sum(kept for _, _, kept in modules), sum(math.prod(shape) for _, shape, _ in modules)

    def backbone_path(self) -> str:
        """What `python -m mft_search.apply --backbone` takes for this backbone."""
        source, gguf = self.backbone.source, self.backbone.gguf_file
        return f"{source.rstrip('/')}/{gguf}" if gguf else source

    def domain(self, name: str) -> dict[str, Any]:
        """The sweep config's block for domain `name` (train, validation, test), or {} if it is not recorded."""
        domains = (self.config.get("sweep") or {}).get("domains") or []
        return next((d for d in domains if d.get("name") == name), {})


def why_none(study: StudyRecord) -> str | None:
    """Why the study has no mask to export (not evaluated yet, or nothing selected), or None when it has one."""
    if study.summary is None:
        return (f"{study.name}: not evaluated yet (no studies/{study.slug}/{SUMMARY}); export it once the sweep "
                "has finished this study (--resume an interrupted one)")
    best = study.summary.row("best_mft")
    if best is None or not best.selected:
        return f"no mask was selected for {study.name}: {study.summary.verdict or 'no verdict recorded'}"
    return None


def load_selected(exp_dir: Path, study: StudyRecord) -> SelectedMask:
    """The study's exported mask, integrity-checked; ConfigError (or MaskFileError) says why there is none."""
    why = why_none(study)
    if why:
        raise ConfigError(why)
    directory = best_dir(exp_dir, study.backbone, study.domain)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ConfigError(f"{directory}: {', '.join(missing)} missing; the sweep writes {', '.join(FILES)} there "
                          "when it selects a mask: copy the whole experiment directory, best/ included")
    meta = load_mask_file(directory / BEST_MASK).meta  # refuses a truncated or tampered file before it is published
    _check_meta(directory, meta)
    config = _read_config(directory / BEST_CONFIG)
    return SelectedMask(directory, meta, config, _backbone(directory / BEST_CONFIG, config))


def _check_meta(directory: Path, meta: dict[str, Any]) -> None:
    """mask.json must be the mask file's own metadata: the card describes it and ships beside the file."""
    try:
        recorded = json.loads((directory / BEST_META).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{directory / BEST_META}: not JSON ({first_line(exc)})") from exc
    if recorded != meta:
        raise ConfigError(f"{directory / BEST_META}: differs from {BEST_MASK}'s own metadata; "
                          "copy both from the experiment's best/ again")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not the mapping the sweep writes (trial_id, params, mask, backbone, sweep)")
    return config


def _backbone(path: Path, config: dict[str, Any]) -> BackboneSpec:
    try:
        return BackboneSpec.model_validate(config.get("backbone"))
    except ValidationError as exc:
        raise ConfigError(f"{path}: backbone is not a backbone spec this mft_search reads "
                          f"({first_line(exc)}); export with the version that ran the sweep") from exc
