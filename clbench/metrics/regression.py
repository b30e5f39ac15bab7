"""Ridge regression with a cross-validated penalty, and regression metrics (pure NumPy).

:func:`ridge_cv` centres features and targets (an unpenalised intercept), scores every alpha by
k-fold mean squared error using one SVD per fold, picks the best and refits on all rows: the model
scikit-learn's ``Ridge(alpha)`` fits, chosen as ``RidgeCV(alphas, cv=KFold(k))`` chooses.

>>> import numpy as np
>>> y = np.array([1.0, 2.0, 3.0, 4.0]); p = np.array([1.0, 2.0, 3.0, 5.0])
>>> r2(y, p), mae(y, p), rmse(y, p), spearman(y, p)
(0.8, 0.25, 0.5, 1.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["RidgeModel", "mae", "r2", "rank_average", "ridge_cv", "ridge_fit", "rmse", "spearman"]


def _pair(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape or len(y) == 0:
        raise ValueError(f"need equally long non-empty targets and predictions, got {y.shape} and {p.shape}")
    return y, p


def r2(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _pair(y, p)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - p) ** 2))
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else 0.0
    return 1.0 - ss_res / ss_tot


def mae(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _pair(y, p)
    return float(np.mean(np.abs(y - p)))


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _pair(y, p)
    return float(np.sqrt(np.mean((y - p) ** 2)))


def rank_average(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    v = np.asarray(v, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sv)) + 1]
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2  # mean of s+1 .. e
    return ranks


def spearman(y: np.ndarray, p: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks; NaN if one is constant)."""
    y, p = _pair(y, p)
    a, b = rank_average(y), rank_average(p)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


@dataclasses.dataclass
class RidgeModel:
    coef: np.ndarray
    intercept: float
    alpha: float
    #: mean validation MSE per alpha (same order as the alphas searched); empty when not searched
    cv_mse: list[float] = dataclasses.field(default_factory=list)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


def _svd_solutions(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]):
    """Centred ridge solutions for every alpha: (coefs [A, D], x mean, y mean)."""
    xm, ym = x.mean(axis=0), y.mean()
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    uty = u.T @ (y - ym)
    coefs = np.stack([vt.T @ (s / (s * s + a) * uty) for a in alphas])
    return coefs, xm, ym


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeModel:
    """``argmin ||y - x w - b||^2 + alpha ||w||^2`` (intercept unpenalised)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).ravel()
    coefs, xm, ym = _svd_solutions(x, y, [alpha])
    return RidgeModel(coefs[0], float(ym - xm @ coefs[0]), float(alpha))


def ridge_cv(x: np.ndarray, y: np.ndarray, alphas: Sequence[float], *, folds: int = 5, seed: int = 0) -> RidgeModel:
    """Pick alpha by ``folds``-fold CV mean squared error (seeded shuffled folds), refit on all rows.

    Ties go to the larger alpha (the simpler model).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"{len(x)} rows but {len(y)} targets")
    alphas = [float(a) for a in alphas]
    if len(alphas) == 1:
        return ridge_fit(x, y, alphas[0])
    folds = min(folds, len(x))
    if folds < 2:
        raise ValueError("cross-validation needs at least two rows")
    perm = np.random.default_rng(seed).permutation(len(x))
    sse = np.zeros(len(alphas))
    for part in np.array_split(perm, folds):
        train = np.setdiff1d(perm, part)
        coefs, xm, ym = _svd_solutions(x[train], y[train], alphas)
        pred = (x[part] - xm) @ coefs.T + ym
        sse += np.sum((pred - y[part, None]) ** 2, axis=0)
    mse = sse / len(x)
    best = max(range(len(alphas)), key=lambda i: (-mse[i], alphas[i]))
    model = ridge_fit(x, y, alphas[best])
    model.cv_mse = [float(m) for m in mse]
    return model
