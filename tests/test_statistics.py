"""Paired gains: the interval and p-value scipy computes by another route, and the selection rule."""

import math
import time

import numpy as np
import pytest
from scipy import stats

from mft_search.core.statistics import NATS, POINTS, Gain, paired_gain, seed_summary, selection_decision, unit_for
from mft_search.errors import DataError


def study(n, a_only, b_only, both=None, seed=0):
    """Per-item 0/1 scores of two variants on `n` items: a alone right on `a_only` items, b alone
    on `b_only`, both right on `both` (default: 60% of the rest), in a shuffled item order."""
    both = (n - a_only - b_only) * 6 // 10 if both is None else both
    a = np.array([1] * a_only + [0] * b_only + [1] * both + [0] * (n - a_only - b_only - both), float)
    b = np.array([0] * a_only + [1] * b_only + [1] * both + [0] * (n - a_only - b_only - both), float)
    order = np.random.default_rng(seed).permutation(n)
    ids = [f"item-{i}" for i in range(n)]
    return dict(zip(ids, a[order])), dict(zip(ids, b[order]))


def test_a_known_difference_gets_scipys_paired_interval_and_mcnemars_exact_p():
    a, b = study(500, a_only=40, b_only=15)  # a is right on 25 more items: +5.0 points
    gain = paired_gain(a, b, seed=7)
    assert gain.mean == pytest.approx(25 / 500) and gain.n_items == 500 and gain.method == "BCa bootstrap"
    # The interval by another route: scipy's paired=True over the two score arrays, same seed.
    ids = list(a)
    expected = stats.bootstrap(([a[i] for i in ids], [b[i] for i in ids]), lambda x, y, axis: np.mean(x - y, axis=axis),
                               paired=True, vectorized=True, confidence_level=0.95, method="BCa",
                               rng=np.random.default_rng(7)).confidence_interval
    assert (gain.low, gain.high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert gain.low < 25 / 500 < gain.high and gain.low > 0
    # McNemar's exact p: twice the binomial tail of the smaller discordant count, from scipy.stats.binom.
    assert gain.p_value == pytest.approx(2 * stats.binom.cdf(15, 55, 0.5))
    assert gain.format(POINTS) == f"+5.0 [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}] pts, p=0.001, n=500"


def test_non_binary_scores_get_scipys_interval_and_no_mcnemar():
    ids = [f"q{i}" for i in range(300)]
    rng = np.random.default_rng(3)
    a, b = rng.random(300), rng.random(300) * 0.9  # non-binary scores: no McNemar
    gain = paired_gain(dict(zip(ids, a)), dict(zip(ids, b)), seed=11, n_resamples=2000)
    expected = stats.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                               n_resamples=2000, rng=np.random.default_rng(11)).confidence_interval
    assert (gain.low, gain.high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert gain.p_value is None and ", p=" not in gain.format(POINTS)


def test_the_interval_covers_the_difference_and_shrinks_with_more_items():
    widths = []
    for n in (100, 400, 1600):
        a, b = study(n, a_only=n // 10, b_only=n // 20)  # +5 points at every size
        gain = paired_gain(a, b, seed=0)
        assert gain.low < 0.05 < gain.high
        widths.append(gain.high - gain.low)
    assert widths[0] > 1.6 * widths[1] > 1.6 ** 2 * widths[2]  # ~1/sqrt(n): halves when n quadruples


def test_a_one_item_win_on_500_items_is_refused_and_a_clear_one_accepted():
    a, b = study(500, a_only=16, b_only=15)  # one more item right: +0.2 points
    selected, reason = selection_decision(paired_gain(a, b, seed=0), 0.0, unit=POINTS)
    assert not selected and "+0.2 [" in reason and "not distinguishable from noise" in reason
    a, b = study(500, a_only=60, b_only=10)  # +10 points
    gain = paired_gain(a, b, seed=0)
    selected, reason = selection_decision(gain, 0.0, unit=POINTS)
    assert selected and "above min_gain 0" in reason
    selected, reason = selection_decision(gain, 100 * gain.low + 0.5, unit=POINTS)  # min_gain in points
    assert not selected and "is not above min_gain" in reason
    selected, reason = selection_decision(paired_gain(b, a, seed=0), 0.0, unit=POINTS)
    assert not selected and "negative" in reason


def test_losses_gain_by_going_down_in_nats():
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(200)]
    unmasked = rng.random(200) + 1.0
    masked = unmasked - 0.05 + 0.01 * rng.standard_normal(200)  # 0.05 nats lower per example
    gain = paired_gain(dict(zip(ids, masked)), dict(zip(ids, unmasked)), seed=0,
                       higher_is_better=unit_for("loss").higher_is_better)
    assert gain.mean == pytest.approx(0.05, abs=0.002) and gain.low > 0
    assert selection_decision(gain, 0.0, unit=NATS)[0]
    assert gain.format(NATS).endswith(" nats, n=200") and gain.format(NATS).startswith("+0.05")
    assert unit_for("fraction") is POINTS
    with pytest.raises(ValueError, match="did you mean 'loss'"):
        unit_for("losss")


def test_degenerate_studies_identical_scores_one_item_and_equal_differences():
    a, _ = study(50, a_only=10, b_only=5)
    same = paired_gain(a, a, seed=0)
    assert (same.mean, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not selection_decision(same, 0.0, unit=POINTS)[0]
    one = paired_gain({"x": 1.0}, {"x": 0.0}, seed=0)
    assert math.isnan(one.low) and one.n_items == 1 and "no interval" in one.format(POINTS)
    selected, reason = selection_decision(one, 0.0, unit=POINTS)
    assert not selected and "evaluate on more items" in reason
    shifted = paired_gain({i: 0.5 for i in "abcd"}, {i: 0.25 for i in "abcd"}, seed=0)  # BCa would be 0/0
    assert (shifted.low, shifted.high) == (0.25, 0.25) and shifted.method.startswith("degenerate")


def test_items_are_aligned_by_id_and_different_item_sets_refused():
    pandas = pytest.importorskip("pandas")
    a = pandas.Series([1.0, 0.0, 1.0], index=["p", "q", "r"])
    b = {"r": 0.0, "q": 0.0, "p": 1.0}  # another order: only r differs
    gain = paired_gain(a, b, seed=0)
    assert gain.mean == pytest.approx(1 / 3)
    with pytest.raises(DataError, match=r"different items: 1 \('r'\) only in mask, 1 \('s'\) only in unmasked"):
        paired_gain(a, {"p": 1.0, "q": 0.0, "s": 1.0}, seed=0, names=("mask", "unmasked"))
    with pytest.raises(DataError, match="repeated item ids"):
        paired_gain(pandas.Series([1.0, 0.0], index=["p", "p"]), {"p": 1.0}, seed=0)
    with pytest.raises(DataError, match="non-finite scores"):
        paired_gain({"p": float("nan")}, {"p": 1.0}, seed=0)


def test_500_items_take_well_under_a_second():
    a, b = study(500, a_only=30, b_only=20)
    paired_gain(a, b, seed=0)  # warm scipy's imports
    start = time.perf_counter()
    paired_gain(a, b, seed=1)
    assert time.perf_counter() - start < 1.0  # ~0.08 s unloaded; the margin is for a busy machine


def test_seed_summary_is_the_mean_and_sample_std():
    assert seed_summary([0.5]) == (0.5, None)
    mean, std = seed_summary([0.30, 0.32, 0.37])
    assert mean == pytest.approx(0.33) and std == pytest.approx(np.std([0.30, 0.32, 0.37], ddof=1))
    with pytest.raises(ValueError):
        seed_summary([])


def test_gain_is_frozen():
    gain = Gain(0.01, -0.004, 0.028, 0.21, 500, 0.95, "BCa bootstrap")
    assert gain.format(POINTS) == "+1.0 [-0.4, +2.8] pts, p=0.21, n=500"
    assert Gain(0.1, 0.05, 0.15, 1e-30, 500, 0.95, "BCa bootstrap").format(POINTS).endswith("pts, p<0.001, n=500")
    with pytest.raises(AttributeError):
        gain.mean = 0.0
