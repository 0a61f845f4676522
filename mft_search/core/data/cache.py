"""Tokenise once: the tokenised set is cached as Parquet under a content fingerprint.

Every trial of a sweep asks for the same data; the first tokenises and writes, the others read.
The key covers everything that changes the tokens: the tokenizer (model, special tokens, chat
template), the data (file contents, or hub id + revision) and every DataSpec field.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from mft_search.core import files
from mft_search.core.data.encode import tokenize_examples
from mft_search.core.data.load import Part, local_files, select_examples
from mft_search.core.data.spec import DataSpec

# Bump when the tokenised output of the same inputs changes, to retire old cache files.
CACHE_VERSION = 1
BUILD_LOG = "builds.jsonl"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides the tokens: model, normaliser, pre-tokeniser, specials, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = json.loads(backend.to_str())
        # Calls with padding=/truncation= leave their settings on the backend: not identity.
        body.pop("padding", None)
        body.pop("truncation", None)
    else:
        body = sorted(tokenizer.get_vocab().items())
    return _sha256(
        {
            "class": type(tokenizer).__name__,
            "tokenizer": body,
            "special_tokens": tokenizer.special_tokens_map,
            "special_ids": tokenizer.all_special_ids,
            "chat_template": tokenizer.chat_template,
        }
    )


def data_fingerprint(spec: DataSpec) -> list[tuple[str, str]] | None:
    """(file name, sha256 of contents) of each local file; None for a hub id (keyed by spec)."""
    files = local_files(spec.source)
    if files is None:
        return None
    return [(f.name, _file_sha256(f)) for f in files]


def fingerprint(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, part: Part = "train") -> str:
    return _sha256(
        {
            "version": CACHE_VERSION,
            "part": part,
            "spec": spec.model_dump(mode="json"),
            "data": data_fingerprint(spec),
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
    )


def tokenized_dataset(
    spec: DataSpec, tokenizer: PreTrainedTokenizerBase, cache_dir: str | os.PathLike[str], part: Part = "train"
) -> datasets.Dataset:
    """The tokenised `part` of `spec`: read from cache_dir, or tokenised and written there once."""
    path = cache_path(spec, tokenizer, cache_dir, part)
    if path.exists():
        return datasets.Dataset(pq.read_table(path))
    return _build(spec, tokenizer, part, path)


def ensure_tokenized(
    spec: DataSpec, tokenizer: PreTrainedTokenizerBase, cache_dir: str | os.PathLike[str], part: Part = "train"
) -> Path:
    """Tokenise `part` into cache_dir unless it is there already; unlike `tokenized_dataset`,
    never reads a cached file back (the sweep's driver prepares data it does not use)."""
    path = cache_path(spec, tokenizer, cache_dir, part)
    if not path.exists():
        _build(spec, tokenizer, part, path)
    return path


def cache_path(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, cache_dir: str | os.PathLike[str],
               part: Part) -> Path:
    return Path(cache_dir) / f"{part}-{fingerprint(spec, tokenizer, part)}.parquet"


def _build(spec: DataSpec, tokenizer: PreTrainedTokenizerBase, part: Part, path: Path) -> datasets.Dataset:
    start = time.perf_counter()
    ds = tokenize_examples(select_examples(spec, part), spec, tokenizer)
    _write_atomic(ds, path)
    _log_build(path, time.perf_counter() - start)
    return ds


def parts(spec: DataSpec) -> tuple[Part, ...]:
    """The tokenised parts a training run of `spec` reads."""
    has_validation = spec.validation_fraction > 0 or spec.validation_split is not None
    return ("train", "validation") if has_validation else ("train",)


def _log_build(path: Path, seconds: float) -> None:
    """One line per tokenisation in builds.jsonl beside the cache: what was built, by which
    program, how long it took. A sweep builds each file once, in its driver; this shows it."""
    entry = {"file": path.name, "seconds": round(seconds, 3), "program": Path(sys.argv[0]).name, "pid": os.getpid(),
             "time": time.time()}
    with open(path.parent / BUILD_LOG, "a") as log:  # one short append: whole lines even when racing
        log.write(json.dumps(entry) + "\n")


def _write_atomic(ds: datasets.Dataset, path: Path) -> None:
    # Readers see no file or a whole one: concurrent trials may race, never read half a file.
    with files.atomic_path(path) as temporary:
        pq.write_table(ds.data.table, temporary)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
