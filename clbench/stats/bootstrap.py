"""Percentile bootstrap confidence intervals of metrics computed from per-sample outcomes.

Pure numpy. Resampling draws indices exactly as ``scipy.stats.bootstrap`` does: one
``numpy.random.Generator`` made from ``seed``, and per batch of ``b`` resamples one call
``rng.integers(0, n, (b, n))`` for each independently resampled array (one for paired data, one
per group for stratified data). With the same seed, batch size and statistic, the interval equals
``scipy.stats.bootstrap(..., method="percentile", rng=np.random.default_rng(seed))``'s: the
bounds are the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation) of the
bootstrap distribution.

Statistics (``STATISTICS``) take the resampled arrays as ``[b, n]`` matrices, one row per resample,
and return ``[b]`` values:

- ``mean``: the mean of one array (accuracy from per-sample correctness, a retrieval metric from
  per-query scores);
- ``pearson`` and ``spearman``: the correlation of two arrays resampled as pairs (ties get
  average ranks, recomputed within every resample);
- ``group_mean``: with ``groups``, the unweighted mean over groups of each group's mean
  (image-text retrieval: mean of the two directions' recalls); resampling is then stratified:
  each group is resampled within itself;
- statistics of the resample's *counts* (how often each sample occurs), for metrics summed over
  samples before they are computed: ``miou``, ``seg_pixel_accuracy``, ``seg_mean_accuracy``
  (per-image pixel counts ``[n, C]``) and ``coco_ap``, ``coco_ap50``, ``coco_ap75`` (per-image
  detections), in :mod:`clbench.stats.dense`;
- row-wise statistics, applied to one resample at a time, for metrics that are not means of
  per-sample terms: ``nmi``, ``ari``, ``purity``, ``macro_f1``, ``balanced_accuracy`` (arrays
  ``(true, pred)``), ``r2`` (``(true, pred)``) -- given several prediction arrays (one per seed)
  they return the mean over them -- ``mean_auroc`` (arrays ``y_0, s_0, y_1, s_1, ...``: mean
  AUROC over labels with both classes in the resample), and any name registered with
  :func:`register_statistic`.

>>> import numpy as np
>>> correct = np.r_[np.ones(80), np.zeros(20)]
>>> ci = bootstrap_ci({"c": correct}, ("mean", ["c"]), seed=0)
>>> round(ci.estimate, 2), ci.low < 0.8 < ci.high, ci.n_resamples
(0.8, True, 1000)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CI",
    "STATISTICS",
    "StatSpec",
    "bootstrap_ci",
    "bootstrap_distributions",
    "ci_from_distribution",
    "evaluate_statistic",
    "percentile_interval",
    "register_statistic",
]

#: resampled elements (rows x columns) held at once; larger problems are drawn in row batches
MAX_BATCH_ELEMENTS = 2**24

#: a statistic and the names of the arrays it reads, e.g. ("spearman", ["gold", "pred"])
StatSpec = tuple[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class CI:
    """A confidence interval of one statistic.

    ``estimate`` is the statistic on the original data; ``low``/``high`` the interval bounds at
    ``level``; ``std_error`` the standard deviation (ddof 1) of the bootstrap distribution.
    ``to_dict()`` is the form stored in result files (``result["ci"]["main"]``).
    """

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    seed: int
    std_error: float
    method: str = "percentile"
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "n_resamples": self.n_resamples,
            "seed": self.seed,
            "method": self.method,
            "std_error": self.std_error,
            "n": self.n,
        }

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


# ----------------------------------------------------------------------------------- statistics
def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of [b, n] matrices (NaN for a constant row)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    sx = np.abs(xc).max(axis=-1, keepdims=True)
    sy = np.abs(yc).max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc, yc = xc / sx, yc / sy  # scaled first, as clbench.metrics.sts.pearson
        r = (xc * yc).sum(axis=-1) / np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    return np.clip(r, -1.0, 1.0)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank) within each row of a [b, n] matrix."""
    x = np.atleast_2d(x)
    b, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(n), (b, n))
    new_run = np.ones((b, n), dtype=bool)
    new_run[:, 1:] = xs[:, 1:] != xs[:, :-1]
    end_run = np.ones((b, n), dtype=bool)
    end_run[:, :-1] = new_run[:, 1:]
    start = np.maximum.accumulate(np.where(new_run, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(end_run, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((b, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    return ranks


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(_rank_rows(x), _rank_rows(y))


#: vectorised statistics: functions of [b, n] matrices (one row per resample) -> [b]
STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "mean": _mean,
    "pearson": _pearson_rows,
    "spearman": _spearman_rows,
}
#: statistics applied to one resample at a time (1-D arrays -> float)
_ROWWISE: dict[str, Callable[..., float]] = {}
#: built-in row-wise statistics, imported on first use: clbench's own pure metric functions
#: (``module:function``, or ``module:function:key`` for a function returning a dict)
_LAZY: dict[str, str] = {
    "nmi": "clbench.metrics.clustering:nmi",
    "ari": "clbench.metrics.clustering:ari",
    "purity": "clbench.metrics.clustering:purity",
    "macro_f1": "clbench.metrics.multilabel:f1_scores:macro_f1",
    "balanced_accuracy": "clbench.metrics.classification:balanced_accuracy:swap",
    "r2": "clbench.metrics.regression:r2",
    "mean_auroc": "clbench.metrics.multilabel:auroc",  # see _mean_auroc
}


def _mean_auroc(*pairs: np.ndarray) -> float:
    """Mean AUROC over labels with both classes present; arrays (y_0, s_0, y_1, s_1, ...)."""
    from ..metrics.multilabel import auroc

    values = [auroc(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    valid = [v for v in values if not np.isnan(v)]
    return float(np.mean(valid)) if valid else float("nan")


#: statistics of a batch's count matrix ``C[r, i]`` (how often sample ``i`` occurs in resample
#: ``r``) and the whole per-sample arrays: ``fn(C, *arrays) -> [b]`` (``module:function``)
_COUNT_LAZY: dict[str, str] = {
    "miou": "clbench.stats.dense:miou",
    "seg_pixel_accuracy": "clbench.stats.dense:pixel_accuracy",
    "seg_mean_accuracy": "clbench.stats.dense:mean_accuracy",
    "coco_ap": "clbench.stats.dense:coco_ap",
    "coco_ap50": "clbench.stats.dense:coco_ap50",
    "coco_ap75": "clbench.stats.dense:coco_ap75",
}


def _count_statistic(name: str) -> Callable[..., np.ndarray]:
    import importlib

    module, func = _COUNT_LAZY[name].split(":")
    return getattr(importlib.import_module(module), func)


def _resolve_lazy(name: str) -> Callable[..., float] | None:
    if name == "mean_auroc":
        _ROWWISE[name] = _mean_auroc
        return _mean_auroc
    target = _LAZY.get(name)
    if target is None:
        return None
    import importlib

    module, func, *key = target.split(":")
    fn = getattr(importlib.import_module(module), func)
    if key == ["swap"]:  # balanced_accuracy(pred, labels): arrays are stored (true, pred)
        one = lambda y, p: float(fn(p, y))
    elif key:
        one = lambda y, p: float(fn(y, p)[key[0]])
    else:
        one = lambda y, p: float(fn(y, p))

    def stat(y: np.ndarray, *preds: np.ndarray) -> float:
        # several predictions (one per seed: k-means runs, probe seeds) -> the mean over them,
        # as the task reports it
        return one(y, preds[0]) if len(preds) == 1 else float(np.mean([one(y, p) for p in preds]))

    _ROWWISE[name] = stat
    return stat


def register_statistic(name: str, fn: Callable[..., float]) -> None:
    """Register a statistic computed from 1-D arrays of one resample (e.g. macro-F1).

    It is applied to each resample in turn, so it may be any pure function of the arrays.
    """
    if name in STATISTICS or name in _LAZY or name in _COUNT_LAZY or name == "group_mean":
        raise ValueError(f"statistic {name!r} is built in")
    _ROWWISE[name] = fn


def _known(name: str) -> bool:
    return name in STATISTICS or name in _ROWWISE or name in _LAZY or name in _COUNT_LAZY or name == "group_mean"


def _apply(name: str, mats: list[np.ndarray]) -> np.ndarray:
    """The statistic ``name`` of each row of the [b, n] matrices ``mats`` -> [b]."""
    if name in STATISTICS:
        return np.asarray(STATISTICS[name](*mats), dtype=np.float64)
    fn = _ROWWISE.get(name) or _resolve_lazy(name)
    if fn is not None:
        return np.array([fn(*(m[i] for m in mats)) for i in range(mats[0].shape[0])], dtype=np.float64)
    known = sorted(STATISTICS) + sorted(set(_ROWWISE) | set(_LAZY) | set(_COUNT_LAZY))
    raise KeyError(f"unknown statistic {name!r} (known: {', '.join(known)})")


def evaluate_statistic(
    arrays: Mapping[str, np.ndarray], spec: StatSpec, groups: np.ndarray | None = None
) -> float:
    """The statistic ``spec`` on the original (not resampled) data.

    >>> import numpy as np
    >>> evaluate_statistic({"g": np.array([1., 2, 3]), "p": np.array([1., 3, 2])}, ("spearman", ["g", "p"]))
    0.5
    """
    name, names = spec
    if name == "group_mean":
        if groups is None:
            raise ValueError("group_mean needs groups")
        (arr,) = names
        values = np.asarray(arrays[arr], dtype=np.float64)
        return float(np.mean([values[groups == g].mean() for g in np.unique(groups)]))
    if name in _COUNT_LAZY:  # every sample once
        n = np.asarray(arrays[names[0]]).shape[0]
        return float(_count_statistic(name)(np.ones((1, n)), *(np.asarray(arrays[a]) for a in names))[0])
    mats = [np.asarray(arrays[a])[None, :] for a in names]
    return float(_apply(name, mats)[0])


# ----------------------------------------------------------------------------------- resampling
def _batch_rows(n: int, n_resamples: int, batch: int | None) -> int:
    if batch is not None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        return batch
    return max(1, min(n_resamples, MAX_BATCH_ELEMENTS // max(n, 1)))


def _check(arrays: Mapping[str, np.ndarray], groups: np.ndarray | None) -> tuple[dict[str, np.ndarray], int]:
    out = {k: np.asarray(v) for k, v in arrays.items()}
    lengths = {k: v.shape for k, v in out.items()}
    if not out:
        raise ValueError("no per-sample arrays given")
    n = next(iter(out.values())).shape[0] if next(iter(out.values())).ndim else 0
    for v in out.values():
        if v.ndim < 1 or v.shape[0] != n:
            raise ValueError(f"per-sample arrays must be 1-D of one length (or rows [n, ...]); got shapes {lengths}")
    if n < 1:
        raise ValueError("no samples to resample")
    if groups is not None and np.shape(groups) != (n,):
        raise ValueError(f"groups must have shape ({n},), got {np.shape(groups)}")
    return out, n


def bootstrap_distributions(
    arrays: Mapping[str, np.ndarray],
    statistics: Mapping[str, StatSpec],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    batch: int | None = None,
) -> dict[str, np.ndarray]:
    """Bootstrap distributions ``{key: [n_resamples]}`` of several statistics on shared resamples.

    ``arrays``: per-sample arrays of one length ``n`` (resampled together, as pairs).
    ``statistics``: ``{key: (statistic name, [array names])}``. Every statistic sees the same
    resamples, so their distributions are jointly valid (a difference of two is a paired
    difference). ``groups`` (one label per sample) makes the resampling stratified: each group is
    resampled within itself, groups in sorted order, each with its own ``rng.integers`` call.
    """
    arrays, n = _check(arrays, groups)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    for key, (name, names) in statistics.items():
        if not _known(name):
            raise KeyError(f"{key}: unknown statistic {name!r}")
        missing = [a for a in names if a not in arrays]
        if missing:
            raise KeyError(f"{key}: no per-sample array {missing} (have: {', '.join(arrays)})")
        if name == "group_mean" and groups is None:
            raise ValueError(f"{key}: group_mean needs groups")
    rng = np.random.default_rng(seed)
    rows = _batch_rows(n, n_resamples, batch)
    strata: list[np.ndarray] | None = None
    if groups is not None:
        groups = np.asarray(groups)
        strata = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    out: dict[str, list[np.ndarray]] = {key: [] for key in statistics}
    for start in range(0, n_resamples, rows):
        b = min(rows, n_resamples - start)
        if strata is None:
            idx = rng.integers(0, n, (b, n))
            parts = None
        else:
            parts = [members[rng.integers(0, len(members), (b, len(members)))] for members in strata]
            idx = np.concatenate(parts, axis=1)
        means = [names[0] for name, names in statistics.values() if name == "mean"]
        counts = _Counts(idx, n, arrays, means)
        for key, (name, names) in statistics.items():
            if name == "group_mean":
                values = arrays[names[0]].astype(np.float64)
                assert parts is not None
                out[key].append(np.mean([values[p].mean(axis=1) for p in parts], axis=0))
            elif name in _COUNTED:
                out[key].append(counts.statistic(name, names))
            elif name in _COUNT_LAZY:
                out[key].append(np.asarray(_count_statistic(name)(counts.c, *(arrays[a] for a in names)), np.float64))
            else:
                out[key].append(_apply(name, [arrays[a][idx] for a in names]))
    return {key: np.concatenate(v) for key, v in out.items()}


#: statistics computed from how often each sample occurs in a resample (no gathered copies)
_COUNTED = ("mean", "pearson", "spearman")


class _Counts:
    """One batch of resamples as a count matrix ``C[r, i]`` (how often sample ``i`` occurs in
    resample ``r``): a mean is ``C @ x / n``, a correlation a C-weighted one, and average ranks
    within a resample follow from the counts of the distinct values, without sorting each row.
    Equal to computing on the gathered resamples up to floating-point rounding."""

    def __init__(self, idx: np.ndarray, n: int, arrays: Mapping[str, np.ndarray], means: Sequence[str] = ()):
        self.idx = idx
        self.n = n
        self.arrays = arrays
        self._c: np.ndarray | None = None
        self._ranks: dict[str, np.ndarray] = {}
        self._mean_names = list(dict.fromkeys(means))
        self._means: dict[str, np.ndarray] = {}

    @property
    def c(self) -> np.ndarray:
        if self._c is None:
            b, n = self.idx.shape[0], self.n
            flat = (np.arange(b)[:, None] * n + self.idx).ravel()
            self._c = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        return self._c

    def mean(self, name: str) -> np.ndarray:
        if name not in self._means:
            names = self._mean_names if name in self._mean_names else [name]
            # every mean of the batch in one matrix product
            values = np.stack([np.asarray(self.arrays[a], dtype=np.float64) for a in names], axis=1)
            self._means.update(zip(names, (self.c @ values / self.n).T))
        return self._means[name]

    def ranks(self, name: str) -> np.ndarray:
        """[b, n]: the average rank (1-based) of sample ``i``'s value within resample ``r``."""
        if name not in self._ranks:
            values, dense = np.unique(np.asarray(self.arrays[name]), return_inverse=True)
            u = len(values)
            # occurrences of each distinct value per resample
            per_value = _sum_by(self.c, dense, u)
            before = np.cumsum(per_value, axis=1) - per_value
            self._ranks[name] = (before + (per_value + 1) / 2)[:, dense]
        return self._ranks[name]

    def _pearson(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """C-weighted Pearson correlation of each resample; x, y are [n] or [b, n]."""
        c, n = self.c, self.n
        mx = (c * x).sum(axis=-1, keepdims=True) / n
        my = (c * y).sum(axis=-1, keepdims=True) / n
        dx, dy = x - mx, y - my
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (c * dx * dy).sum(axis=-1) / np.sqrt((c * dx * dx).sum(axis=-1) * (c * dy * dy).sum(axis=-1))
        return np.clip(r, -1.0, 1.0)

    def statistic(self, name: str, names: Sequence[str]) -> np.ndarray:
        if name == "mean":
            return self.mean(names[0])
        if name == "pearson":
            x, y = (np.asarray(self.arrays[a], dtype=np.float64) for a in names)
            # centred and scaled first (as clbench.metrics.sts.pearson) to keep the sums accurate
            x, y = x - x.mean(), y - y.mean()
            x, y = x / (np.abs(x).max() or 1.0), y / (np.abs(y).max() or 1.0)
            return self._pearson(x, y)
        return self._pearson(self.ranks(names[0]), self.ranks(names[1]))


def _sum_by(c: np.ndarray, dense: np.ndarray, u: int) -> np.ndarray:
    """``out[r, v] = sum of c[r, i] over i with dense[i] == v`` for a large number of values."""
    order = np.argsort(dense, kind="stable")
    if u == len(dense):  # all values distinct: a permutation
        return c[:, order]
    starts = np.searchsorted(dense[order], np.arange(u))
    return np.add.reduceat(c[:, order], starts, axis=1)


def percentile_interval(distribution: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval at ``level`` of a bootstrap distribution.

    NaN resamples (a correlation of a constant resample) are left out.
    """
    _check_level(level)
    d = np.asarray(distribution, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(d, [alpha, 1 - alpha])
    return float(low), float(high)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap_ci(
    arrays: Mapping[str, np.ndarray],
    statistic: StatSpec,
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    batch: int | None = None,
) -> CI:
    """Percentile bootstrap CI of one statistic of per-sample arrays.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> gold = rng.normal(size=200); pred = gold + rng.normal(size=200)
    >>> ci = bootstrap_ci({"gold": gold, "pred": pred}, ("spearman", ["gold", "pred"]), level=0.9)
    >>> ci.low < ci.estimate < ci.high, ci.level
    (True, 0.9)
    """
    _check_level(level)
    dists = bootstrap_distributions(
        arrays, {"s": statistic}, n_resamples=n_resamples, seed=seed, groups=groups, batch=batch
    )
    return ci_from_distribution(
        dists["s"], evaluate_statistic(arrays, statistic, groups), level=level, seed=seed,
        n=len(next(iter(arrays.values()))),
    )


def ci_from_distribution(dist: np.ndarray, estimate: float, *, level: float, seed: int, n: int) -> CI:
    """A :class:`CI` from a bootstrap distribution and the statistic on the original data."""
    low, high = percentile_interval(dist, level)
    finite = dist[~np.isnan(dist)]
    se = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
    return CI(
        estimate=float(estimate), low=low, high=high, level=float(level), n_resamples=len(dist),
        seed=int(seed), std_error=se, n=int(n),
    )
