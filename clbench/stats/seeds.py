"""Aggregating a metric over repeated random draws (probe seeds, label-fraction subsets, few-shot draws).

Each seed is one independent run of the whole protocol, so the spread over seeds measures the
protocol's own randomness (which subset was labelled, which validation split chose C), on top
of the test-set sampling noise the bootstrap measures. With a handful of seeds a bootstrap over
seeds is meaningless, so the CI is Student's t interval::

    mean +/- t_{(1 + level) / 2, n - 1} * s / sqrt(n)        (s: sample std, ddof 1)

``std`` is the population standard deviation (ddof 0), as clbench has always reported
``<metric>_std``; ``sem`` uses ddof 1. One seed gives no CI (None).

>>> s = seed_summary([0.71, 0.73, 0.72])
>>> round(s.mean, 3), round(s.ci_low, 3), round(s.ci_high, 3)
(0.72, 0.695, 0.745)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SeedSummary", "seed_metrics", "seed_summary", "t_quantile"]


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float
    n: int
    level: float
    ci_low: float | None
    ci_high: float | None
    sem: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def seed_summary(values: Sequence[float], level: float = 0.95) -> SeedSummary:
    """Mean, population std and Student-t CI of one metric over seeds."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError("seed_summary needs a non-empty list of values")
    mean = float(v.mean())
    std = float(v.std())
    if len(v) < 2:
        return SeedSummary(mean, std, 1, level, None, None, None)
    sem = float(v.std(ddof=1) / math.sqrt(len(v)))
    half = t_quantile(0.5 + level / 2, len(v) - 1) * sem
    return SeedSummary(mean, std, len(v), level, mean - half, mean + half, sem)


def seed_metrics(name: str, values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{name_mean, name_std}`` and, with two or more seeds, ``name_ci_low`` and ``name_ci_high``."""
    s = seed_summary(values, level)
    out = {f"{name}_mean": s.mean, f"{name}_std": s.std}
    if s.ci_low is not None and s.ci_high is not None:
        out[f"{name}_ci_low"] = s.ci_low
        out[f"{name}_ci_high"] = s.ci_high
    return out


# ------------------------------------------------------------------------ Student's t, plain numpy
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def _t_cdf(t: float, df: int) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2, 0.5, x)
    return 1 - tail if t > 0 else tail


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0 < q < 1 or df < 1:
        raise ValueError(f"need 0 < q < 1 and df >= 1, got {q}, {df}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2
