"""Performance benchmarks: ratios measured side by side in one run (these machines are noisy).

    python -m mft_search.bench SUITE [--quick]

Benchmarks report numbers; tests check behaviour. Each suite is a module of this package with
`run(quick: bool) -> None`, which prints its table.
"""
