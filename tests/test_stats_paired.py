"""Paired comparisons: McNemar against scipy's exact binomial test, paired bootstrap against scipy's
paired bootstrap with the same resample indices."""

from __future__ import annotations

import math

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from clbench.stats import (
    difference_from_cis,
    mcnemar_exact,
    paired_difference,
    unpaired_difference,
)
from clbench.stats.paired import binomial_two_sided, bootstrap_p_value


def _pair(b01: int, b10: int, both: int = 5, neither: int = 3, seed: int = 0):
    a = np.r_[np.ones(b01), np.zeros(b10), np.ones(both), np.zeros(neither)]
    b = np.r_[np.zeros(b01), np.ones(b10), np.ones(both), np.zeros(neither)]
    order = np.random.default_rng(seed).permutation(len(a))
    return a[order].astype(int), b[order].astype(int)


@pytest.mark.parametrize(
    "b01,b10",
    [(0, 0), (0, 1), (1, 0), (3, 3), (0, 12), (2, 9), (9, 2), (20, 31), (50, 50), (137, 180), (1, 400)],
)
def test_mcnemar_equals_exact_binomial_on_discordant_pairs(b01, b10):
    a, b = _pair(b01, b10)
    res = mcnemar_exact(a, b)
    assert (res.b01, res.b10) == (b01, b10)
    n = b01 + b10
    expected = 1.0 if n == 0 else scipy_stats.binomtest(b01, n, 0.5, alternative="two-sided").pvalue
    assert res.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_binomial_two_sided_large_n_is_accurate():
    for k, n in [(4900, 10000), (10, 30000), (0, 5)]:
        assert binomial_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n).pvalue, rel=1e-8, abs=1e-300)


def test_mcnemar_rejects_non_binary_and_mismatched_inputs():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact([1, 0, 1], [1, 0])


def test_paired_difference_equals_scipy_paired_bootstrap():
    rng = np.random.default_rng(4)
    truth = rng.random(300)
    a = (truth < 0.70).astype(float)
    b = (truth < 0.75).astype(float)  # b right wherever a is, plus more: a strongly paired gain
    res = paired_difference({"c": a}, {"c": b}, ("mean", ["c"]), seed=3)
    ref = scipy_stats.bootstrap(
        (a, b), lambda x, y, axis=-1: y.mean(axis) - x.mean(axis), paired=True, method="percentile",
        n_resamples=1000, rng=np.random.default_rng(3),
    )
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert res.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    d = ref.bootstrap_distribution
    expected_p = min(1.0, 2 * min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (len(d) + 1))
    assert res.p_value == pytest.approx(expected_p)
    assert res.low > 0 and res.p_value < 0.01 and res.method == "paired-bootstrap"
    # the paired interval is much narrower than resampling each encoder independently
    unpaired = unpaired_difference({"c": a}, {"c": b}, ("mean", ["c"]), seed=3)
    assert (unpaired.high - unpaired.low) > 2 * (res.high - res.low)


def test_paired_spearman_difference_shares_the_gold_scores():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=200)
    pa, pb = gold + rng.normal(size=200), gold + 0.5 * rng.normal(size=200)
    res = paired_difference({"gold": gold, "p": pa}, {"gold": gold, "p": pb}, ("spearman", ["gold", "p"]), seed=1)
    ref = scipy_stats.bootstrap(
        (gold, pa, pb),
        lambda g, x, y: scipy_stats.spearmanr(g, y).statistic - scipy_stats.spearmanr(g, x).statistic,
        paired=True, vectorized=False, method="percentile", n_resamples=1000, rng=np.random.default_rng(1),
    )
    assert (res.low, res.high) == pytest.approx(tuple(ref.confidence_interval), abs=1e-10)


def test_identical_encoders_have_p_one_and_a_zero_interval():
    a = (np.random.default_rng(0).random(100) < 0.5).astype(float)
    res = paired_difference({"c": a}, {"c": a}, ("mean", ["c"]))
    assert res.delta == 0 and res.low == 0 and res.high == 0 and res.p_value == 1.0
    assert mcnemar_exact(a, a).p_value == 1.0


def test_bootstrap_p_value_bounds():
    assert bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[-np.ones(500), np.ones(500)]) == 1.0


def test_difference_from_cis_normal_approximation():
    ci = {"low": 0.70, "high": 0.74, "level": 0.95}
    cj = {"low": 0.65, "high": 0.71, "level": 0.95}
    d = difference_from_cis(0.72, ci, 0.68, cj)
    half = math.hypot(0.02, 0.03)
    assert (d.low, d.high) == pytest.approx((-0.04 - half, -0.04 + half))
    se = half / scipy_stats.norm.ppf(0.975)
    assert d.p_value == pytest.approx(2 * scipy_stats.norm.sf(0.04 / se), rel=1e-9)
    with pytest.raises(ValueError, match="levels"):
        difference_from_cis(0.7, ci, 0.7, {**cj, "level": 0.9})
