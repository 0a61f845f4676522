"""Whether a gain is real: paired intervals over items, exact McNemar tests, mean ± std over seeds.

Two variants scored on the same items (a mask and the unmasked model, say) are compared item by
item: the gain is the mean of the per-item differences, with a paired bootstrap interval
(scipy.stats.bootstrap, seeded) and, when every score is 0 or 1, McNemar's exact p-value.

    unit = unit_for("fraction")                  # accuracy, pass@1, IFEval: points
    gain = paired_gain(mask_items, unmasked_items, seed=0, higher_is_better=unit.higher_is_better)
    selected, reason = selection_decision(gain, min_gain=0.0, unit=unit)
    print(gain.format(unit))                     # "+1.2 [-0.4, +2.8] pts, p=0.21, n=500"

The interval is BCa (bias-corrected and accelerated), scipy's default: it is second-order
accurate where the percentile interval is first-order, which matters here because the per-item
differences of 0/1 scores are discrete and, when few items are discordant, skewed. scipy counts
ties with the observed mean as half when it corrects the bias, so the discreteness does not push
the interval down. BCa is undefined (0/0, NaN) only when every difference is equal; that case, and
a single item, are answered before scipy is called, and `Gain.method` names them.

Pure numpy/scipy: no Ray, no Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from mft_search.errors import DataError, did_you_mean

# 9999 resamples (scipy's default) keep the Monte Carlo error of a 95% bound small beside the
# interval's width, and cost ~0.08 s on 500 items (BCa, this 2-core machine; ~1.2 s on 5000).
N_RESAMPLES = 9999
_BATCH = 1000  # resamples held at once: 1000 x 5000 items of float64 is 40 MB, not 400


@dataclass(frozen=True)
class Unit:
    """How a score difference reads: `scale` times the raw difference, in `name`."""

    name: str
    scale: float
    decimals: int
    higher_is_better: bool

    def value(self, raw: float) -> str:
        return f"{raw * self.scale:+.{self.decimals}f}"


# Per-item scores in [0, 1] (correct or not, pass@1, IFEval's per-prompt result): points, x100.
POINTS = Unit("pts", 100.0, 1, higher_is_better=True)
# Per-example losses (mean NLL per token): nats, and lower is better, so a gain is a loss reduction.
NATS = Unit("nats", 1.0, 3, higher_is_better=False)
UNITS = {"fraction": POINTS, "loss": NATS}


def unit_for(kind: str) -> Unit:
    """The unit of a metric kind: 'fraction' (accuracies, pass@1, IFEval) or 'loss'."""
    if kind not in UNITS:
        raise ValueError(f"metric kind '{kind}'{did_you_mean(kind, UNITS)} is not one of {', '.join(UNITS)}")
    return UNITS[kind]


@dataclass(frozen=True)
class Gain:
    """How much better variant a is than b on the same items, in raw score units.

    `mean` is mean(a - b), or mean(b - a) for a lower-is-better score (a loss), so that a positive
    gain is always an improvement. `low`/`high` bound it at `confidence`; both are NaN when one
    item gives no interval. `p_value` is McNemar's exact test for 0/1 scores, None otherwise.
    """

    mean: float
    low: float
    high: float
    p_value: float | None
    n_items: int
    confidence: float
    method: str

    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def interval(self, unit: Unit) -> str:
        """'+1.2 [-0.4, +2.8] pts' (no interval: '+1.2 [no interval] pts')."""
        bounds = f"{unit.value(self.low)}, {unit.value(self.high)}" if self.has_interval() else "no interval"
        return f"{unit.value(self.mean)} [{bounds}] {unit.name}"

    def format(self, unit: Unit) -> str:
        """'+1.2 [-0.4, +2.8] pts, p=0.21, n=500' (p only for 0/1 scores)."""
        p = "" if self.p_value is None else f", p{_p_text(self.p_value)}"
        return f"{self.interval(unit)}{p}, n={self.n_items}"


def _p_text(p: float) -> str:
    """'=0.21', or '<0.001' for any smaller p (the digits of 1e-30 say nothing more)."""
    return "<0.001" if p < 0.001 else f"={p:.2g}"


def paired_gain(a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, seed: int,
                confidence: float = 0.95, n_resamples: int = N_RESAMPLES, higher_is_better: bool = True,
                names: tuple[str, str] = ("a", "b")) -> Gain:
    """The paired gain of a over b: per-item scores keyed by item id (a dict, or a pandas Series
    indexed by item), both on the same items. Raises DataError, naming the variants by `names`,
    when the item sets differ."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1, e.g. 0.95")
    x, y = _aligned(a, b, names)
    diff = x - y if higher_is_better else y - x
    mean = float(diff.mean())
    p_value = _mcnemar(x, y)
    if len(diff) == 1:  # one item: any resample is that item, a zero-width interval would claim certainty
        return Gain(mean, math.nan, math.nan, p_value, 1, confidence, "none (one item)")
    if np.all(diff == diff[0]):  # every resample has the same mean: the bootstrap interval is that point
        return Gain(mean, mean, mean, p_value, len(diff), confidence, "degenerate (every difference equal)")
    low, high, method = _bootstrap(diff, seed, confidence, n_resamples)
    return Gain(mean, low, high, p_value, len(diff), confidence, method)


def _aligned(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The two variants' scores as arrays in one item order; refuses different item sets."""
    left, right = _scores(a, names[0]), _scores(b, names[1])
    if left.keys() != right.keys():
        only_a, only_b = left.keys() - right.keys(), right.keys() - left.keys()
        raise DataError(f"{names[0]} and {names[1]} were scored on different items: {_some(only_a)} only in "
                        f"{names[0]}, {_some(only_b)} only in {names[1]}; score both on the same split and "
                        "limit to compare them")
    if not left:
        raise DataError("no items to compare: score both variants on at least one item")
    items = list(left)
    return (np.fromiter((left[i] for i in items), float, len(items)),
            np.fromiter((right[i] for i in items), float, len(items)))


def _scores(scores: Any, name: str) -> dict[Hashable, float]:
    mapping = dict(scores)  # a Mapping or a pandas Series (its index gives the keys)
    if len(mapping) != len(scores):
        raise DataError(f"variant {name} has {len(scores) - len(mapping)} repeated item ids: give one score "
                        "per item (one seed and one split at a time)")
    values = {item: float(score) for item, score in mapping.items()}
    bad = [item for item, value in values.items() if not math.isfinite(value)]
    if bad:
        raise DataError(f"variant {name} has non-finite scores for {_some(bad)}: every item needs a score")
    return values


def _some(items: Iterable[Hashable]) -> str:
    items = sorted(items, key=str)
    example = ", ".join(repr(i) for i in items[:3])
    return f"{len(items)} ({example}{', ...' if len(items) > 3 else ''})" if items else "0"


def _bootstrap(diff: np.ndarray, seed: int, confidence: float, n_resamples: int) -> tuple[float, float, str]:
    """The bootstrap interval of the mean per-item difference. Resampling the differences is the
    paired bootstrap (an item's two scores are drawn together): scipy's paired=True on the two score
    arrays draws the same resamples from the same seed and gives the same interval
    (tests/test_statistics.py checks), at twice the cost, since it indexes both arrays."""
    result = stats.bootstrap((diff,), np.mean, vectorized=True, n_resamples=n_resamples, batch=_BATCH,
                             confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high), "BCa bootstrap"


def _mcnemar(x: np.ndarray, y: np.ndarray) -> float | None:
    """McNemar's exact two-sided p-value (a binomial test on the discordant pairs); None unless
    every score is 0 or 1."""
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        return None
    a_only = int(np.sum((x == 1) & (y == 0)))
    discordant = a_only + int(np.sum((x == 0) & (y == 1)))
    if discordant == 0:  # the variants agree on every item: no evidence either way
        return 1.0
    return float(stats.binomtest(a_only, discordant, 0.5).pvalue)


def seed_summary(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of one figure over seeds; std is None for one seed."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("seed_summary needs at least one seed's value")
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def selection_decision(gain: Gain, min_gain: float, *, unit: Unit) -> tuple[bool, str]:
    """Whether a mask with this validation gain over the unmasked model is selected: only when the
    paired lower bound exceeds `min_gain` (in `unit`: points or nats). The reason says why, plainly."""
    text = gain.interval(unit)
    if not gain.has_interval():
        return False, f"gain {text} rests on {gain.n_items} item, which gives no interval: evaluate on more items"
    low, high = gain.low * unit.scale, gain.high * unit.scale
    level = f"{gain.confidence:.0%}"
    if low > min_gain:
        return True, f"gain {text}: its {level} lower bound {low:+.{unit.decimals}f} is above min_gain {min_gain:g}"
    if high < 0:
        return False, f"gain {text} is negative: its whole {level} interval is below 0, worse than the reference"
    if low <= 0 <= high and min_gain >= 0:
        return False, f"gain {text} is not distinguishable from noise (its {level} interval includes 0)"
    return False, (f"gain {text}: its {level} lower bound {low:+.{unit.decimals}f} is not above "
                   f"min_gain {min_gain:g}")


def guard_decision(gain: Gain, max_drop: float, *, unit: Unit) -> tuple[bool, str]:
    """Whether a mask keeps a guard (domains[].guard): the paired lower bound of its change over the
    unmasked model on the guard benchmark is no lower than -`max_drop` (in `unit`). One item gives
    no interval, so no assurance: the guard counts as broken. The reason says why, plainly."""
    text = gain.interval(unit)
    if not gain.has_interval():
        return False, (f"change {text} rests on {gain.n_items} item, which gives no interval: score the guard "
                       "on more items")
    # Rounded: a drop of exactly max_drop keeps the guard, whatever the float arithmetic says.
    low = round(gain.low * unit.scale, 9)
    bound = f"its {gain.confidence:.0%} lower bound {low:+.{unit.decimals}f}"
    if low >= -max_drop:
        return True, f"change {text}: {bound} is within the tolerated drop of {max_drop:g} {unit.name}"
    return False, f"change {text}: {bound} is below -{max_drop:g} {unit.name}, the tolerated drop"
