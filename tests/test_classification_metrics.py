"""Classification metrics against scikit-learn's own implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from clbench.metrics.classification import balanced_accuracy, topk_accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, size=300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 7, size=300))
    assert balanced_accuracy(pred, y) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_accuracy_matches_sklearn(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(400, 10))  # continuous: no ties
    y = rng.integers(0, 10, size=400)
    expected = top_k_accuracy_score(y, scores, k=k, labels=np.arange(10))
    assert topk_accuracy(scores.astype(np.float32), y, k) == pytest.approx(expected, abs=1e-12)
