"""python -m mft_search.bench SUITE [--quick]: run one benchmark suite and print its table."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys

# suite name -> module of this package (imported only when chosen: suites pull in Ray, evaluators)
SUITES = {
    "core": "core",          # MFT step vs FFT step, peak memory, mask-file bytes
    "cost": "cost",          # the cost model's predicted FLOPs against measured CPU steps
    "trial": "trial",        # a trial's fixed cost against its training time
    "jobs": "jobs",          # a one-worker job outside Tune: Ray Train run vs Ray task
    "search": "search",      # TPE + ASHA vs grid vs random: compute to reach the grid's best
    "maskfile": "maskfile",  # mask-file bytes against numel/8 and the entropy bound
    "eval": "evaluation",    # batched vs one-at-a-time generation, parallel vs serial code runs
    "storage": "storage",    # the Optuna journal on a bucket: its upload per trial
    "peak": "peak",          # the demo's fft stage per seed: does it pass an overfitting peak?
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mft_search.bench", description="mft_search benchmarks")
    parser.add_argument("suite", choices=list(SUITES))
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes: a smoke run")
    args, rest = parser.parse_known_args(argv)
    print(f"$ python -m mft_search.bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    suite = importlib.import_module(f"{__package__}.{SUITES[args.suite]}")
    if rest and "argv" not in inspect.signature(suite.run).parameters:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (suite {args.suite} takes only --quick)")
    # a suite with options of its own (core: --models, --accumulation, --rounds) parses them itself
    suite.run(quick=args.quick, **({"argv": rest} if rest else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
