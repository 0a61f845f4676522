"""`trial` suite: what a demo trial spends before and around its training.

Runs real probe trials of the demo (search_spaces/demo.yaml through the sweep's own run_stage:
Ray Tune on a local Ray, 1 CPU a trial), one after another without early stopping, and splits
each trial's wall time into: the job's loading (tokenizer, backbone, tokenised data, optimiser),
training steps, evaluation, checkpoint saving, the rest of its time on the driver's clock
(reports, checkpoint upload), and what no trial's clock sees (a new actor starting): the
difference between a 1-trial and a 3-trial stage, per extra trial. Fixed cost = wall - training
- evaluation - saving. The data is tokenised once, by the driver, before the trials
(builds.jsonl counts it).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from ray import tune
from safetensors import safe_open

from mft_search.config.schema import parse_config
from mft_search.core.data.cache import BUILD_LOG
from mft_search.experiment import layout
from mft_search.experiment.storage import Storage
from mft_search.sweep import DEMO_CONFIG, ray_session
from mft_search.tune.stage import run_stage
from mft_search.tune.study import Study

TARGET = 0.25  # fixed cost at most this share of a demo trial's wall time
TRIALS = (1, 3)  # two stages: what the second costs beyond the first is per trial


@dataclass
class Stage:
    trials: pd.DataFrame  # each trial's last report, with driver_s
    builds: list[dict]
    prepare_s: float
    wall_s: float

    @property
    def outside_s(self) -> float:
        """Stage time no trial's clock saw: Tune's start and teardown, actor starts."""
        return self.wall_s - self.trials["driver_s"].sum()


def run(quick: bool = False) -> None:
    from mft_search.demo import default_cache_dir
    from mft_search.demo.assets import COMPLETE

    if not (default_cache_dir() / COMPLETE).exists():
        raise SystemExit("the demo is not built: run `python -m mft_search.sweep` (or mft_search.demo) once first")
    with tempfile.TemporaryDirectory() as tmp, ray_session():
        cfg = parse_config(_config(Path(tmp), quick))
        one, many = (_run_stage(cfg, Path(tmp) / f"stage-{n}", n) for n in TRIALS)
    _print(one, many, cfg, quick)


def _run_stage(cfg, exp_dir: Path, trials: int) -> Stage:
    """A probe stage of `trials` demo trials, one after another, in a fresh experiment directory."""
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"num_trials": trials})})
    exp_dir.mkdir(parents=True)
    storage = Storage(exp_dir)
    storage.claim()
    study = Study(cfg, cfg.backbones[0], cfg.domains[0], exp_dir, storage)
    start = time.perf_counter()
    study.prepare_data("probe")
    prepare_s = time.perf_counter() - start
    clock = _TrialClock()
    start = time.perf_counter()
    run_stage(study, "probe", layout.results_path(exp_dir), resume=False, log=lambda *_: None, callbacks=[clock])
    wall_s = time.perf_counter() - start
    frame = pd.read_parquet(layout.results_path(exp_dir))
    last = frame.sort_values("report").groupby("trial_id").tail(1).copy()
    last["driver_s"] = last["trial_id"].map(clock.seconds)
    builds = [json.loads(line) for line in (exp_dir / layout.CACHE / BUILD_LOG).read_text().splitlines()]
    return Stage(last, builds, prepare_s, wall_s)


class _TrialClock(tune.Callback):
    """Each trial's wall time on the driver's clock, from Tune's on_trial_start to its end. A new
    actor starts before on_trial_start: that shows only in the stage's time outside every trial."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.seconds[trial.trial_id] = time.perf_counter() - self.started[trial.trial_id]


def _config(tmp: Path, quick: bool) -> dict:
    from mft_search.bench.demo_backbone import with_fine_tuned_backbone

    raw = with_fine_tuned_backbone(yaml.safe_load(DEMO_CONFIG.read_text()))
    raw.update(name="bench-trial", storage=str(tmp))
    raw["search"].update(num_trials=max(TRIALS), max_concurrent_trials=1, asha=None, enqueue=[])
    raw["stages"]["refine"]["top_k"] = 0
    if quick:
        raw["train"]["epochs"] = 1
        raw["domains"][0]["validation"]["limit"] = 64
    return raw


def _print(one: Stage, many: Stage, cfg, quick: bool) -> None:
    per_trial_outside = (many.outside_s - one.outside_s) / (len(many.trials) - len(one.trials))
    print(f"# trial: demo probe trials in sequence ({cfg.train.epochs:g} epochs, {cfg.stages.probe.data_fraction:.0%} "
          "of the SFT data, validation every epoch), 1 CPU each"
          + (" [--quick: 1 epoch, 64 validation problems]" if quick else ""))
    print(f"{'trial':>12} {'wall s':>7} {'load':>6} {'train':>6} {'eval':>6} {'save':>6} {'other':>6} {'+ unseen':>9} "
          f"{'fixed s':>8} {'fixed %':>8}")
    shares = []
    for _, t in many.trials.iterrows():
        own = t["time_train_s"] + t["time_eval_s"] + t["time_save_s"]
        other = t["driver_s"] - own - t["time_load_s"]  # reporting, checkpoint upload
        wall = t["driver_s"] + per_trial_outside
        fixed = wall - own
        shares.append(fixed / wall)
        print(f"{t['trial_id']:>12} {wall:7.1f} {t['time_load_s']:6.1f} {t['time_train_s']:6.1f} {t['time_eval_s']:6.1f} "
              f"{t['time_save_s']:6.1f} {other:6.1f} {per_trial_outside:9.1f} {fixed:8.1f} {100 * fixed / wall:7.1f}%")
    median = statistics.median(shares)
    print(f"median fixed share {100 * median:.1f}% ({'meets' if median <= TARGET else 'misses'} the {TARGET:.0%} target)")
    print(f"stages of {len(one.trials)} and {len(many.trials)} trials took {one.wall_s:.1f} s and {many.wall_s:.1f} s, "
          f"{one.outside_s:.1f} s and {many.outside_s:.1f} s of it outside every trial's own clock: "
          f"{per_trial_outside:.1f} s a trial (\"+ unseen\": its actor's start), the rest once per stage")
    builds = many.builds
    print(f"\n# tokenisation: {len(builds)} build(s) per stage, before its trials, by "
          f"{', '.join(sorted({b['program'] for b in builds}))}: "
          + ", ".join(f"{b['file'].split('-')[0]} {b['seconds']:.2f} s" for b in builds)
          + f" (prepare_data {many.prepare_s:.2f} s, once per sweep and data fraction); trials read the Parquet cache")
    _print_backbone(Path(cfg.backbones[0].source))


def _print_backbone(path: Path) -> None:
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    with safe_open(str(files[0]), framework="pt") as f:
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})  # noqa: SIM118 (safe_open has keys(), no __iter__)
    print(f"# backbone: {len(files)} safetensors file(s), {size / 1e6:.1f} MB, stored as {', '.join(dtypes)}; "
          "a CPU trial loads float32 (bfloat16 on GPU): a file in another dtype is converted on load, once per trial")
