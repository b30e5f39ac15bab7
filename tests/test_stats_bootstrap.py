"""Bootstrap CIs against scipy.stats.bootstrap (same generator, same resample indices) and seed CIs
against scipy's Student t."""

from __future__ import annotations

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")

from clbench.metrics.clustering import nmi
from clbench.metrics.sts import pearson, spearman
from clbench.stats import bootstrap_ci, seed_metrics, seed_summary
from clbench.stats.bootstrap import (
    _rank_rows,
    bootstrap_distributions,
    evaluate_statistic,
    register_statistic,
)
from clbench.stats.seeds import t_quantile


def scipy_ci(data, statistic, *, seed, n_resamples=1000, level=0.95, **kw):
    res = scipy_stats.bootstrap(
        data, statistic, method="percentile", rng=np.random.default_rng(seed), n_resamples=n_resamples,
        confidence_level=level, **kw,
    )
    return res


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_mean_ci_equals_scipy_exactly(seed, level):
    rng = np.random.default_rng(100 + seed)
    correct = (rng.random(357) < 0.73).astype(np.float64)
    ours = bootstrap_ci({"c": correct}, ("mean", ["c"]), seed=seed, level=level)
    ref = scipy_ci((correct,), np.mean, seed=seed, level=level)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.std_error == pytest.approx(ref.standard_error, rel=1e-10)
    assert ours.estimate == correct.mean() and ours.level == level and ours.n_resamples == 1000
    assert ours.low < ours.estimate < ours.high


def test_batched_resampling_draws_like_scipy_batches():
    x = np.random.default_rng(3).normal(size=200)
    ours = bootstrap_distributions({"x": x}, {"m": ("mean", ["x"])}, n_resamples=500, seed=4, batch=64)["m"]
    ref = scipy_ci((x,), np.mean, seed=4, n_resamples=500, batch=64)
    np.testing.assert_allclose(ours, ref.bootstrap_distribution, rtol=0, atol=1e-12)
    # the default batch (all at once for small data) draws a different, equally valid stream
    whole = bootstrap_distributions({"x": x}, {"m": ("mean", ["x"])}, n_resamples=500, seed=4)["m"]
    np.testing.assert_allclose(whole, scipy_ci((x,), np.mean, seed=4, n_resamples=500).bootstrap_distribution)


@pytest.mark.parametrize("name", ["spearman", "pearson"])
def test_correlations_resample_pairs_like_scipy_paired(name):
    rng = np.random.default_rng(11)
    gold = rng.integers(0, 6, size=150).astype(np.float64)  # many ties: ranks recomputed per resample
    pred = gold + rng.normal(scale=1.5, size=150)
    ref_fn = {"spearman": lambda a, b: scipy_stats.spearmanr(a, b).statistic,
              "pearson": lambda a, b: scipy_stats.pearsonr(a, b).statistic}[name]
    ours = bootstrap_ci({"gold": gold, "pred": pred}, (name, ["gold", "pred"]), seed=2)
    ref = scipy_ci((gold, pred), ref_fn, seed=2, paired=True, vectorized=False)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-10)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-10)
    assert ours.estimate == pytest.approx({"spearman": spearman, "pearson": pearson}[name](gold, pred), abs=1e-12)


def test_rank_rows_equals_scipy_rankdata_with_ties():
    m = np.random.default_rng(0).integers(0, 4, size=(20, 31)).astype(float)
    np.testing.assert_array_equal(_rank_rows(m), scipy_stats.rankdata(m, axis=1))


def test_group_mean_is_a_stratified_bootstrap_like_scipy_two_samples():
    """Image-text retrieval: mean of two directions' recalls, each direction resampled in itself."""
    rng = np.random.default_rng(5)
    t2i = (rng.random(120) < 0.4).astype(float)
    i2t = (rng.random(40) < 0.6).astype(float)
    values = np.r_[t2i, i2t]
    groups = np.r_[np.zeros(120, int), np.ones(40, int)]
    ours = bootstrap_ci({"hit": values}, ("group_mean", ["hit"]), groups=groups, seed=9)
    ref = scipy_ci((t2i, i2t), lambda a, b, axis=-1: (a.mean(axis) + b.mean(axis)) / 2, seed=9)
    assert ours.estimate == pytest.approx((t2i.mean() + i2t.mean()) / 2)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)


def test_rowwise_metric_resamples_samples_and_recomputes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=80)
    clusters = np.where(rng.random(80) < 0.7, labels, rng.integers(0, 4, size=80))
    ours = bootstrap_ci({"y": labels, "c": clusters}, ("nmi", ["y", "c"]), seed=3, n_resamples=200)
    ref = scipy_ci((labels, clusters), nmi, seed=3, n_resamples=200, paired=True, vectorized=False)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.estimate == nmi(labels, clusters)


def test_registered_statistic_and_errors():
    register_statistic("median_test", lambda x: float(np.median(x)))
    x = np.arange(50, dtype=float)
    ci = bootstrap_ci({"x": x}, ("median_test", ["x"]), n_resamples=100)
    ref = scipy_ci((x,), np.median, seed=0, n_resamples=100)
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval))
    with pytest.raises(KeyError, match="unknown statistic"):
        bootstrap_ci({"x": x}, ("nope", ["x"]))
    with pytest.raises(ValueError, match="one length"):
        bootstrap_ci({"x": x, "y": x[:3]}, ("mean", ["x"]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci({"x": x}, ("mean", ["x"]), level=1.5)
    with pytest.raises(ValueError, match="built in"):
        register_statistic("mean", np.mean)


def test_shared_resamples_make_joint_distributions():
    x = np.random.default_rng(0).normal(size=100)
    d = bootstrap_distributions({"x": x, "y": 2 * x}, {"a": ("mean", ["x"]), "b": ("mean", ["y"])}, seed=1)
    np.testing.assert_allclose(d["b"], 2 * d["a"])
    assert evaluate_statistic({"x": x}, ("mean", ["x"])) == x.mean()


def test_constant_data_gives_a_degenerate_ci():
    ci = bootstrap_ci({"c": np.ones(30)}, ("mean", ["c"]))
    assert ci.low == ci.high == ci.estimate == 1.0


# ------------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("df", [1, 2, 4, 30])
@pytest.mark.parametrize("q", [0.975, 0.995, 0.9])
def test_t_quantile_matches_scipy(df, q):
    assert t_quantile(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-9)


def test_seed_summary_matches_a_t_interval():
    values = [0.712, 0.735, 0.701, 0.722]
    s = seed_summary(values, level=0.95)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert s.std == pytest.approx(np.std(values)) and s.mean == pytest.approx(np.mean(values))
    m = seed_metrics("top1@frac0.1", values)
    assert set(m) == {"top1@frac0.1_mean", "top1@frac0.1_std", "top1@frac0.1_ci_low", "top1@frac0.1_ci_high"}
    one = seed_metrics("x", [0.5])
    assert one == {"x_mean": 0.5, "x_std": 0.0}  # one seed: no CI
