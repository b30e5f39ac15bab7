"""Linear probe (clbench.metrics.linear, clbench.tasks.linear_probe) against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clbench.errors import ConfigError, DataError
from clbench.metrics.classification import balanced_accuracy
from clbench.metrics.linear import (
    ProbeSettings,
    c_grid,
    fit_logistic,
    label_efficiency,
    linear_probe,
    stratified_split,
    stratified_subsample,
)
from clbench.options import parse_options
from clbench.tasks.base import TaskContext
from clbench.tasks.linear_probe import LinearProbeOptions, LinearProbeTask


def digits(standardize: bool):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[:1200], y[:1200], x[1200:], y[1200:]
    if standardize:
        mean, std = xtr.mean(0), xtr.std(0)
        std[std == 0] = 1
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    return xtr, ytr, xte, yte


def random_linear(seed=0, n=800, d=20, k=5, noise=1.0):
    """Labels from a random linear scorer plus Gumbel noise: a well-specified multinomial model."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k))
    x = rng.normal(size=(n + 400, d))
    y = (x @ w + noise * rng.gumbel(size=(n + 400, k))).argmax(1)
    return x[:n], y[:n], x[n:], y[n:]


def noisy_high_dim(seed=0, n=400, d=300, k=4, sep=3.5):
    """Few samples near the dimension, Gaussian classes: weight shrinkage (small C) clearly helps."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * sep / np.sqrt(2 * d)
    y = np.tile(np.arange(k), (n + 2000) // k)
    x = means[y] + rng.normal(size=(len(y), d))
    return x[:n], y[:n], x[n:], y[n:]


def separable(seed=0, n=300, d=5, k=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 6
    y = np.tile(np.arange(k), (n + 300) // k)
    x = means[y] + rng.normal(size=(len(y), d))
    return x[:n], y[:n], x[n:], y[n:]


def sklearn_fit(x, y, C):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, max_iter=20000, tol=1e-8).fit(x, y)


def objective(x, y, C, w, b):
    """scikit-learn's objective: C * sum of cross-entropies + 0.5 * ||W||^2 (float64)."""
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return C * nll.sum() + 0.5 * (w * w).sum()


# ---------------------------------------------------------------------------------- same C as sklearn
@pytest.mark.parametrize(
    "data, C",
    [
        (lambda: digits(standardize=True), 1.0),
        (lambda: digits(standardize=True), 0.01),
        (lambda: digits(standardize=False), 1e-4),
        (lambda: random_linear(), 0.1),
        (lambda: random_linear(seed=1, noise=0.3), 10.0),
    ],
)
def test_same_c_agrees_with_sklearn(data, C):
    xtr, ytr, xte, yte = data()
    sk = sklearn_fit(xtr, ytr, C)
    ours = linear_probe(xtr, ytr, xte, yte, C=C)
    assert ours.C_source == "given" and ours.C == C
    assert abs(ours.top1 - sk.score(xte, yte)) <= 0.005
    assert ours.balanced_accuracy == pytest.approx(balanced_accuracy(sk.predict(xte), yte), abs=0.006)
    w = ours.model.weight.double().numpy()
    b = ours.model.bias.double().numpy()
    ours_obj, sk_obj = objective(xtr, ytr, C, w, b), objective(xtr, ytr, C, sk.coef_.T, sk.intercept_)
    assert ours_obj <= sk_obj * (1 + 1e-3)  # same objective, solved as well (float32 here)


def test_two_classes_match_sklearns_binary_fit_at_twice_c():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(int)
    ours = fit_logistic(x, y, C=0.05)
    sk = sklearn_fit(x, y, 0.1)
    w = (ours.weight[:, 1] - ours.weight[:, 0]).numpy()
    np.testing.assert_allclose(w, sk.coef_[0], atol=1e-4)
    assert float(ours.bias[1] - ours.bias[0]) == pytest.approx(sk.intercept_[0], abs=1e-4)
    np.testing.assert_array_equal(ours.predict(x), sk.predict(x))


def test_warm_start_from_the_solution_needs_few_iterations():
    xtr, ytr, _, _ = random_linear()
    cold = fit_logistic(xtr, ytr, C=1.0)
    assert cold.converged and cold.n_iter > 10
    # (not zero: tol 1e-8 sits at float32 resolution, so a few steps polish until progress stalls)
    assert fit_logistic(xtr, ytr, C=1.0, init=cold).n_iter <= cold.n_iter // 3
    near = fit_logistic(xtr, ytr, C=1.3, init=cold)
    assert near.n_iter < cold.n_iter
    with pytest.raises(ValueError, match="other classes"):
        fit_logistic(xtr[ytr < 3], ytr[ytr < 3], C=1.0, init=cold)


# ---------------------------------------------------------------------------------------- the sweep
def test_sweep_picks_strong_regularisation_for_few_noisy_high_dim_samples():
    xtr, ytr, xte, yte = noisy_high_dim()
    res = linear_probe(xtr, ytr, xte, yte)
    assert res.C_source == "sweep" and res.C <= 1e-2
    weak = linear_probe(xtr, ytr, xte, yte, C=1e3)
    assert res.top1 >= weak.top1 + 0.03


def test_sweep_picks_weak_regularisation_for_separable_data():
    xtr, ytr, xte, yte = separable()
    res = linear_probe(xtr, ytr, xte, yte)
    assert res.C >= 1e2 and res.top1 == 1.0


def test_sweep_trace_is_coarse_then_refined():
    xtr, ytr, xte, yte = random_linear()
    res = linear_probe(xtr, ytr, xte, yte)
    cs = [e["C"] for e in res.trace]
    np.testing.assert_allclose(cs[:7], 10.0 ** np.arange(-6, 7, 2))  # every second decade
    assert len(cs) == len(set(cs)) == 7 + 8  # four halvings, two neighbours each
    grid = c_grid()
    assert len(grid) == 97 and all(np.isclose(grid, c).any() for c in cs)
    best = max(res.trace, key=lambda e: (e["val_top1"], -e["val_loss"]))
    assert res.C == best["C"]
    refined = sorted(cs[7:], key=lambda c: abs(np.log10(c / res.C)))
    assert abs(np.log10(refined[0] / res.C)) <= 1 / 8 + 1e-9  # neighbours one grid step away


def test_fixed_c_skips_the_sweep():
    xtr, ytr, xte, yte = random_linear()
    res = linear_probe(xtr, ytr, xte, yte, settings=ProbeSettings(c_min=0.5, c_max=0.5))
    assert res.C_source == "fixed" and res.C == 0.5 and res.trace == []


# ------------------------------------------------------------------------------------------- splits
def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.repeat(np.arange(5), [2, 5, 10, 40, 100])
    tr, va = stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [1, 1, 2, 8, 20]
    _tr2, va2 = stratified_split(y, 0.2, seed=1)
    assert not np.array_equal(va, va2)
    assert stratified_split(np.array([0, 0, 1]), 0.2, seed=0) is None  # class 1 has one sample


def test_stratified_subsample_per_class():
    y = np.repeat(np.arange(4), [3, 50, 200, 1000])
    for frac in (0.01, 0.1, 0.5):
        idx = stratified_subsample(y, frac, seed=0)
        counts = np.bincount(y[idx], minlength=4)
        assert counts.tolist() == [max(1, round(frac * n)) for n in (3, 50, 200, 1000)]
        assert len(np.unique(idx)) == len(idx)
    assert not np.array_equal(stratified_subsample(y, 0.1, 0), stratified_subsample(y, 0.1, 1))
    np.testing.assert_array_equal(stratified_subsample(y, 0.1, 7), stratified_subsample(y, 0.1, 7))


def test_label_fractions_mean_std_and_fallback_c():
    xtr, ytr, xte, yte = random_linear(n=1000)
    out = LinearProbeTask.evaluate(
        xtr,
        ytr,
        xte,
        yte,
        {
            "label_fractions": [0.002, 0.1, 1.0],
            "seeds": [0, 1, 2],
            "c_min": 1e-4,
            "c_max": 1e4,
            "steps_per_decade": 2,
        },
    )
    m, d = out.metrics, out.details
    assert out.main_metric == "top1" and d["headline_fraction"] == 1.0
    full = d["fractions"]["frac1"][0]
    assert m["top1"] == full["top1"] and m["C"] == full["C"] and full["C_source"] == "sweep"
    assert m["top1@frac1_std"] == 0.0
    for key in ("frac0.1", "frac0.002"):
        runs = d["fractions"][key]
        assert [r["seed"] for r in runs] == [0, 1, 2]
        top1 = [r["top1"] for r in runs]
        assert m[f"top1@{key}_mean"] == pytest.approx(np.mean(top1))
        assert m[f"top1@{key}_std"] == pytest.approx(np.std(top1))
        assert f"balanced_accuracy@{key}_mean" in m and f"top5@{key}_std" in m
    # 0.2% of ~200 samples per class is one sample each: no validation split, so the full C is reused
    assert {r["C_source"] for r in d["fractions"]["frac0.002"]} == {"full"}
    assert {r["C"] for r in d["fractions"]["frac0.002"]} == {full["C"]}
    assert {r["C_source"] for r in d["fractions"]["frac0.1"]} == {"sweep"}
    assert m["top1@frac0.002_mean"] < m["top1@frac0.1_mean"] < m["top1"]
    assert d["sweep"] and "fit_s" in out.timings


def test_headline_is_the_largest_fraction_when_1_is_absent():
    xtr, ytr, xte, yte = random_linear()
    runs = label_efficiency(
        xtr,
        ytr,
        xte,
        yte,
        fractions=[0.3, 0.5],
        seeds=[0, 1],
        settings=ProbeSettings(1e-2, 1e2, steps_per_decade=2),
    )
    assert sorted(runs) == [0.3, 0.5]
    out = LinearProbeTask.evaluate(
        xtr,
        ytr,
        xte,
        yte,
        {"label_fractions": [0.3, 0.5], "seeds": [0, 1], "c_min": 1e-2, "c_max": 1e2, "steps_per_decade": 2},
    )
    assert out.metrics["top1"] == pytest.approx(np.mean([r.top1 for _, r in runs[0.5]]))
    assert out.metrics["top1"] == out.metrics["top1@frac0.5_mean"]
    assert out.details["headline_fraction"] == 0.5 and "sweep" not in out.details


# --------------------------------------------------------------------------------------------- task
def test_task_run_matches_evaluate_and_standardize_option():
    xtr, ytr, xte, yte = digits(standardize=False)
    feats = {"train": (xtr, ytr), "test": (xte, yte)}
    ctx = TaskContext(features=feats.__getitem__, dataset=None, encoder=None, device="cpu", seed=0)
    opts = LinearProbeOptions(c_min=1e-3, c_max=1e1, standardize=True)
    out = LinearProbeTask(opts).run(ctx)
    assert set(out.metrics) == {"top1", "top5", "balanced_accuracy", "C"}
    assert out.metrics == LinearProbeTask.evaluate(xtr, ytr, xte, yte, opts).metrics
    assert out.metrics["top1"] > 0.95 and out.metrics["top5"] >= out.metrics["top1"]
    assert out.details["sweep"] and out.details["not_converged"] == 0


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"c_min": 0}, "c_min"),
        ({"c_min": 10, "c_max": 1}, "c_max"),
        ({"val_fraction": 0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"label_fractions": [0.0]}, "label_fractions"),
        ({"label_fractions": [1.5]}, "label_fractions"),
        ({"label_fractions": []}, "at least one"),
        ({"seeds": []}, "at least one"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": 0}, "tol"),
        ({"c_mim": 1}, "did you mean 'c_min'"),
    ],
)
def test_options_reject_nonsense(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_options(LinearProbeOptions, raw)
    xtr, ytr, xte, yte = random_linear(n=100)
    with pytest.raises(ConfigError, match=match):
        LinearProbeTask.evaluate(xtr, ytr, xte, yte, raw)


def test_data_errors_are_clear():
    xtr, ytr, xte, yte = random_linear(n=200)
    with pytest.raises(DataError, match=r"never occur in the train split \(7\)"):
        LinearProbeTask.evaluate(xtr, ytr, xte, np.where(yte == 0, 7, yte))
    with pytest.raises(DataError, match="at least two"):
        LinearProbeTask.evaluate(xtr, np.zeros_like(ytr), xte, np.zeros_like(yte))
    with pytest.raises(DataError, match="no labels"):
        LinearProbeTask.evaluate(xtr, ytr, xte, None)


def test_labels_with_gaps_are_handled_like_sklearn():
    xtr, ytr, xte, yte = random_linear(k=3)
    ytr, yte = ytr * 3 + 1, yte * 3 + 1  # classes 1, 4, 7
    res = linear_probe(xtr, ytr, xte, yte, C=1.0)
    assert res.model.classes.tolist() == [1, 4, 7]
    assert abs(res.top1 - sklearn_fit(xtr, ytr, 1.0).score(xte, yte)) <= 0.005


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_cuda_matches_cpu():
    xtr, ytr, xte, yte = random_linear()
    cpu = linear_probe(xtr, ytr, xte, yte, settings=ProbeSettings(1e-3, 1e3))
    gpu = linear_probe(xtr, ytr, xte, yte, settings=ProbeSettings(1e-3, 1e3), device="cuda")
    assert abs(cpu.top1 - gpu.top1) <= 0.01
