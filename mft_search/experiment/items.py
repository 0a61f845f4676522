"""items.parquet: every evaluation's per-item scores, so that anyone can recompute every figure.

One row per (study, split, variant, seed, item): `score` in [0, 1] for benchmarks (correct or
not, pass@k, IFEval's per-prompt result) or a row's mean NLL for loss domains (`kind` says
which), and the `settings` label of the evaluation that produced it. Rows are upserted by that
key, so a resumed sweep that scores a variant again replaces its rows instead of doubling them;
each write replaces the whole file atomically (core.files).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mft_search.core.files import Location, location
from mft_search.core.statistics import Gain, paired_gain, unit_for

BOOTSTRAP_SEED = 0  # the sweep's selection and the report's tables draw the same resamples

ITEMS = "items.parquet"
KEY = ["study", "split", "variant", "seed", "item"]
COLUMNS = [*KEY, "score", "kind", "settings"]
KINDS = ("fraction", "loss")  # core.statistics.unit_for reads these


def items_path(exp_dir) -> Location:
    return location(exp_dir) / ITEMS


def read_items(path) -> pd.DataFrame:
    """The table, or an empty one with its columns when nothing was scored yet."""
    path = location(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return path.read_parquet()


def add_items(path, study: str, split: str, variant: str, seed: int, kind: str, settings: str,
              items: Iterable[tuple[str, float]]) -> None:
    """Record one variant's per-item scores on one split, replacing any earlier ones."""
    if kind not in KINDS:
        raise ValueError(f"kind '{kind}' is not one of {KINDS}")
    new = pd.DataFrame([{"study": study, "split": split, "variant": variant, "seed": int(seed), "item": str(item),
                         "score": float(score), "kind": kind, "settings": settings} for item, score in items],
                       columns=COLUMNS)
    old = read_items(path)
    same = ((old["study"] == study) & (old["split"] == split) & (old["variant"] == variant)
            & (old["seed"] == int(seed)))
    frame = pd.concat([old[~same], new], ignore_index=True) if len(old) else new
    with location(path).atomic_path() as temporary:
        frame.to_parquet(temporary, index=False)


def variant_scores(frame: pd.DataFrame, study: str, split: str, variant: str, seed: int | None = None) -> pd.Series:
    """{item: score} of one variant on one split (one seed: the given one, else the lowest)."""
    rows = frame[(frame["study"] == study) & (frame["split"] == split) & (frame["variant"] == variant)]
    if rows.empty:
        return pd.Series(dtype=float)
    rows = rows[rows["seed"] == (rows["seed"].min() if seed is None else seed)]
    return rows.set_index("item")["score"]


def gains_over(frame: pd.DataFrame, study: str, split: str, of: str) -> dict[str, Gain]:
    """{variant: paired gain of `of` over it} on `split`, for every variant scored on the same
    items as `of` (a variant scored on other items is left out, not compared)."""
    mine = variant_scores(frame, study, split, of)
    if mine.empty:
        return {}
    rows = frame[(frame["study"] == study) & (frame["split"] == split)]
    unit = unit_for(rows.loc[rows["variant"] == of, "kind"].iloc[0])
    gains = {}
    for other in rows["variant"].unique():
        theirs = variant_scores(frame, study, split, other)
        if other != of and set(theirs.index) == set(mine.index):
            gains[other] = paired_gain(mine, theirs, seed=BOOTSTRAP_SEED, higher_is_better=unit.higher_is_better,
                                       names=(of, other))
    return gains


def split_unit(frame: pd.DataFrame, study: str, split: str):
    """The unit of a study's items on `split` (points for benchmarks, nats for losses), or None."""
    kinds = frame.loc[(frame["study"] == study) & (frame["split"] == split), "kind"].unique()
    return unit_for(kinds[0]) if len(kinds) else None
