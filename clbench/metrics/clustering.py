"""Clustering agreement metrics from the contingency table (pure NumPy).

``nmi`` is normalised mutual information with the arithmetic mean of the entropies (scikit-learn's
default), ``ari`` the adjusted Rand index (Hubert and Arabie), ``purity`` the share of samples in
their cluster's majority class.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); c = np.array([5, 5, 7, 7])
>>> nmi(y, c), ari(y, c), purity(y, c)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

import numpy as np

__all__ = ["ari", "contingency", "kmeans", "nmi", "purity"]


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Counts ``[n_classes, n_clusters]`` of (label, cluster) pairs."""
    labels, clusters = np.asarray(labels).ravel(), np.asarray(clusters).ravel()
    if len(labels) != len(clusters):
        raise ValueError(f"{len(labels)} labels but {len(clusters)} cluster assignments")
    if len(labels) == 0:
        raise ValueError("no samples")
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((li.max() + 1, ci.max() + 1), dtype=np.int64)
    np.add.at(table, (li, ci), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies (1 when both are trivial)."""
    t = contingency(labels, clusters).astype(np.float64)
    n = t.sum()
    hu, hv = _entropy(t.sum(axis=1)), _entropy(t.sum(axis=0))
    if hu == 0 and hv == 0:
        return 1.0
    nz = t > 0
    outer = np.outer(t.sum(axis=1), t.sum(axis=0))
    mi = float(np.sum(t[nz] / n * np.log(t[nz] * n / outer[nz])))
    denom = (hu + hv) / 2
    return max(0.0, min(1.0, mi / denom)) if denom > 0 else 0.0


def ari(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted Rand index (1 for identical partitions, about 0 for independent ones)."""
    t = contingency(labels, clusters).astype(np.float64)

    def pairs(v: np.ndarray) -> float:
        return float(np.sum(v * (v - 1) / 2))

    n = t.sum()
    index = pairs(t)
    a, b = pairs(t.sum(axis=1)), pairs(t.sum(axis=0))
    total = n * (n - 1) / 2
    expected = a * b / total if total > 0 else 0.0
    max_index = (a + b) / 2
    if max_index == expected:
        return 1.0
    return float((index - expected) / (max_index - expected))


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    t = contingency(labels, clusters)
    return float(t.max(axis=0).sum() / t.sum())


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 300, n_init: int = 1) -> np.ndarray:
    """Cluster assignments from scikit-learn's k-means (k-means++ initialisation, Lloyd)."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must lie in [1, {len(x)}], got {k}")
    model = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
    return model.fit_predict(x)
