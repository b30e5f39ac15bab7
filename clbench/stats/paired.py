"""Comparing two encoders on one cell: paired bootstrap of the difference, McNemar's exact test.

Both encoders were scored on the same samples (the same test images, pairs or queries, in the
same order), so their per-sample outcomes are resampled *together*: each resample draws one set
of sample indices and computes the metric for both encoders on it. The difference ``b - a`` of
the two metrics over the resamples gives the percentile CI of the difference and a two-sided
bootstrap p-value::

    p = min(1, 2 * min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))

(``d*`` the resampled differences, ``B`` their number; the +1 keeps p above zero). A difference
whose CI at level ``1 - alpha`` excludes zero has p below about ``alpha``.

For accuracy (per-sample correctness, 0/1), :func:`mcnemar_exact` is the exact McNemar test:
under the null hypothesis that both encoders are equally accurate, each discordant sample (one
correct, the other wrong) is equally likely to go either way, so the count ``b01`` of samples
only ``a`` gets right is Binomial(``b01 + b10``, 1/2). The two-sided p-value is
``min(1, 2 * P(X <= min(b01, b10)))``, and 1 when there is no discordant sample.

When the two results were not scored on the same samples (different sidecars), or only their
stored CIs are known, :func:`unpaired_difference` and :func:`difference_from_cis` give a wider,
unpaired interval.

>>> import numpy as np
>>> a = np.r_[np.ones(70), np.zeros(30)]; b = np.r_[np.ones(90), np.zeros(10)]
>>> res = paired_difference({"c": a}, {"c": b}, ("mean", ["c"]))
>>> round(res.delta, 2), res.low > 0, res.p_value < 0.01
(0.2, True, True)
>>> mcnemar_exact(a, b).p_value < 0.001
True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .bootstrap import StatSpec, bootstrap_distributions, evaluate_statistic, percentile_interval

__all__ = [
    "Difference",
    "McNemar",
    "bootstrap_p_value",
    "difference_from_cis",
    "mcnemar_exact",
    "paired_difference",
    "unpaired_difference",
]


@dataclasses.dataclass(frozen=True)
class Difference:
    """``b - a`` of one metric with its CI and two-sided p-value.

    ``method`` is ``paired-bootstrap``, ``unpaired-bootstrap`` or ``normal-from-cis``.
    """

    a: float
    b: float
    delta: float
    low: float
    high: float
    level: float
    p_value: float
    method: str
    n_resamples: int = 0
    seed: int = 0
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``b01`` samples only ``a`` got right, ``b10`` only ``b`` got right."""

    b01: int
    b10: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is zero" from resampled differences."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan")
    below = int(np.count_nonzero(d <= 0)) + 1
    above = int(np.count_nonzero(d >= 0)) + 1
    return min(1.0, 2.0 * min(below, above) / (len(d) + 1))


def _prefixed(arrays: Mapping[str, np.ndarray], spec: StatSpec, prefix: str):
    name, names = spec
    return {f"{prefix}{k}": np.asarray(arrays[k]) for k in names}, (name, [f"{prefix}{k}" for k in names])


def paired_difference(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    statistic: StatSpec,
    *,
    statistic_b: StatSpec | None = None,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    batch: int | None = None,
) -> Difference:
    """Paired bootstrap of ``stat(b) - stat(a)`` on the same samples.

    ``a`` and ``b`` hold the two encoders' per-sample arrays (same length, same sample order);
    ``statistic`` names the statistic and the arrays it reads (``statistic_b`` when ``b`` names
    them differently). ``groups`` (shared) stratifies the resampling.
    """
    spec_b = statistic_b or statistic
    arr_a, spec_a = _prefixed(a, statistic, "a:")
    arr_b, spec_b2 = _prefixed(b, spec_b, "b:")
    na = len(next(iter(arr_a.values())))
    nb = len(next(iter(arr_b.values())))
    if na != nb:
        raise ValueError(f"paired comparison needs the same samples: {na} vs {nb}")
    dists = bootstrap_distributions(
        {**arr_a, **arr_b}, {"a": spec_a, "b": spec_b2}, n_resamples=n_resamples, seed=seed,
        groups=groups, batch=batch,
    )
    diffs = dists["b"] - dists["a"]
    va = evaluate_statistic(arr_a, spec_a, groups)
    vb = evaluate_statistic(arr_b, spec_b2, groups)
    low, high = percentile_interval(diffs, level)
    return Difference(
        a=va, b=vb, delta=vb - va, low=low, high=high, level=float(level), p_value=bootstrap_p_value(diffs),
        method="paired-bootstrap", n_resamples=n_resamples, seed=seed, n=na,
    )


def unpaired_difference(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    statistic: StatSpec,
    *,
    statistic_b: StatSpec | None = None,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Difference:
    """Bootstrap of ``stat(b) - stat(a)`` resampling the two sample sets independently.

    For results scored on different samples (another split, another subsample): wider than the
    paired interval, since it cannot cancel the per-sample difficulty both share.
    """
    spec_b = statistic_b or statistic
    da = bootstrap_distributions(a, {"s": statistic}, n_resamples=n_resamples, seed=seed, groups=groups_a)["s"]
    # a second, independent stream for b (seed + 1 keeps both reproducible from one seed)
    db = bootstrap_distributions(b, {"s": spec_b}, n_resamples=n_resamples, seed=seed + 1, groups=groups_b)["s"]
    diffs = db - da
    va, vb = evaluate_statistic(a, statistic, groups_a), evaluate_statistic(b, spec_b, groups_b)
    low, high = percentile_interval(diffs, level)
    return Difference(
        a=va, b=vb, delta=vb - va, low=low, high=high, level=float(level), p_value=bootstrap_p_value(diffs),
        method="unpaired-bootstrap", n_resamples=n_resamples, seed=seed,
        n=min(len(next(iter(a.values()))), len(next(iter(b.values())))),
    )


def difference_from_cis(a: float, ci_a: Mapping[str, Any], b: float, ci_b: Mapping[str, Any]) -> Difference:
    """Unpaired difference from two stored CIs (no per-sample outcomes), by a normal approximation.

    Each CI's half-width ``h`` is read as ``z * se``; the difference's half-width is
    ``sqrt(h_a^2 + h_b^2)`` (independent errors) at the common level, and the p-value is the
    two-sided normal one. Both CIs must have the same level.
    """
    level_a, level_b = float(ci_a["level"]), float(ci_b["level"])
    if not math.isclose(level_a, level_b):
        raise ValueError(f"CIs at different levels: {level_a} and {level_b}")
    ha = (float(ci_a["high"]) - float(ci_a["low"])) / 2
    hb = (float(ci_b["high"]) - float(ci_b["low"])) / 2
    half = math.hypot(ha, hb)
    delta = b - a
    z = _normal_quantile(0.5 + level_a / 2)
    se = half / z
    p = 1.0 if se == 0 and delta == 0 else (0.0 if se == 0 else math.erfc(abs(delta) / se / math.sqrt(2)))
    return Difference(
        a=a, b=b, delta=delta, low=delta - half, high=delta + half, level=level_a, p_value=p,
        method="normal-from-cis",
    )


def _normal_quantile(q: float) -> float:
    """Inverse standard normal CDF by bisection on erf (plain Python; accurate to ~1e-12)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Exact (binomial) two-sided McNemar test on per-sample correctness of two encoders.

    >>> mcnemar_exact([1, 1, 0, 0], [1, 1, 0, 0]).p_value   # no discordant sample
    1.0
    """
    a = np.asarray(correct_a)
    b = np.asarray(correct_b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D correctness arrays of one length, got {a.shape} and {b.shape}")
    for name, x in (("a", a), ("b", b)):
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"correctness of {name} must be 0/1 (accuracy per sample)")
    a, b = a.astype(bool), b.astype(bool)
    b01 = int(np.count_nonzero(a & ~b))
    b10 = int(np.count_nonzero(~a & b))
    return McNemar(b01=b01, b10=b10, p_value=binomial_two_sided(min(b01, b10), b01 + b10))


def binomial_two_sided(k: int, n: int) -> float:
    """``min(1, 2 * P(X <= k))`` for X ~ Binomial(n, 1/2), k <= n / 2; 1.0 when n == 0.

    The cdf is summed in log space (log C(n, i) accumulated term by term, then log-sum-exp), so
    it stays accurate for any n.
    """
    if n == 0:
        return 1.0
    k = min(k, n - k)
    i = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log((n - i + 1) / i))))  # log C(n, 0..k)
    log_terms = log_comb - n * math.log(2.0)
    top = log_terms.max()
    cdf = math.exp(top) * float(np.exp(log_terms - top).sum())
    return min(1.0, 2.0 * cdf)
