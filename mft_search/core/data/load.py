"""Reading raw examples from the hub or local files, and the seeded validation/fraction split."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Literal

import datasets
import numpy as np

from mft_search.core.data.spec import DataSpec
from mft_search.errors import DataError

# datasets' packaged builder for each file extension.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}
_GLOB_CHARS = set("*?[")
Part = Literal["train", "validation"]


def local_files(source: str) -> list[Path] | None:
    """The files a local source reads (sorted), or None when `source` is a hub id.

    A source is local when it exists, is a glob, starts like a path (/, ., ~) or ends with a
    known extension; then a miss is the user's error rather than a hub lookup.
    """
    path = Path(source).expanduser()
    if _GLOB_CHARS & set(source):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"data.source: glob '{source}' matches no file; fix the pattern")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if source.startswith(("/", ".", "~")) or path.suffix in BUILDERS:
        raise DataError(f"data.source: '{source}' does not exist; give an existing file, directory or hub id")
    return None


def load_examples(spec: DataSpec, split: str | None = None) -> datasets.Dataset:
    """Rows of `split` (default `spec.split`) of the source, checked to hold the mapped columns."""
    split = split or spec.split
    files = local_files(spec.source)
    if files is None:
        ds = _load_hub(spec, split)
    elif Path(spec.source).expanduser().is_dir():
        ds = _load_directory(Path(spec.source).expanduser(), split)
    else:
        ds = _load_files(files)
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    check_fields(ds, spec)
    return ds


def _load_hub(spec: DataSpec, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec.source, spec.subset, split=split, revision=spec.revision)
    except Exception as exc:  # network, auth, unknown id/subset/split: all fixable by the user
        raise DataError(
            f"data.source: cannot load '{spec.source}' (subset {spec.subset!r}, split '{split}', "
            f"revision {spec.revision!r}) from the hub: {exc}; check them or give a local path"
        ) from exc


def _load_directory(path: Path, split: str) -> datasets.Dataset:
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(path))  # a save_to_disk directory
    else:
        loaded = datasets.load_dataset(str(path))  # infers splits from file names
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise DataError(f"data.split: '{split}' not in {sorted(loaded)} of '{path}'; set split to one of them")
    return loaded[split]


def _load_files(files: list[Path]) -> datasets.Dataset:
    kinds = {BUILDERS.get(f.suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(
            f"data.source: files {[f.name for f in files[:5]]} are not all one of "
            f"{sorted(BUILDERS)}; point source at files of one format"
        )
    return datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")


def check_fields(ds: datasets.Dataset, spec: DataSpec) -> None:
    """Raise DataError naming the first mapped field whose column the dataset lacks."""
    for name in ("prompt_field", "response_field", "messages_field"):
        column = getattr(spec, name)
        if column is not None and column not in ds.column_names:
            raise DataError(
                f"data.{name}: column '{column}' not in {ds.column_names}; set {name} to one of them"
            )


def split_train_validation(
    ds: datasets.Dataset, spec: DataSpec
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, validation): seeded carve-out of `validation_fraction`, then `fraction` of the rest.

    Both keep the file order (shuffling is the batcher's job, per epoch) and depend only on the
    rows and the seed, so every trial and every process sees the same split.
    """
    validation = None
    if spec.validation_fraction > 0:
        order = np.random.default_rng([spec.seed, 0]).permutation(len(ds))
        n_val = max(1, round(spec.validation_fraction * len(ds)))
        validation = ds.select(np.sort(order[:n_val]))
        ds = ds.select(np.sort(order[n_val:]))
    if spec.fraction < 1.0:
        order = np.random.default_rng([spec.seed, 1]).permutation(len(ds))
        ds = ds.select(np.sort(order[: max(1, round(spec.fraction * len(ds)))]))
    return ds, validation


def select_examples(spec: DataSpec, part: Part) -> datasets.Dataset:
    """The raw rows of one part: training, or validation (its own split or the carve-out)."""
    if part == "validation" and spec.validation_split is not None:
        return load_examples(spec, spec.validation_split)
    train, validation = split_train_validation(load_examples(spec), spec)
    if part == "train":
        return train
    if validation is None:
        raise DataError("data.validation_fraction: 0 and no validation_split; set one to get a validation set")
    return validation
