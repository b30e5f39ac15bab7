"""``regression_probe``: ridge regression from frozen embeddings to a continuous or ordinal target.

As in SupReMix's linear evaluation of regression representations: the penalty alpha is chosen
from ``alphas`` by ``folds``-fold cross-validation on the training split (seeded folds, mean
squared error), the model is refitted on the whole training split and scored on the test split by
``r2`` (the headline), ``mae``, ``rmse`` and ``spearman``. Targets are the labels of the splits:
numbers from a ``labels`` dataset with ``target: continuous``, or class indices used as ordinal
values. ``standardize`` scales features by the training mean and standard deviation first.

>>> import numpy as np
>>> rng = np.random.default_rng(0); x = rng.normal(size=(300, 5)); y = x @ np.arange(5.0)
>>> out = RegressionProbeTask.evaluate(x[:200], y[:200], x[200:], y[200:])
>>> out.main_metric, out.metrics["r2"] > 0.99
('r2', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from ..stats.samples import task_samples
from .base import ClassificationTask, TaskOutput


@dataclasses.dataclass
class RegressionProbeOptions:
    alphas: list[float] = option([10.0**e for e in range(-4, 6)], "ridge penalties searched")
    folds: int = option(5, "cross-validation folds for choosing alpha")
    standardize: bool = option(True, "scale features by the training mean and std first")

    def validate(self) -> None:
        if not self.alphas or min(self.alphas) < 0:
            raise ValueError("alphas: give one or more non-negative penalties")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")


def _targets(y: Any, split: str) -> np.ndarray:
    if y is None:
        raise DataError(f"regression_probe: the {split} split has no targets")
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"regression_probe: {split} targets must be one number per row, got shape {y.shape}")
    return y.astype(np.float64)


class RegressionProbeTask(ClassificationTask):
    """Ridge regression with cross-validated alpha; R2, MAE, RMSE and Spearman on the test split."""

    Options = RegressionProbeOptions
    protocol_version = "1"
    type_name = "regression_probe"
    dataset_kinds = ("classification", "regression")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "r2"

    @classmethod
    def evaluate(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        options: RegressionProbeOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        from ..metrics.regression import mae, r2, ridge_cv, rmse, spearman

        opts = resolve_options(RegressionProbeOptions, options)
        ytr, yte = _targets(y_train, "train"), _targets(y_test, "test")
        xtr, xte = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
        if len(xtr) != len(ytr) or len(xte) != len(yte):
            raise DataError("regression_probe: features and targets differ in length")
        if len(xtr) < opts.folds:
            raise DataError(f"regression_probe: {len(xtr)} training rows for {opts.folds} folds")
        if opts.standardize:
            mean, std = xtr.mean(axis=0), xtr.std(axis=0)
            std[std == 0] = 1.0
            xtr, xte = (xtr - mean) / std, (xte - mean) / std
        t0 = time.perf_counter()
        model = ridge_cv(xtr, ytr, opts.alphas, folds=opts.folds, seed=seed)
        pred = model.predict(xte)
        metrics = {
            "r2": r2(yte, pred), "mae": mae(yte, pred), "rmse": rmse(yte, pred),
            "spearman": spearman(yte, pred), "alpha": model.alpha,
        }
        details = {
            "n_train": len(xtr), "n_test": len(xte), "dim": int(xtr.shape[1]),
            "cv_mse": dict(zip([f"{a:g}" for a in opts.alphas], model.cv_mse)),
        }
        if model.alpha in (min(opts.alphas), max(opts.alphas)) and len(opts.alphas) > 1:
            details["note"] = f"alpha={model.alpha:g} lies at the edge of the searched range"
        # per test row: target, prediction and absolute error (R2 is recomputed per resample)
        samples = task_samples(
            "labels", {"y_true": yte, "y_pred": np.asarray(pred, dtype=np.float64), "abs_err": np.abs(yte - pred)},
            {"r2": ("r2", ["y_true", "y_pred"]), "mae": ("mean", ["abs_err"]),
             "spearman": ("spearman", ["y_true", "y_pred"])},
        )
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
                          samples=samples)
