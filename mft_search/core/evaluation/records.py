"""Benchmark records from a local file (jsonl, json, parquet) or a Hugging Face hub id.

Local files are read directly (no `datasets` cache, no network); a hub id goes through
`datasets.load_dataset`. Nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mft_search.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class HubData:
    """Where a benchmark's problems come from when no local file is given."""

    source: str | None  # hub id; None: the data ships with a package (HumanEval)
    split: str | None  # the split the benchmark reports: its test problems
    config: str | None = None


BENCHMARK_DATA = {
    "gsm8k": HubData("openai/gsm8k", "test", "main"),
    "math": HubData("HuggingFaceH4/MATH-500", "test"),
    "ifeval": HubData("google/IFEval", "train"),  # IFEval's 541 prompts are its only split
    "humaneval": HubData(None, None),
    "humaneval_plus": HubData(None, None),
}


def load_benchmark(evaluator: str, source: str | None, fields: tuple[str, ...], split: str | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
    """A benchmark's rows: `source` (default: its hub id) at `split` (default: its test split)."""
    default = BENCHMARK_DATA[evaluator]
    return load_records(source or default.source, fields, split or default.split, default.config, limit)


def is_local(source: str) -> bool:
    """A local file (by suffix or existence) rather than a hub id: the rule `load_records` reads by."""
    path = Path(source).expanduser()
    return path.suffix in LOCAL_SUFFIXES or path.exists()


def data_identity(evaluator: str, source: str | None, split: str | None) -> tuple[str, ...]:
    """What problems an evaluation reads, with defaults and paths resolved: equal identities read
    the same problems, whichever evaluator scores them and however the path is written."""
    default = BENCHMARK_DATA[evaluator]
    if source is None:
        return ("hub", default.source, split or default.split) if default.source else ("bundled", evaluator)
    if is_local(source):
        return ("file", str(Path(source).expanduser().resolve()))
    return ("hub", source, split or default.split)


def data_label(evaluator: str, source: str | None, split: str | None) -> str:
    """A short name of what problems were read: the split ("test"), or the file's name."""
    if source is not None and is_local(source):
        return Path(source).name
    default = BENCHMARK_DATA[evaluator]
    return split or default.split or "test"


def load_records(
    source: str,
    fields: tuple[str, ...],
    split: str = "test",
    hub_config: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The first `limit` rows of `source`, each checked to carry every name in `fields`."""
    if is_local(source):
        rows = _read_local(Path(source).expanduser())
    else:
        rows = _read_hub(source, split, hub_config)
    rows = rows[:limit] if limit is not None else rows
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{source}: row {i} lacks field(s) {missing}; each row needs {list(fields)}")
    return rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; give an existing .jsonl/.json/.parquet file or a hub id")
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects; use .jsonl for one object per line")
        return data
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unsupported suffix {path.suffix!r}; use one of {LOCAL_SUFFIXES}")


def _read_hub(source: str, split: str, hub_config: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        return list(datasets.load_dataset(source, hub_config, split=split))
    except Exception as exc:  # datasets raises many unrelated types for "not found / offline"
        raise DataError(f"{source}: cannot load split {split!r} from the hub ({exc}); give a local file path") from exc
