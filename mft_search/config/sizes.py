"""How many rows each domain's runs read, for the cost plan: local files are counted, hub data is not.

Counting hub data would download it on the driver; the plan says such sizes are unknown unless
`--train-examples N` (the rows of train.source's split) or a limit gives them.
"""

from __future__ import annotations

from mft_search.config.cost import DataSizes, benchmark_problems, split_sizes


def data_sizes(cfg, train_examples: int | None = None) -> dict[str, DataSizes]:
    """{domain name: DataSizes}; `train_examples` stands in for a hub source's size."""
    return {domain.name: _domain_sizes(domain, train_examples) for domain in cfg.domains}


def _domain_sizes(domain, train_examples: int | None) -> DataSizes:
    from mft_search.core.data import load_examples
    from mft_search.core.data.load import local_files

    spec = domain.train
    local = local_files(spec.source) is not None
    rows = len(load_examples(spec)) if local else (train_examples or spec.limit)
    validation_rows = None
    if spec.validation_split is not None and local:
        validation_rows = len(load_examples(spec, spec.validation_split))
    train, validation = split_sizes(spec, rows, validation_rows)
    return DataSizes(train, validation, _problems(domain.validation), _problems(domain.test),
                     tuple(_problems(g.benchmark) for g in domain.guard))


def _problems(spec) -> int | None:
    if spec is None:
        return 0
    from mft_search.core.evaluation.records import is_local

    local = spec.source is not None and is_local(spec.source)
    rows = len(spec.make_evaluator().load(spec.source, limit=spec.limit)) if local else None
    return benchmark_problems(spec, rows)
