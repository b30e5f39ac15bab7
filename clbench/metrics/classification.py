"""Classification metrics as pure functions on NumPy arrays.

Ties between class scores are broken towards the lower class index everywhere (the order a stable
descending sort gives), so a metric computed from scores and one computed from the ranked
predictions of :func:`rank_classes` always agree.

>>> import numpy as np
>>> scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
>>> labels = np.array([2, 0])
>>> topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, 2)
(0.5, 1.0)
>>> balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))
0.8333333333333333
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "check_classification_splits",
    "per_class_recall",
    "rank_classes",
    "topk_accuracy",
    "topk_hits",
]


def _labels_1d(labels: np.ndarray, n: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if n is not None and len(labels) != n:
        raise ValueError(f"{n} predictions but {len(labels)} labels")
    return labels


def rank_classes(scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best classes per row of ``scores`` [N, C], best first; ties go to the lower index.

    >>> rank_classes(np.array([[0.2, 0.5, 0.5, 0.1]]), 3)
    array([[1, 2, 0]])
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [N, C], got shape {scores.shape}")
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"n must be in [1, {scores.shape[1]}] (the number of classes), got {n}")
    return np.argsort(-scores, axis=1, kind="stable")[:, :n]


def topk_accuracy(scores_or_ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the top ``k`` classes.

    ``scores_or_ranked`` is either a float score matrix [N, C] (higher is better; ties go to the
    lower class index) or an integer matrix [N, m] of class indices ranked best first, as
    :func:`rank_classes` or :func:`clbench.metrics.knn.knn_predict` return (then ``k <= m``).
    """
    return float(topk_hits(scores_or_ranked, labels, k).mean())


def topk_hits(scores_or_ranked: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: whether its label is among the top ``k`` classes (bool [N]); the mean is
    :func:`topk_accuracy` (the per-sample outcomes behind its bootstrap CI)."""
    arr = np.asarray(scores_or_ranked)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D score or ranked-prediction matrix, got shape {arr.shape}")
    labels = _labels_1d(labels, arr.shape[0])
    if not 1 <= k <= arr.shape[1]:
        what = "ranked columns" if np.issubdtype(arr.dtype, np.integer) else "classes"
        raise ValueError(f"k must be in [1, {arr.shape[1]}] (the number of {what}), got {k}")
    if len(labels) == 0:
        raise ValueError("no samples to score")
    if np.issubdtype(arr.dtype, np.integer):
        return (arr[:, :k] == labels[:, None]).any(axis=1)
    if labels.min() < 0 or labels.max() >= arr.shape[1]:
        raise ValueError(f"labels must lie in [0, {arr.shape[1]}) for a score matrix with that many columns")
    true = arr[np.arange(len(labels)), labels][:, None]
    # the rank of the true class under a stable descending sort
    lower = np.arange(arr.shape[1])[None, :] < labels[:, None]
    rank = (arr > true).sum(axis=1) + ((arr == true) & lower).sum(axis=1)
    return rank < k


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches between predicted classes [N] and labels [N]."""
    pred = _labels_1d(pred)
    labels = _labels_1d(labels, len(pred))
    if len(labels) == 0:
        raise ValueError("no samples to score")
    return float((pred == labels).mean())


def per_class_recall(pred: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """Recall of each class that occurs in ``labels``: {class: correct / occurrences}."""
    pred = _labels_1d(pred)
    labels = _labels_1d(labels, len(pred))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    correct = np.bincount(inverse, weights=(pred == labels), minlength=len(classes))
    return {int(c): float(h / n) for c, h, n in zip(classes, correct, counts)}


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (scikit-learn's definition)."""
    recall = per_class_recall(pred, labels)
    if not recall:
        raise ValueError("no samples to score")
    return float(np.mean(list(recall.values())))


def check_classification_splits(
    x_train: np.ndarray, y_train: np.ndarray | None, x_test: np.ndarray, y_test: np.ndarray | None
) -> int:
    """Check a train/test pair of features [N, D] and integer labels; return the number of classes.

    The number of classes is ``max label + 1`` over both splits. Raises ValueError naming the
    problem: missing labels, shapes that disagree, non-integer or negative labels, non-finite
    features, fewer than two training classes, or test labels that never occur in training (no
    classifier fitted on the training split could predict them).
    """
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y is None:
            raise ValueError(f"the {split} split has no labels")
        if len(np.shape(x)) != 2:
            raise ValueError(f"{split} features must be 2-D [N, D], got shape {np.shape(x)}")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"{split} split: {len(x)} feature rows but labels of shape {y.shape}")
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{split} labels must be integers, got dtype {y.dtype}")
        if y.min() < 0:
            raise ValueError(f"{split} labels must be >= 0, found {int(y.min())}")
        if not np.isfinite(np.asarray(x)).all():
            row = int(np.flatnonzero(~np.isfinite(np.asarray(x)).all(axis=1))[0])
            raise ValueError(f"{split} features hold NaN or infinite values (first in row {row})")
    if np.shape(x_train)[1] != np.shape(x_test)[1]:
        raise ValueError(
            f"train features have {np.shape(x_train)[1]} dimensions, test features {np.shape(x_test)[1]}"
        )
    train_classes = np.unique(y_train)
    if len(train_classes) < 2:
        raise ValueError(f"the train split holds {len(train_classes)} class(es); need at least two")
    unseen = np.setdiff1d(np.unique(y_test), train_classes)
    if len(unseen):
        shown = ", ".join(str(int(c)) for c in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise ValueError(
            f"{len(unseen)} test label(s) never occur in the train split ({shown}); "
            f"train labels span {int(train_classes.min())}..{int(train_classes.max())}"
        )
    return int(max(np.max(y_train), np.max(y_test))) + 1
