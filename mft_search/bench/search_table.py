"""The search benchmark's table: every point of a discretised search space trained once, in this
process without Ray, validated after every epoch, per item, and cached.

HPO benchmarks replay searches on such a table (tabular benchmarks: NAS-Bench, HPOBench, LCBench)
rather than training each search's trials anew: every search then sees the same landscape, a
seed costs a lookup, and many seeds are affordable. A trial's reports are deterministic here
(training is seeded), so a lookup is what the trial would have reported.

For each configuration and epoch the table keeps each validation item's score (so a replay can
score any subset of the items, as rung-wise validation does), the epoch's training seconds and
the validation seconds per item. It is cached under ~/.cache/mft_search/bench/, keyed by a
digest of the discretised space, the training settings, the data files and the backbone's
weights: a changed demo (space, data, fine-tuned backbone) records a new table.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mft_search.config.space import FloatRange, SearchSpace, grid_size
from mft_search.core import files

CACHE_DIR = Path.home() / ".cache" / "mft_search" / "bench"
LEVELS = 4  # points of a continuous range in the grid (its ends included)
FORMAT = 1  # bump when the table's layout or its recording changes


@dataclass(frozen=True)
class Epoch:
    """One report of one configuration: per-item scores (the validation items' order), seconds."""

    scores: tuple[float, ...]
    train_s: float
    eval_s_per_item: float


@dataclass(frozen=True)
class Table:
    """Every configuration's reports, and what the table was recorded on."""

    items: tuple[str, ...]
    configs: tuple[dict[str, Any], ...]
    epochs: tuple[tuple[Epoch, ...], ...]  # per configuration, per epoch
    no_op: tuple[bool, ...]  # per configuration
    about: dict[str, Any]

    def index(self, params: dict[str, Any]) -> int:
        """The configuration `params` names; KeyError for a point outside the grid."""
        return self._keys()[config_key(params)]

    def _keys(self) -> dict[str, int]:
        keys = self.__dict__.get("_key_cache")
        if keys is None:
            keys = {config_key(c): i for i, c in enumerate(self.configs)}
            object.__setattr__(self, "_key_cache", keys)
        return keys


def config_key(params: dict[str, Any]) -> str:
    """A point's key: floats rounded, since a sampler's stepped value may differ in the last bits."""
    return json.dumps({k: round(v, 9) if isinstance(v, float) else v for k, v in params.items()}, sort_keys=True)


def discretise(space: SearchSpace, levels: int = LEVELS) -> SearchSpace:
    """The space with each continuous range made a grid of `levels` points: a stepped range (so
    TPE and GP still see an ordered dimension) or, for a log range, the choices."""
    updates = {}
    for name, dim in space:
        if isinstance(dim, FloatRange) and dim.step is None:
            if dim.log:
                ratio = (dim.high / dim.low) ** (1 / (levels - 1))
                updates[name] = [float(f"{dim.low * ratio ** k:.6g}") for k in range(levels)]
            else:
                updates[name] = FloatRange(low=dim.low, high=dim.high, step=(dim.high - dim.low) / (levels - 1))
    return space.model_copy(update=updates)


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every point of a finite space, as the sweep's grid search walks it (its define-by-run tree)."""
    from mft_search.tune.sampling import define_by_run, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler("grid", 0, space))
    sample, points = define_by_run(space), []
    for _ in range(grid_size(space)):
        trial = study.ask()
        points.append(sample(trial))
        study.tell(trial, 0.0)
    return sorted(points, key=config_key)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for part in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if part.is_file():
            digest.update(part.name.encode())
            digest.update(part.read_bytes())
    return digest.hexdigest()


def table_path(key: dict[str, Any]) -> Path:
    return CACHE_DIR / f"search-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"


class ItemsSession:
    """A LocalSession that keeps each report's per-item scores (train.loop's record_items hook),
    handing each to `on_record` too when given (bench peak prints its points as they come)."""

    def __init__(self, directory: Path, on_record: Callable[[int, Any], None] | None = None) -> None:
        from mft_search.train.session import LocalSession

        self.local = LocalSession(directory)
        self.rank, self.world_size, self.device = 0, 1, self.local.device
        self.items: dict[int, Any] = {}
        self.on_record = on_record

    def report(self, metrics, checkpoint_dir) -> None:
        self.local.report(metrics, checkpoint_dir)

    def latest_checkpoint(self):
        return None  # a fresh trial every time: never resume another configuration's

    def new_checkpoint_dir(self) -> Path:
        return self.local.new_checkpoint_dir()

    def record_items(self, report: int, items) -> None:
        self.items[report] = items
        if self.on_record is not None:
            self.on_record(report, items)


def train_point(study, params: dict[str, Any], name: str, workdir: Path) -> tuple[list[str], list[Epoch], bool]:
    """One configuration's probe trial, every epoch: (item ids, its reports, whether it was a
    no-op: a mask that keeps every weight ends the trial at its first report, never a candidate)."""
    from mft_search.train.job import run_job

    session = ItemsSession(workdir / name)
    run_job(study.mft_job(params, name, "probe"), session)
    ids, epochs = epochs_of(session.local.reports, session.items)
    return ids, epochs, bool(session.local.reports[-1].get("no_op"))


def epochs_of(reports: list[dict[str, Any]], items: dict[int, Any]) -> tuple[list[str], list[Epoch]]:
    """A trial's reports as table epochs: (item ids, per-report scores and seconds). Scores are
    higher-better: a benchmark's as they are, a loss (ItemScores kind 'loss') negated."""
    epochs, ids, before = [], [], {"time_train_s": 0.0, "time_eval_s": 0.0}
    for report in reports:
        recorded = items[int(report["report"])]
        sign = -1.0 if recorded.kind == "loss" else 1.0
        ids = [i for i, _ in recorded.items]
        epochs.append(Epoch(tuple(sign * float(s) for _, s in recorded.items), report["time_train_s"] - before["time_train_s"],
                            (report["time_eval_s"] - before["time_eval_s"]) / len(recorded.items)))
        before = report
    return ids, epochs


def record(study, points: list[dict[str, Any]], path: Path, about: dict[str, Any], log=print) -> Table:
    """Train every point not yet in the (partial) file at `path`, saving after each: a killed
    recording goes on where it stopped."""
    done = _read(path) if path.exists() else {"items": None, "configs": [], "about": about}
    recorded = {config_key(c["params"]) for c in done["configs"]}
    with tempfile.TemporaryDirectory() as tmp:
        for n, params in enumerate(points):
            if config_key(params) in recorded:
                continue
            started = time.perf_counter()
            ids, epochs, no_op = train_point(study, params, f"t{n:03d}", Path(tmp))
            if done["items"] is not None and ids != done["items"]:
                raise RuntimeError("the validation items changed during the recording")
            done["items"] = ids
            done["configs"].append({"params": params, "no_op": no_op, "epochs": [_epoch_json(e) for e in epochs]})
            _write(path, done)
            best = max(sum(e.scores) / len(e.scores) for e in epochs)
            log(f"# recorded {len(done['configs'])}/{len(points)}: {config_key(params)} best "
                f"{show(best, about.get('metric', 'accuracy'))} ({time.perf_counter() - started:.0f} s)")
    done["complete"] = True
    _write(path, done)
    return load(path)


def load(path: Path) -> Table:
    raw = _read(path)
    configs = tuple(c["params"] for c in raw["configs"])
    epochs = tuple(tuple(Epoch(tuple(float(ch) for ch in e["scores"]) if isinstance(e["scores"], str)
                               else tuple(e["scores"]), e["train_s"], e["eval_s_per_item"]) for e in c["epochs"])
                   for c in raw["configs"])
    return Table(tuple(raw["items"]), configs, epochs, tuple(c["no_op"] for c in raw["configs"]), raw["about"])


def is_complete(path: Path) -> bool:
    return path.exists() and bool(_read(path).get("complete"))


def _epoch_json(epoch: Epoch) -> dict[str, Any]:
    binary = all(s in (0.0, 1.0) for s in epoch.scores)  # accuracy: a string of 0s and 1s is 8x smaller
    scores = "".join(str(int(s)) for s in epoch.scores) if binary else list(epoch.scores)
    return {"scores": scores, "train_s": round(epoch.train_s, 4), "eval_s_per_item": epoch.eval_s_per_item}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write(path: Path, data: dict[str, Any]) -> None:
    files.write_text(path, json.dumps(data))  # atomic: a reader never sees half a table


def show(value: float, metric: str) -> str:
    """A table score as people read it: accuracy in percent, loss (stored negated) in nats."""
    return f"{100 * value:.1f}%" if metric == "accuracy" else f"{-value:.4f} nats"


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan
