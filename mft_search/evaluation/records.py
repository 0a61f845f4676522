"""Benchmark records from a local file (jsonl, json, parquet) or a Hugging Face hub id.

Local files are read directly (no `datasets` cache, no network); a hub id goes through
`datasets.load_dataset`. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mft_search.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_records(
    source: str,
    fields: tuple[str, ...],
    split: str = "test",
    hub_config: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The first `limit` rows of `source`, each checked to carry every name in `fields`."""
    path = Path(source).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        rows = _read_local(path)
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
