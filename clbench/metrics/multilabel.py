"""Label-set metrics and the one-vs-rest logistic probe (AUROC per label; F1 for node labels).

:func:`auroc` is the Mann-Whitney statistic with tied scores counted one half, the area
scikit-learn's ``roc_auc_score`` computes. :func:`f1_scores` gives macro- and micro-averaged F1
of single-label predictions (micro-F1 then equals accuracy). :func:`fit_ovr_logistic` fits one
L2-regularised logistic regression per label, the objective of scikit-learn's
``LogisticRegression(C=C)`` per column, all labels at once in torch (the objective separates
over labels, so the joint minimiser is the per-label one).

>>> import numpy as np
>>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
>>> f1_scores(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))["micro_f1"]
0.75
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .regression import rank_average

__all__ = ["OvrModel", "auroc", "f1_scores", "fit_ovr_logistic", "mean_auroc"]


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``y`` by ``scores``; NaN when ``y`` has one class only."""
    y = np.asarray(y).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rank_average(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mean_auroc(y: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """(mean over labels with both classes present, per-label AUROC list with NaN for the others)."""
    y, scores = np.asarray(y), np.asarray(scores)
    if y.ndim != 2 or y.shape != scores.shape:
        raise ValueError(f"need label and score matrices of one shape, got {y.shape} and {scores.shape}")
    per = [auroc(y[:, j], scores[:, j]) for j in range(y.shape[1])]
    valid = [a for a in per if not np.isnan(a)]
    return (float(np.mean(valid)) if valid else float("nan")), per


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Macro-F1 (unweighted mean over the classes in ``y_true`` or ``y_pred``) and micro-F1."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(f"need equally long non-empty label vectors, got {y_true.shape} and {y_pred.shape}")
    classes = np.union1d(y_true, y_pred)
    f1 = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"macro_f1": float(np.mean(f1)), "micro_f1": float(np.mean(y_true == y_pred))}


@dataclasses.dataclass
class OvrModel:
    weight: Any  # torch [D, L]
    bias: Any  # torch [L]
    C: float
    n_iter: int

    def scores(self, x: Any) -> np.ndarray:
        """Decision values [N, L] (log-odds per label)."""
        import torch

        with torch.no_grad():
            xt = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.weight.device)
            return torch.addmm(self.bias, xt, self.weight).cpu().numpy()


def fit_ovr_logistic(
    x: np.ndarray, y: np.ndarray, C: float, *, max_iter: int = 500, tol: float = 1e-7, device: str = "cpu"
) -> OvrModel:
    """Per label: minimise ``C * sum_i BCE(x_i w + b, y_i) + 0.5 ||w||^2`` (L-BFGS, float64).

    A label with a single class in ``y`` gets the weights the objective gives it (w -> 0, a large
    bias); its scores are then constant.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64), device=device)
    if yt.ndim != 2 or len(yt) != len(xt):
        raise ValueError(f"need labels [N, L] for {len(xt)} rows, got shape {tuple(yt.shape)}")
    n, d = xt.shape
    reg = 0.5 / (C * n)
    # precondition as the multiclass probe does: every coordinate starts with similar curvature
    scale = (xt.square().mean(dim=0) / 4 + 2 * reg).rsqrt()[:, None]
    v = torch.zeros(d, yt.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros(yt.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [v, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        w = scale * v
        logits = torch.addmm(b, xt, w)
        loss = F.binary_cross_entropy_with_logits(logits, yt, reduction="sum") / n + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return OvrModel((scale * v).detach(), b.detach(), float(C), int(opt.state[v].get("n_iter", 0)))
