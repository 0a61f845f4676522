"""python -m mft_search.sweep [--config FILE] [--resume [auto]] [--dry-run] [--storage PATH|URI]

Searches, per backbone x domain, the mask that makes a fine-tuned model better: a probe stage
(Optuna + ASHA on a fraction of the data), a refine stage (the best probe points on all of it),
selection on validation, then the selected mask and every baseline on the test benchmark.

Inside `ray job submit`, or with RAY_ADDRESS set, it joins that cluster; otherwise it starts a
local Ray sized to this machine and shuts it down at the end. With no --config it runs the
embedded demo (mft_search/demo/demo.yaml, package data: the same bytes as search_spaces/demo.yaml),
building its tiny backbone first if needed; a dry run of it builds nothing.

Exit status: 0 done; 2 bad input (one line naming the field and the fix; nothing written, no Ray
left); 3 storage filled or vanished mid-run (one line; results so far intact: fix the storage,
then --resume).

--resume finishes the experiment of the config's name and refuses when there is none; --resume auto
finishes it when it exists and starts it when not, so that a job that is resubmitted or retried
(a KubeRay RayJob's backoffLimit) runs the same command every time. Both refuse a config that
differs from the one the experiment started with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from importlib.resources import as_file, files

from mft_search import cli
from mft_search.config.cost import ACCELERATORS, DEFAULT_GPU, DEFAULT_UTILISATION, Plan, cost_plan
from mft_search.config.disjoint import check_splits_disjoint
from mft_search.config.schema import (
    SweepConfig,
    check_against_models,
    check_data,
    describe_plan,
    load_config_file,
    resolve_storage,
)
from mft_search.config.sizes import data_sizes
from mft_search.core.files import Location, location
from mft_search.errors import ConfigError, did_you_mean
from mft_search.experiment import layout

# Package data, so that an installed wheel (which has no search_spaces/) still finds it.
# search_spaces/demo.yaml is the copy users read and copy: tests/test_install.py keeps the two byte-identical.
DEMO_CONFIG = files("mft_search.demo") / "demo.yaml"

# --resume's two forms: bare (the experiment must exist) and `--resume auto` (resume it or start it).
# REQUIRED is argparse's const, never typed by a user, so it is not among the choices.
REQUIRED, AUTO = True, "auto"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_cost_options(args)
    started = time.perf_counter()
    demo = args.config is None
    if demo and not args.dry_run:
        from mft_search.demo import build_demo

        build_demo()
    overrides = {"storage": args.storage} if args.storage else {}
    cfg = load_demo_config(overrides, args.set) if demo else load_config_file(args.config, overrides, args.set)
    # An unbuilt demo (only a dry run gets here) has neither the backbone nor the data files yet: the
    # build writes both, so there is nothing to check them against.
    demo_pending = demo and not _demo_built()
    model_configs = {} if demo_pending else check_against_models(cfg)
    if not demo_pending:
        check_data(cfg)
        check_splits_disjoint(cfg)
    exp_dir = location(resolve_storage(cfg)) / cfg.name  # a local directory or a bucket prefix (core.files)
    resume = _check_experiment_dir(exp_dir, args.resume, args.dry_run)
    if resume:
        _check_same_config(cfg, exp_dir)
    if args.resume == AUTO and not args.json:
        print(f"--resume auto: {'resuming the experiment in' if resume else 'starting a new experiment in'} "
              f"{exp_dir}", flush=True)
    cost = _cost_plan(args, cfg, model_configs, demo_pending)
    if args.json:
        print(json.dumps({"plan": describe_plan(cfg, model_configs).splitlines(),
                          "cost": cost.to_dict() if cost else None}, indent=2))
        return 0
    print(describe_plan(cfg, model_configs), flush=True)
    print("\n".join(cost.lines()) if cost else "cost: not estimated (the demo backbone is not built yet)", flush=True)
    if args.dry_run:
        if demo_pending:
            print("note: the demo backbone and its data are not built yet, so neither was checked; "
                  "a real run builds them first")
        return 0
    with ray_session() as cluster:
        from mft_search.tune.cluster import check_cluster

        check_cluster(cfg, cluster, exp_dir)
        from mft_search.report import write_report
        from mft_search.tune.sweep import run_sweep

        leaderboard = run_sweep(cfg, exp_dir, resume=resume, finish=write_report)
    print(leaderboard)
    print(f"outputs in {exp_dir} ({time.perf_counter() - started:.0f} s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mft_search.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="sweep YAML (default: the embedded demo)")
    # nargs="?": a bare --resume keeps its meaning (const), `--resume auto` is the only value.
    parser.add_argument("--resume", nargs="?", const=REQUIRED, choices=[AUTO], default=None,
                        help="finish an interrupted sweep of the same name; with `auto`, finish it if it "
                             "exists and start it if not (for jobs that are retried or resubmitted)")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan; run nothing")
    parser.add_argument("--storage", help="override the config's storage: a directory (on a cluster, one every node "
                        "mounts) or a bucket URI, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    parser.add_argument("--gpu", help=f"accelerator the cost plan assumes: {', '.join(ACCELERATORS)} "
                        f"(default {DEFAULT_GPU}; cpu when resources.gpus_per_worker is 0)")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION,
                        help=f"fraction of the accelerator's peak dense bf16 FLOP/s reached (default {DEFAULT_UTILISATION})")
    parser.add_argument("--train-examples", type=int, metavar="N",
                        help="rows of a hub train.source's split, which the plan cannot count")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan and its cost as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config field before validation, the value read as YAML "
                             "(repeatable; list indices allowed: --set domains.0.train.limit=200)")
    return parser


def _check_cost_options(args) -> None:
    """The cost options' own mistakes, before anything is loaded."""
    if args.json and not args.dry_run:
        raise ConfigError("--json: prints the dry run's plan; add --dry-run")
    if args.gpu is not None and args.gpu not in ACCELERATORS:
        raise ConfigError(f"--gpu: unknown accelerator '{args.gpu}'{did_you_mean(args.gpu, ACCELERATORS)}; "
                          f"choose one of {', '.join(ACCELERATORS)}")
    if not 0 < args.utilisation <= 1:
        raise ConfigError(f"--utilisation: {args.utilisation:g} is outside (0, 1]; e.g. 0.4 for 40% of peak")
    if args.train_examples is not None and args.train_examples < 1:
        raise ConfigError(f"--train-examples: {args.train_examples} is not a row count; give N >= 1")


def _cost_plan(args, cfg: SweepConfig, model_configs: dict, demo_pending: bool) -> Plan | None:
    """The plan's cost, None for an unbuilt demo (no backbone to size, no data to count)."""
    if demo_pending:
        return None
    return cost_plan(cfg, model_configs, data_sizes(cfg, args.train_examples), args.gpu, args.utilisation)


def load_demo_config(overrides: dict | None = None, sets: list[str] = ()) -> SweepConfig:
    """The embedded demo's config, read from the installed package (a real file even from a zip)."""
    with as_file(DEMO_CONFIG) as path:
        return load_config_file(path, overrides, sets)


def _demo_built() -> bool:
    from mft_search.demo import default_cache_dir
    from mft_search.demo.assets import COMPLETE

    return (default_cache_dir() / COMPLETE).exists()


def _check_experiment_dir(exp_dir: Location, resume: bool | str | None, dry_run: bool) -> bool:
    """Whether this run resumes exp_dir (else it starts it); a finished or half-finished experiment is
    never overwritten by accident. `resume` is the --resume option: None, REQUIRED or AUTO."""
    exists = layout.is_experiment(exp_dir)
    if exists and resume is None and not dry_run:
        raise ConfigError(f"name: {exp_dir} already holds an experiment; pass --resume to finish it, "
                          "or choose another name")
    if resume == REQUIRED and not exists:
        raise ConfigError(f"--resume: {exp_dir} holds no experiment to resume; run without --resume "
                          "(or with --resume auto, which starts it when there is none)")
    return exists and resume is not None


def _check_same_config(cfg: SweepConfig, exp_dir: Location) -> None:
    """A resumed sweep runs the config the experiment started with (its config.yaml)."""
    from mft_search.experiment.config_record import config_difference

    differs = config_difference(exp_dir, cfg.model_dump(mode="json"))
    if differs:
        raise ConfigError(f"--resume: this config differs from the one {exp_dir} ran with ({differs}); resume "
                          "with the same config and --set options, or start a new experiment under another name")


@contextlib.contextmanager
def ray_session() -> Iterator[dict]:
    """Join the cluster we run in, or start a local Ray for this sweep and stop it afterwards."""
    import ray

    joined = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        if joined:
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            # The dashboard serves the state API that Ray Train's placement-group cleaner needs:
            # without it, groups of stopped trials leak and the sweep waits forever.
            ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        yield {"resources": ray.cluster_resources(), "nodes": [n for n in ray.nodes() if n.get("Alive")]}
    finally:
        if not joined:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(cli.run(main))
