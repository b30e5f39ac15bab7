"""Semantic textual similarity metrics: correlations between gold scores and embedding similarities.

Pure numpy, computed in float64 over all pairs at once, as MTEB does: a pair's similarity is the
cosine, the negative euclidean distance, the negative manhattan distance or the dot product of its
two embeddings, and each is correlated with the gold scores by Spearman and Pearson (0-1 scale).

>>> import numpy as np
>>> a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]); b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
>>> round(spearman(np.array([5.0, 2.5, 0.0]), paired_cosine(a, b)), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing the mean of their ranks (scipy's ``average`` method)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values in sorted order
    new_run = np.concatenate(([True], xs[1:] != xs[:-1]))
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate((starts[1:], [len(xs)]))
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of ``x`` and ``y``; NaN when either is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    sx, sy = np.abs(xc).max(), np.abs(yc).max()
    if sx == 0 or sy == 0:
        return float("nan")
    xc, yc = xc / sx, yc / sy  # scaled first: squares of huge values would overflow
    r = float(np.dot(xc, yc) / (np.linalg.norm(xc) * np.linalg.norm(yc)))
    return max(-1.0, min(1.0, r))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either is constant."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of the same length, got {x.shape} and {y.shape}")
    return pearson(rankdata(x), rankdata(y))


def _pair_arrays(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [P, D] arrays of the same shape, got {a.shape} and {b.shape}")
    return a, b


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair; 0 where a row is all zeros (as scikit-learn)."""
    a, b = _pair_arrays(a, b)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    na[na == 0] = 1.0
    nb[nb == 0] = 1.0
    return np.einsum("ij,ij->i", a / na[:, None], b / nb[:, None])


def paired_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Negative euclidean distance of each row pair (higher is more similar)."""
    a, b = _pair_arrays(a, b)
    return -np.linalg.norm(a - b, axis=1)


def paired_manhattan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Negative manhattan (L1) distance of each row pair (higher is more similar)."""
    a, b = _pair_arrays(a, b)
    return -np.abs(a - b).sum(axis=1)


def paired_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of each row pair."""
    a, b = _pair_arrays(a, b)
    return np.einsum("ij,ij->i", a, b)


SIMILARITIES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": paired_cosine,
    "euclidean": paired_euclidean,
    "manhattan": paired_manhattan,
    "dot": paired_dot,
}
CORRELATIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "spearman": spearman,
    "pearson": pearson,
}


def sts_metrics(emb_a: np.ndarray, emb_b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``{similarity}_{correlation}`` for every similarity and correlation, over all pairs.

    Keys: cosine_spearman, cosine_pearson, euclidean_*, manhattan_*, dot_*.
    """
    gold = np.asarray(gold, dtype=np.float64)
    if len(gold) != len(emb_a):
        raise ValueError(f"{len(gold)} gold scores for {len(emb_a)} pairs")
    out = {}
    for sim_name, sim in SIMILARITIES.items():
        s = sim(emb_a, emb_b)
        for corr_name, corr in CORRELATIONS.items():
            out[f"{sim_name}_{corr_name}"] = corr(gold, s)
    return out
