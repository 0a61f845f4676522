"""`search` suite: the compute a search needs to find what an exhaustive grid finds, replayed on
a table (tabular benchmarking, as HPO benchmarks do).

The table (bench.search_table), recorded once and cached: every point of the demo's search space
(search_spaces/demo.yaml, continuous ranges discretised: 4 thresholds for global mode) trained in
this process without Ray on the probe stage's data for all the demo's epochs, validated after
every epoch, per item. Replayed on it (bench.search_replay), each with SEEDS seeds:
- grid: the sweep's grid search (every point once, in its seeded order); its compute is the unit.
- random: Optuna's RandomSampler, no early stopping.
- GP: the sweep's `gp` (Optuna's GPSampler), no early stopping.
- TPE: the sweep's `tpe` sampler (tune.sampling.make_sampler), no early stopping.
- TPE + ASHA: the same with Optuna's SuccessiveHalvingPruner at the demo's grace period and
  reduction factor (the asynchronous successive halving Ray's ASHAScheduler implements).
- TPE + ASHA, rung-wise validation: the same, its early rungs scored on a seeded subset of the
  validation items (search.asha.validation_subset; tune.rungs says which report is which rung).
Searches run one trial at a time (the demo runs two), without the demo's enqueued point (a user's
hint would flatter every search), until the configuration they would select is within noise of
the grid's best (bench.search_replay says how that is decided), or they have spent the grid's
trial-epochs or exhausted the space ("not reached", counted as infinite). As in the sweep, a
point a search already ran is not run again: it is told its outcome at no cost (tune.duplicates).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from scipy import stats

from mft_search.bench.search_replay import Landscape, Outcome, Replay, UnitCosts, grid_compute, landscape, quantiles
from mft_search.bench.search_table import (
    CACHE_DIR,
    FORMAT,
    Table,
    config_key,
    discretise,
    file_digest,
    grid_points,
    is_complete,
    load,
    record,
    show,
    table_path,
)
from mft_search.tune.duplicates import MAX_REPEATS

QUICK_ITEMS = 50
SEEDS = 20
QUICK_SEEDS = 3
TARGET = 0.40  # of the grid's compute
SUBSET = 0.25  # rung-wise validation's first-rung fraction when the demo sets none
FLAT = 0.25  # more than this share of the candidates within noise of the best: a first draw often wins


METRICS = ("accuracy", "loss")


def demo_table(quick: bool = False, log=print, metric: str = "accuracy", storage: str | None = None) -> Table:
    """The demo space's table: recorded once (minutes to an hour on 2 cores), then read from the cache.

    `metric` accuracy: the demo's validation benchmark, what its sweep selects on. `loss`: each
    validation problem's mean NLL of its reference answer (the score is its negative, so higher is
    better), what a sweep without a validation benchmark selects on (`validation: null` with a
    `train.validation_split`), on the same 500 problems. `storage`: where the demo run whose Best
    FFT is masked lies, as the sweep's --storage (default: demo.yaml's)."""
    from mft_search.bench.demo_backbone import with_fine_tuned_backbone
    from mft_search.config.schema import parse_config
    from mft_search.sweep import DEMO_CONFIG
    from mft_search.tune.study import Study

    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw = with_fine_tuned_backbone({**raw, "storage": storage} if storage else raw)
    if quick:  # a smoke run: a tenth of the validation problems
        raw["domains"][0]["validation"]["limit"] = QUICK_ITEMS
    files_of = _digests(raw["domains"][0], raw["backbones"][0])
    if metric == "loss":
        raw["domains"][0] = loss_domain(raw["domains"][0])
    with tempfile.TemporaryDirectory() as tmp:
        raw["storage"] = tmp
        cfg = parse_config(raw)
        space = discretise(cfg.search.space)
        if quick:
            space = quick_space(space)
        # Local mode first, then global (the space's order of modes): a recording cut short
        # leaves whole modes recorded, a sub-space a replay can still run on.
        modes = list(space.mode) if isinstance(space.mode, list) else [space.mode]
        points = sorted(grid_points(space), key=lambda p: modes.index(p["mode"]))
        domain = cfg.domains[0]
        key = {"format": FORMAT, "space": space.model_dump(mode="json"), "points": len(points),
               "train": cfg.train.model_dump(mode="json"), "seed": cfg.seed,
               "probe": cfg.stages.probe.model_dump(mode="json"),
               "data": domain.train.model_dump(mode="json"),
               "validation": domain.validation.model_dump(mode="json") if domain.validation else None,
               "files": files_of}
        if metric != "accuracy":  # so the accuracy tables recorded before the option keep their keys
            key["metric"] = metric
        path = table_path(key)
        if is_complete(path):
            return load(path)
        log(f"# recording the table: {len(points)} configurations x {cfg.train.epochs} epochs into {path}")
        # One thread, as Ray gives a trial of one CPU (OMP_NUM_THREADS=1); on a shared 2-core
        # machine more only adds contention.
        torch.set_num_threads(1)
        study = Study(cfg, cfg.backbones[0], domain, Path(tmp))
        study.prepare_data("probe")
        about = {"configurations": len(points), "space": space.model_dump(mode="json"),
                 "grace_period": cfg.search.asha.grace_period, "reduction_factor": cfg.search.asha.reduction_factor,
                 "epochs": cfg.train.epochs, "seed": cfg.search.seed, "quick": quick, "metric": metric}
        return record(study, points, path, about, log)


def _digests(domain: dict[str, Any], backbone: dict[str, Any]) -> dict[str, str]:
    return {name: file_digest(Path(p).expanduser()) for name, p in
            (("train", domain["train"]["source"]), ("validation", domain["validation"]["source"]),
             ("backbone", backbone["source"]))}


def loss_domain(domain: dict[str, Any]) -> dict[str, Any]:
    """The demo's domain selecting on validation loss: no benchmark, and train's validation split
    the validation problems (a directory of train.jsonl and validation.jsonl, linked at a fixed
    place so the tokenised cache is reused; the problems, not this path, key the table)."""
    data_dir = CACHE_DIR / "demo-loss-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        link = data_dir / f"{split}.jsonl"
        source = Path(domain[split]["source"]).expanduser().resolve()
        if link.is_symlink() and link.resolve() != source:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(source)
    train = {**domain["train"], "source": str(data_dir), "split": "train", "validation_split": "validation"}
    limit = domain["validation"].get("limit")
    if limit:  # --quick: a smoke run; `limit` cuts every split, the training one too
        train["limit"] = limit
    return {**domain, "train": train, "validation": None}


def quick_space(space):
    """A tiny corner of the space for --quick: two layer groups and two ratios, every other
    dimension its first choice (the demo's: 4 configurations)."""
    from mft_search.config.space import IntRange, LayerRange, SearchSpace
    from mft_search.core.topk import CUT_SETTING

    updates = {}
    for name, dim in space:
        if isinstance(dim, list) and len(dim) > 1:
            updates[name] = dim[:2] if name == "ratio" else dim[:1]
    groups = space.layer_group
    if isinstance(groups, LayerRange) and isinstance(groups.start, IntRange):
        start = groups.start
        updates["layer_group"] = groups.model_copy(update={"start": start.model_copy(
            update={"high": min(start.high, start.low + start.step)})})
    elif isinstance(groups, list):
        updates["layer_group"] = groups[:2]
    kept_modes = updates.get("mode", space.mode)
    for mode, setting in CUT_SETTING.items():  # a mode left out takes its setting with it
        if mode not in kept_modes:
            updates[setting] = None
    return SearchSpace.model_validate({**space.model_dump(), **updates})


def strategies(table: Table) -> dict[str, tuple]:
    """name -> (sampler of a seed, pruner, rung-wise validation subsets)."""
    from mft_search.config.schema import AshaSettings
    from mft_search.config.space import SearchSpace
    from mft_search.tune.rungs import validation_subsets
    from mft_search.tune.sampling import make_sampler

    about = table.about
    space = SearchSpace.model_validate(about["space"])
    asha = AshaSettings(grace_period=about["grace_period"], reduction_factor=about["reduction_factor"],
                        validation_subset=about.get("validation_subset") or SUBSET)
    epochs = max(len(e) for e in table.epochs)

    def sha() -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=asha.grace_period,
                                                      reduction_factor=asha.reduction_factor)

    none = optuna.pruners.NopPruner
    return {
        "grid": (lambda seed: make_sampler("grid", seed, space), none, None),
        "random": (lambda seed: optuna.samplers.RandomSampler(seed=seed), none, None),
        "GP": (lambda seed: make_sampler("gp", seed, space), none, None),
        "TPE": (lambda seed: make_sampler("tpe", seed, space), none, None),
        "TPE + ASHA": (lambda seed: make_sampler("tpe", seed, space), sha, None),
        f"TPE + ASHA, rung-wise {asha.validation_subset:g}": (lambda seed: make_sampler("tpe", seed, space), sha,
                                                               validation_subsets(asha, epochs)),
    }


def replay_all(table: Table, land: Landscape, seeds: int, stop_at_target: bool = True,
               names: tuple[str, ...] | None = None) -> dict[str, list[Outcome]]:
    from mft_search.config.space import SearchSpace
    from mft_search.tune.sampling import define_by_run

    sample = define_by_run(SearchSpace.model_validate(table.about["space"]))
    budget = grid_compute(table)[0]
    results = {}
    for name, (sampler, pruner, subsets) in strategies(table).items():
        if names is not None and name not in names:
            continue
        results[name] = [Replay(table, land, sample, subsets, subset_seed=seed).run(sampler(seed), pruner(), budget,
                                                                                 stop_at_target)
                         for seed in range(seeds)]
    return results


def run(quick: bool = False, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mft_search.bench search")
    parser.add_argument("--metric", choices=METRICS, default="accuracy",
                        help="accuracy: the demo's validation benchmark; loss: validation loss on the same problems")
    parser.add_argument("--storage", default=None,
                        help="where the demo run lies, as the sweep's --storage (default: demo.yaml's, ~/mft_runs)")
    args = parser.parse_args(argv or [])
    started = time.perf_counter()
    table = demo_table(quick, metric=args.metric, storage=args.storage)
    land = landscape(table)
    seeds = QUICK_SEEDS if quick else SEEDS
    results = replay_all(table, land, seeds)
    # Rung-wise validation's question: with the same budget (the grid's trial-epochs), does the
    # search select as good a configuration for fewer trial-seconds?
    names = tuple(n for n in results if n.startswith("TPE + ASHA"))
    fixed = replay_all(table, land, seeds, stop_at_target=False, names=names)
    _print(table, land, results, fixed, seeds, quick, time.perf_counter() - started)


def _fmt(values: list[float], scale: float) -> str:
    lo, q1, med, q3, hi = (v / scale for v in quantiles(values))
    show = lambda v: "miss" if math.isinf(v) else f"{v:.2f}"
    return f"{show(med):>5} [{show(q1)}, {show(q3)}] ({show(lo)} to {show(hi)})"


def _print(table: Table, land: Landscape, results: dict[str, list[Outcome]], fixed: dict[str, list[Outcome]],
           seeds: int, quick: bool, wall_s: float) -> None:
    candidates = [c for c in range(len(table.configs)) if not table.no_op[c]]
    per_config = {c: max(land.accuracy[(c, e)] for e in range(len(table.epochs[c]))) for c in candidates}
    within = land.config_within(table)
    near = sum(within[c] for c in candidates)
    epochs, seconds = grid_compute(table)
    best_c, best_e = land.best
    values = sorted(per_config.values())
    metric = table.about.get("metric", "accuracy")
    selects = {"accuracy": "the validation benchmark's accuracy", "loss": "validation loss"}[metric]
    print(f"# search: demo space discretised, probe data, {len(table.items)} validation items, selecting on {selects}, "
          f"{table.about['epochs']:g} epochs, ASHA grace {table.about['grace_period']} reduction "
          f"{table.about['reduction_factor']}; {seeds} seeds per strategy"
          + (f" [--quick: a {len(table.configs)}-point corner of the space, {QUICK_ITEMS} items]" if quick else ""))
    costs = UnitCosts.of(table)
    print(f"grid: {len(table.configs)} configurations ({len(candidates)} candidates, "
          f"{len(table.configs) - len(candidates)} no-ops that keep every weight), {epochs} trial-epochs, "
          f"{seconds:.0f} trial-seconds (an epoch: {costs.train_s:.1f} s training + {costs.eval_s_per_item * 1000:.0f} "
          f"ms per validation item, the table's medians)")
    print(f"grid spread (each candidate's best report, {metric}): worst {show(values[0], metric)}, median "
          f"{show(values[len(values) // 2], metric)}, best {show(values[-1], metric)} "
          f"({config_key(table.configs[best_c])}, epoch {best_e + 1})")
    print(f"within noise of the best: {near} of {len(candidates)} candidates (a report whose 95% paired bootstrap "
          "interval of the per-item difference from the best report reaches 0)")
    if near > FLAT * len(candidates):
        print(f"FLAT LANDSCAPE: more than {FLAT:.0%} of the candidates tie the best within noise, so a first random "
              "draw often reaches the target: these figures say little about the searches")
    print(f"{'strategy':<30} {'reached':>7}  {'trial-epochs to target, x grid: median [IQR] (min-max)':<54}"
          f"  trial-seconds to target, x grid")
    for name, outcomes in results.items():
        reached = sum(o.epochs_to_target is not None for o in outcomes)
        e = [o.epochs_to_target if o.epochs_to_target is not None else math.inf for o in outcomes]
        s = [o.seconds_to_target if o.seconds_to_target is not None else math.inf for o in outcomes]
        print(f"{name:<30} {reached:>3}/{len(outcomes):<3}  {_fmt(e, epochs):<54}  {_fmt(s, seconds)}")
    _repeats(results)
    _verdict(results, epochs)
    _rungwise(results, fixed, land, seconds)
    print(f"the suite took {wall_s:.0f} s")


def _repeats(results: dict[str, list[Outcome]]) -> None:
    """How many searches ended by the repeat rule (tune.duplicates) without having reached."""
    ended = ", ".join(f"{name} {sum(o.exhausted and o.epochs_to_target is None for o in outs)}/{len(outs)}"
                      for name, outs in results.items())
    print(f"a repeated point is told its outcome, not run; searches that drew only finished points "
          f"{MAX_REPEATS} times in a row and stopped short of the target: {ended}")


def _epochs(outcomes: list[Outcome], cap: float) -> list[float]:
    return [o.epochs_to_target if o.epochs_to_target is not None else cap for o in outcomes]


def _verdict(results: dict[str, list[Outcome]], grid_epochs: int) -> None:
    tpe, rand = results["TPE + ASHA"], results["random"]
    median = quantiles(_epochs(tpe, math.inf))[2] / grid_epochs
    better = quantiles(_epochs(tpe, math.inf))[2] < quantiles(_epochs(rand, math.inf))[2]
    print(f"TPE + ASHA: median {median:.3f}x the grid's trial-epochs ({'meets' if median <= TARGET else 'MISSES'} "
          f"the {TARGET:.0%} target); its median is {'lower' if better else 'NOT lower'} than random search's "
          f"(one-sided Wilcoxon signed-rank over the seeds, paired: a seed's first draws are the same random "
          f"points in both; p={_paired_p(tpe, rand, grid_epochs):.2g})")


def _paired_p(a: list[Outcome], b: list[Outcome], grid_epochs: int) -> float:
    """P-value that a needs fewer trial-epochs than b; a miss counts one epoch past the budget
    (a rank test: the cap's value does not matter)."""
    x, y = _epochs(a, grid_epochs + 1), _epochs(b, grid_epochs + 1)
    if x == y:  # every seed the same for both: nothing to tell them apart (scipy would warn, nan)
        return 1.0
    try:
        return float(stats.wilcoxon(x, y, alternative="less").pvalue)
    except ValueError:
        return 1.0


def _rungwise(results: dict[str, list[Outcome]], fixed: dict[str, list[Outcome]], land: Landscape,
              grid_seconds: float) -> None:
    full, subset = (fixed[n] for n in fixed)
    name = list(fixed)[1]
    within = {c for c, _ in land.within}
    same = sum(a.selected == b.selected for a, b in zip(full, subset, strict=True))
    good = [sum(o.selected in within for o in runs) for runs in (full, subset)]
    seconds = [quantiles([o.seconds for o in runs])[2] / grid_seconds for runs in (full, subset)]
    lo, _, med, _, hi = quantiles([b.seconds / a.seconds for a, b in zip(full, subset, strict=True)])
    print(f"rung-wise validation, both searches run until they spend the grid's trial-epochs or exhaust the space: "
          f"{name} selects a configuration "
          f"within noise of the best in {good[1]}/{len(subset)} seeds (without it: {good[0]}/{len(full)}), the same "
          f"one as without it in {same}/{len(subset)}, for a median {seconds[1]:.2f}x the grid's trial-seconds "
          f"(without it: {seconds[0]:.2f}x; per seed, with/without: median {med:.2f}, {lo:.2f}-{hi:.2f})")
