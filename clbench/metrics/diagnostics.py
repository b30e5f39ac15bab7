"""Representation diagnostics as pure NumPy functions on embeddings ``[N, D]``.

- :func:`uniformity` (Wang and Isola, 2020): ``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of the
  L2-normalised embeddings, ``t = 2``; 0 for collapsed points, lower is more uniform.
- :func:`alignment` (Wang and Isola): ``mean ||z_a - z_b||^alpha`` over positive pairs of
  normalised embeddings (``alpha = 2``); lower is better aligned.
- :func:`tolerance` (Wang and Liu, 2021): mean cosine similarity of same-class pairs ``i != j``.
- :func:`rankme` (Garrido et al., 2023): ``exp`` of the entropy of the singular values normalised
  to sum one; between 1 (collapse) and ``min(N, D)``.
- :func:`singular_spectrum` (Jing et al., 2022): singular values of the embeddings' covariance
  matrix, descending, divided by the largest.
- :func:`hubness` (Radovanovic et al., 2010): skewness of the k-occurrence distribution of the
  cosine k-nearest-neighbour graph, the antihub share and the largest k-occurrence.

>>> import numpy as np
>>> z = np.vstack([np.eye(3), -np.eye(3)])            # the octahedron: evenly spread points
>>> round(rankme(z), 6), round(uniformity(z), 4)      # 3 equal singular values
(3.0, -4.2186)
>>> round(uniformity(np.ones((5, 3))), 6), round(rankme(np.ones((5, 3))), 4)
(0.0, 1.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "alignment",
    "hubness",
    "l2_normalize",
    "rankme",
    "singular_spectrum",
    "tolerance",
    "uniformity",
]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _check(x: np.ndarray, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a matrix [N, D], got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"need at least {min_rows} embeddings, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def uniformity(x: np.ndarray, t: float = 2.0, *, chunk: int = 2048) -> float:
    """``log`` of the mean Gaussian potential ``exp(-t ||z_i - z_j||^2)`` over pairs ``i < j``."""
    z = l2_normalize(_check(x))
    n = len(z)
    # ||z_i - z_j||^2 = 2 - 2 z_i.z_j; accumulate exp(-t d^2 + 4t) (<= 1 scale-free) row blocks
    total = 0.0
    for s in range(0, n, chunk):
        g = z[s : s + chunk] @ z.T
        d2 = np.clip(2.0 - 2.0 * g, 0.0, 4.0)
        rows = np.arange(s, min(s + chunk, n))
        upper = np.arange(n)[None, :] > rows[:, None]
        total += float(np.exp(-t * d2)[upper].sum())
    return math.log(total / (n * (n - 1) / 2))


def alignment(a: np.ndarray, b: np.ndarray, alpha: float = 2.0) -> float:
    """Mean ``||z_a - z_b||^alpha`` over aligned rows of two normalised views."""
    a, b = _check(a, 1), _check(b, 1)
    if a.shape != b.shape:
        raise ValueError(f"the two views differ in shape: {a.shape} and {b.shape}")
    d = np.linalg.norm(l2_normalize(a) - l2_normalize(b), axis=1)
    return float(np.mean(d**alpha))


def tolerance(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity over same-class pairs ``i != j`` (NaN when no class has two samples)."""
    z = l2_normalize(_check(x))
    labels = np.asarray(labels)
    if labels.shape != (len(z),):
        raise ValueError(f"expected {len(z)} labels, got shape {labels.shape}")
    num, den = 0.0, 0
    for c in np.unique(labels):
        zc = z[labels == c]
        s = zc.sum(axis=0)
        num += float(s @ s) - len(zc)  # sum_{i != j} z_i.z_j; each z_i.z_i is 1
        den += len(zc) * (len(zc) - 1)
    return num / den if den else float("nan")


def _singular_values(x: np.ndarray) -> np.ndarray:
    return np.linalg.svd(x, compute_uv=False)


def rankme(x: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe: ``exp(-sum p_k log p_k)``, ``p_k = s_k / sum(s) + eps`` over singular values ``s``."""
    s = _singular_values(_check(x, 1))
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def singular_spectrum(x: np.ndarray) -> np.ndarray:
    """Singular values of the covariance of ``x`` (centred), descending, divided by the largest."""
    x = _check(x)
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / len(x)
    s = np.linalg.svd(cov, compute_uv=False)
    return s / s[0] if s[0] > 0 else s


def hubness(x: np.ndarray, k: int = 10, *, labels: np.ndarray | None = None, chunk: int = 2048) -> dict[str, float]:
    """Statistics of the cosine k-NN graph (self excluded).

    ``skewness``: sample skewness of the k-occurrence counts ``N_k``; ``antihub_fraction``: share
    of points in nobody's k-NN list; ``max_occurrence``: largest ``N_k`` divided by ``k``;
    ``nn_similarity``: mean cosine similarity to the nearest neighbour; with ``labels``,
    ``knn_label_agreement``: share of the k neighbours carrying the point's label.
    """
    z = l2_normalize(_check(x))
    n = len(z)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} points, got {k}")
    counts = np.zeros(n, dtype=np.int64)
    nn_sim = np.empty(n)
    agree = 0
    for s in range(0, n, chunk):
        g = z[s : s + chunk] @ z.T
        rows = np.arange(s, min(s + chunk, n))
        g[np.arange(len(rows)), rows] = -np.inf
        idx = np.argpartition(-g, k - 1, axis=1)[:, :k]
        np.add.at(counts, idx.ravel(), 1)
        nn_sim[rows] = g.max(axis=1)
        if labels is not None:
            agree += int((np.asarray(labels)[idx] == np.asarray(labels)[rows, None]).sum())
    mu, sd = counts.mean(), counts.std()
    out = {
        "skewness": float(np.mean((counts - mu) ** 3) / sd**3) if sd > 0 else 0.0,
        "antihub_fraction": float(np.mean(counts == 0)),
        "max_occurrence": float(counts.max() / k),
        "nn_similarity": float(nn_sim.mean()),
    }
    if labels is not None:
        out["knn_label_agreement"] = agree / (n * k)
    return out
