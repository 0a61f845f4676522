"""The demo's fine-tuned backbone, for the benchmarks that measure trials and evaluations on it.

Since demo v2 the build stops at the pre-trained base and the sweep's fft stage fine-tunes it,
so the model MFT masks is the best FFT checkpoint of a finished demo run (its fft.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mft_search.errors import ConfigError
from mft_search.experiment import layout
from mft_search.experiment.fft_record import load_fft_record


def fine_tuned_demo(demo_config: dict[str, Any]) -> Path:
    """The best FFT checkpoint of the demo experiment `demo_config` names; ConfigError saying how
    to make one when it has not run."""
    storage = Path(demo_config["storage"]).expanduser() / demo_config["name"]
    backbone, domain = demo_config["backbones"][0]["name"], demo_config["domains"][0]["name"]
    record = load_fft_record(layout.study_dir(storage, layout.study_slug(backbone, domain)))
    if record is None:
        raise ConfigError(f"bench: no fine-tuned demo backbone in {storage} (its fft stage has not run); "
                          "run `python -m mft_search.sweep` once first")
    return Path(record.best_point.checkpoint)


def with_fine_tuned_backbone(raw: dict[str, Any]) -> dict[str, Any]:
    """The demo config masking its fine-tuned backbone directly: no fft stage, no baselines that
    need the pretrained model."""
    backbone = {**raw["backbones"][0], "source": str(fine_tuned_demo(raw))}
    stages = {k: v for k, v in raw["stages"].items() if k != "fft"}
    domains = [{k: v for k, v in d.items() if k != "fft_selection"} for d in raw["domains"]]
    baselines = [b for b in raw["baselines"] if b not in ("revert", "lora")]
    return {**raw, "backbones": [backbone], "stages": stages, "domains": domains, "baselines": baselines}
