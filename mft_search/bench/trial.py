"""`trial` suite: what a demo trial spends before and around its training.

Runs real probe trials of the demo (search_spaces/demo.yaml through the sweep's own run_stage:
Ray Tune on a local Ray, 1 CPU a trial), one after another without early stopping, and splits
each trial's wall time as the driver sees it (Tune starting its actor to the trial's end) into:
the actor's start and imports, the job's loading (tokenizer, backbone, tokenised data,
optimiser), training steps, evaluation, checkpoint saving, and the rest (reports, checkpoint
upload). Fixed cost = wall - training - evaluation - saving. The data is tokenised once, by the
driver, before the trials (builds.jsonl counts it).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from ray import tune
from safetensors import safe_open

from ..config import parse_config
from ..sweep import DEMO_CONFIG, ray_session
from ..tuning import Study, run_stage
from ..storage import Storage

TARGET = 0.25  # fixed cost at most this share of a demo trial's wall time
TRIALS = 2


def run(quick: bool = False) -> None:
    from ..demo import default_cache_dir
    from ..demo.build import COMPLETE

    if not (default_cache_dir() / COMPLETE).exists():
        raise SystemExit("the demo is not built: run `python -m mft_search.sweep` (or mft_search.demo) once first")
    with tempfile.TemporaryDirectory() as tmp:
        exp_dir = Path(tmp) / "bench-trial"
        cfg = parse_config(_config(Path(tmp), quick))
        exp_dir.mkdir(parents=True)
        storage = Storage(exp_dir)
        storage.claim()
        study = Study(cfg, cfg.backbones[0], cfg.domains[0], exp_dir, storage)
        with ray_session():
            start = time.perf_counter()
            study.prepare_data("probe")
            prepare_s = time.perf_counter() - start
            start = time.perf_counter()
            clock = _TrialClock()
            run_stage(study, "probe", exp_dir / "results.parquet", resume=False, log=lambda *_: None,
                      callbacks=[clock])
            stage_s = time.perf_counter() - start
        frame = pd.read_parquet(exp_dir / "results.parquet")
        frame["driver_s"] = frame["trial_id"].map(clock.seconds)
        builds = [json.loads(line) for line in (exp_dir / "cache" / "builds.jsonl").read_text().splitlines()]
    _print(frame, builds, prepare_s, stage_s, study, quick)


class _TrialClock(tune.Callback):
    """Each trial's wall time as the driver sees it: from Tune starting its actor to its end
    (Tune's own time_total_s starts later, once the actor has started and imported)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.seconds[trial.trial_id] = time.perf_counter() - self.started[trial.trial_id]


def _config(tmp: Path, quick: bool) -> dict:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw.update(name="bench-trial", storage=str(tmp))
    raw["search"].update(num_trials=TRIALS, max_concurrent_trials=1, asha=None, enqueue=raw["search"]["enqueue"][:1])
    raw["stages"]["refine"]["top_k"] = 0
    if quick:
        raw["train"]["epochs"] = 1
        raw["domains"][0]["validation"]["limit"] = 64
    return raw


def _print(frame: pd.DataFrame, builds: list[dict], prepare_s: float, stage_s: float, study: Study, quick: bool) -> None:
    last = frame.sort_values("report").groupby("trial_id").tail(1).sort_values("driver_s", ascending=False)
    print(f"# trial: {len(last)} demo probe trials in sequence ({study.cfg.train.epochs} epochs, "
          f"{study.cfg.stages.probe.data_fraction:.0%} of the SFT data, validation every epoch), 1 CPU each"
          + (" [--quick: 1 epoch, 64 validation problems]" if quick else ""))
    print(f"{'trial':>12} {'wall s':>7} {'start':>6} {'load':>6} {'train':>6} {'eval':>6} {'save':>6} {'other':>6} "
          f"{'fixed s':>8} {'fixed %':>8}")
    for _, t in last.iterrows():
        own = t["time_train_s"] + t["time_eval_s"] + t["time_save_s"]
        start = t["driver_s"] - t["wall_s"]  # actor start and imports, before Tune's clock runs
        other = t["wall_s"] - own - t["time_load_s"]  # reporting, checkpoint upload, Train (multi-worker)
        fixed = t["driver_s"] - own
        print(f"{t['trial_id']:>12} {t['driver_s']:7.1f} {start:6.1f} {t['time_load_s']:6.1f} {t['time_train_s']:6.1f} "
              f"{t['time_eval_s']:6.1f} {t['time_save_s']:6.1f} {other:6.1f} {fixed:8.1f} "
              f"{100 * fixed / t['driver_s']:7.1f}%")
    fixed_share = ((last["driver_s"] - last["time_train_s"] - last["time_eval_s"] - last["time_save_s"]) / last["driver_s"])
    verdict = "meets" if fixed_share.median() <= TARGET else "misses"
    print(f"median fixed share {100 * fixed_share.median():.1f}% ({verdict} the {TARGET:.0%} target)")
    print(f"the stage took {stage_s:.1f} s for {len(last)} trials: {stage_s - last['driver_s'].sum():.1f} s of it outside "
          "every trial (Tune's start, its first actor, experiment state, teardown), paid once per stage")
    print(f"\n# tokenisation: {len(builds)} build(s), all before the trials, by "
          f"{', '.join(sorted({b['program'] for b in builds}))}: "
          + ", ".join(f"{b['file'].split('-')[0]} {b['seconds']:.2f} s" for b in builds)
          + f" (prepare_data {prepare_s:.2f} s, paid once per sweep); trials read the Parquet cache")
    _print_backbone(Path(study.backbone.source))


def _print_backbone(path: Path) -> None:
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    with safe_open(str(files[0]), framework="pt") as f:
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
    print(f"# backbone: {len(files)} safetensors file(s), {size / 1e6:.1f} MB, stored as {', '.join(dtypes)}; "
          "a CPU trial loads float32 (bfloat16 on GPU): a file in another dtype is converted on load, once per trial")
