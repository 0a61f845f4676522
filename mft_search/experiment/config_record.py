"""The exact config an experiment ran with, overrides applied: `<experiment>/config.yaml`.

Written when the sweep starts; --resume compares the config it is given with it, because a
resumed sweep with other settings would mix trials of two experiments in one record.
"""

from __future__ import annotations

from typing import Any

import yaml

from mft_search.core import files
from mft_search.core.files import Location, location
from mft_search.experiment import layout


def save_config(exp_dir, config: dict[str, Any]) -> Location:
    """Write the validated config (as plain data) atomically, once per experiment."""
    return files.write_text(location(exp_dir) / layout.CONFIG, yaml.safe_dump(config, sort_keys=False))


def config_difference(exp_dir, config: dict[str, Any]) -> str | None:
    """The first field where `config` differs from the one the experiment ran with, as
    'train.lr: 0.0001 then, 0.001 now'; None when they agree or none was recorded."""
    path = location(exp_dir) / layout.CONFIG
    if not path.exists():  # an experiment from before configs were recorded
        return None
    return _difference(yaml.safe_load(path.read_text()), config, "")


def _difference(then: Any, now: Any, at: str) -> str | None:
    if isinstance(then, dict) and isinstance(now, dict):
        for key in [*then, *(k for k in now if k not in then)]:
            found = _difference(then.get(key), now.get(key), f"{at}.{key}" if at else str(key))
            if found:
                return found
        return None
    if isinstance(then, list) and isinstance(now, list) and len(then) == len(now):
        for i, (a, b) in enumerate(zip(then, now)):
            found = _difference(a, b, f"{at}[{i}]")
            if found:
                return found
        return None
    return None if then == now else f"{at}: {then!r} then, {now!r} now"
