"""`search` suite: the compute a search needs to find what an exhaustive grid finds.

On the demo space (search_spaces/demo.yaml), trials run in this process without Ray (we count
compute, not wall time: trial-epochs), on the probe stage's data, validated after every epoch.
- Grid: every layer group of the space x ratios {0.05, 0.1, 0.2} x inits, local mode (the
  paper's grid), all epochs. Its best validation score is the target; its compute is the unit.
- TPE + ASHA: the sweep's own search space (tune.sampling.define_by_run) and sampler (make_sampler),
  without the demo's enqueued point (a user's hint would flatter both searches), one trial at a
  time, with Optuna's SuccessiveHalvingPruner at the demo's grace period and reduction factor
  (the asynchronous successive halving that Ray's ASHAScheduler implements).
- Random: the same space, RandomSampler, no early stopping.
Each search stops when its best report so far reaches the grid's best minus 0.5 points, or when
it has spent the grid's compute ("not reached"). Median of 3 seeds. A configuration is trained
once per run (training is seeded, so results repeat) and every search is charged the epochs it
would have run.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

TOLERANCE = 0.005  # 0.5 points of accuracy
TARGET = 0.40  # of the grid's compute
GRID_RATIOS = (0.05, 0.1, 0.2)
SEEDS = (0, 1, 2)

Objective = Callable[[dict[str, Any]], list[float]]  # params -> validation metric after each epoch


@dataclass(frozen=True)
class Outcome:
    """One search: compute spent until it reached the target (None: never within its budget)."""

    reached_at: int | None
    spent: int
    trials: int
    best: float


def grid_points(layer_groups: list[str], inits: list[str]) -> list[dict[str, Any]]:
    return [{"layer_group": g, "mode": "local", "ratio": r, "init": i}
            for g, r, i in itertools.product(layer_groups, GRID_RATIOS, inits)]


def run_grid(objective: Objective, points: list[dict[str, Any]]) -> tuple[float, int]:
    """(best report of any point, trial-epochs of all of them)."""
    curves = [objective(p) for p in points]
    return max(max(c) for c in curves), sum(len(c) for c in curves)


def run_search(objective: Objective, space_fn: Callable, sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner, target: float, budget: int,
               enqueue: list[dict[str, Any]] = ()) -> Outcome:
    """Sequential ask/tell; each epoch's report is charged, and may reach the target or be pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for point in enqueue:
        study.enqueue_trial(point)
    spent, trials, best = 0, 0, -math.inf
    while spent < budget:
        trial = study.ask()
        curve = objective(space_fn(trial))
        trials += 1
        for epoch, value in enumerate(curve, start=1):
            spent += 1
            best = max(best, value)
            if best >= target:
                return Outcome(spent, spent, trials, best)
            if spent >= budget:
                break
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
    return Outcome(None, spent, trials, best)


def median_ratio(outcomes: list[Outcome], grid_compute: int) -> float:
    """Median over seeds of compute-to-reach / grid compute; inf for a seed that never reached."""
    return statistics.median(o.reached_at / grid_compute if o.reached_at else math.inf for o in outcomes)


class DemoObjective:
    """Trains demo MFT trials in-process, memoised by their parameters."""

    def __init__(self, cfg, workdir: Path) -> None:
        from mft_search.tune.study import Study

        self.study = Study(cfg, cfg.backbones[0], cfg.domains[0], workdir)
        self.workdir, self.memo, self.trained_s = workdir, {}, 0.0

    def __call__(self, params: dict[str, Any]) -> list[float]:
        key = json.dumps(params, sort_keys=True)
        if key not in self.memo:
            self.memo[key] = self._train(params)
        return self.memo[key]

    def _train(self, params: dict[str, Any]) -> list[float]:
        from mft_search.train.job import run_job
        from mft_search.train.session import LocalSession

        name = f"t{len(self.memo):03d}"
        session = LocalSession(self.workdir / "sessions" / name)
        start = time.perf_counter()
        run_job(self.study.mft_job(params, name, "probe"), session)
        self.trained_s += time.perf_counter() - start
        return [r["metric"] for r in session.reports]


def run(quick: bool = False) -> None:
    from mft_search.config.schema import parse_config
    from mft_search.config.space import encode_blocks, layer_groups
    from mft_search.sweep import DEMO_CONFIG
    from mft_search.bench.demo_backbone import with_fine_tuned_backbone
    from mft_search.tune.sampling import define_by_run, make_sampler

    raw = with_fine_tuned_backbone(yaml.safe_load(DEMO_CONFIG.read_text()))
    if quick:  # a smoke run: a tenth of the validation problems, one seed
        raw["domains"][0]["validation"]["limit"] = 50
    seeds = SEEDS[:1] if quick else SEEDS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw["storage"] = tmp
        cfg = parse_config(raw)
        space, asha = cfg.search.space, cfg.search.asha
        objective = DemoObjective(cfg, Path(tmp))
        groups = [encode_blocks(g) for g in layer_groups(space)]
        points = grid_points(groups, list(space.init) if isinstance(space.init, list) else [space.init])
        grid_best, grid_compute = run_grid(objective, points)
        target = grid_best - TOLERANCE
        results: dict[str, list[Outcome]] = {"TPE + ASHA": [], "random": []}
        for seed in seeds:
            pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=asha.grace_period,
                                                            reduction_factor=asha.reduction_factor)
            results["TPE + ASHA"].append(run_search(objective, define_by_run(space), make_sampler("tpe", seed, space),
                                                    pruner, target, grid_compute))
            results["random"].append(run_search(objective, define_by_run(space),
                                                optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(),
                                                target, grid_compute))
        point_bests = [max(objective(p)) for p in points]
    _print(points, point_bests, grid_compute, results, objective, time.perf_counter() - started, quick)


def _print(points, point_bests, grid_compute, results, objective, wall_s, quick) -> None:
    grid_best = max(point_bests)
    near = sum(b >= grid_best - TOLERANCE for b in point_bests)
    print(f"# search: demo space, probe data, trials in-process{' [--quick: 50 validation problems, 1 seed]' if quick else ''}")
    print(f"grid: {len(points)} configurations (layer groups x ratios {GRID_RATIOS} x inits, local), "
          f"{grid_compute} trial-epochs, best validation {100 * grid_best:.1f}%; target {100 * (grid_best - TOLERANCE):.1f}%")
    print(f"grid spread: worst {100 * min(point_bests):.1f}%, median {100 * statistics.median(point_bests):.1f}%, "
          f"best {100 * grid_best:.1f}%; {near} of {len(points)} configurations reach the target (a flat space "
          "lets any search reach it at once)")
    print(f"{'strategy':>11} {'seed':>4} {'trials':>6} {'trial-epochs to reach':>22} {'x grid':>7} {'best':>6}")
    for name, outcomes in results.items():
        for seed, o in zip(SEEDS, outcomes):
            reach = str(o.reached_at) if o.reached_at else f"not in {o.spent}"
            ratio = f"{o.reached_at / grid_compute:.2f}" if o.reached_at else "-"
            print(f"{name:>11} {seed:>4} {o.trials:>6} {reach:>22} {ratio:>7} {100 * o.best:5.1f}%")
        median = median_ratio(outcomes, grid_compute)
        verdict = "meets" if median <= TARGET else "misses"
        print(f"{name:>11} median {median:.2f}x the grid's compute ({verdict} the {TARGET:.0%} target)")
    print(f"{len(objective.memo)} distinct configurations trained in {objective.trained_s:.0f} s; "
          f"the suite took {wall_s:.0f} s")
