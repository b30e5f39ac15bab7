"""``linear_probe``: L2-regularised multinomial logistic regression on frozen features (CLIP).

The regularisation strength is chosen as in CLIP: a sweep of C over a log grid (default 1e-6 to
1e6), coarse then refined around the best point, scored on a seeded, stratified 20% validation
split of the training set; the chosen C is refitted on the whole training set and scored on the
test split. The objective is scikit-learn's ``LogisticRegression(C=C)``; it is solved in torch
with L-BFGS, on the GPU when the run's device is one.

Label efficiency: ``label_fractions`` below 1 repeat the probe on per-class stratified subsets
of the training set (at least one sample per class), once per seed in ``seeds``, reporting
``top1@frac<f>_mean`` / ``_std`` (population std over seeds), with two or more seeds also
``_ci_low`` / ``_ci_high`` (Student-t CI over seeds, :mod:`clbench.stats.seeds`), and the same
for ``top5`` and ``balanced_accuracy``. A subset too small for a validation split (a class with one sample) reuses
the C chosen on the whole training set; ``details["fractions"]`` records where that happened.

Metrics ``top1``, ``top5``, ``balanced_accuracy`` and ``C`` are those of fraction 1.0, or of the
largest fraction listed (means over seeds, median C). The run's seed draws the validation split
of the whole training set; ``seeds`` draw the subsets and their validation splits.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 3, size=300)
>>> x = rng.normal(size=(300, 8)) + 2 * np.eye(3, 8)[y]
>>> out = LinearProbeTask.evaluate(x[:200], y[:200], x[200:], y[200:], {"c_min": 1e-2, "c_max": 1e2})
>>> out.main_metric, out.metrics["top1"] > 0.8
('top1', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..options import option, resolve_options
from ..stats.seeds import seed_metrics
from .base import ClassificationTask, TaskOutput


@dataclasses.dataclass
class LinearProbeOptions:
    c_min: float = option(1e-6, "smallest inverse regularisation strength C searched")
    c_max: float = option(1e6, "largest C searched (c_min == c_max fixes C and skips the sweep)")
    steps_per_decade: int = option(8, "grid points per decade of C")
    val_fraction: float = option(0.2, "share of each training class held out to choose C")
    label_fractions: list[float] = option([1.0], "share of each class to train on, in (0, 1]")
    seeds: list[int] = option([0], "one subsample per seed for each label fraction below 1")
    max_iter: int = option(1000, "L-BFGS iterations per fit")
    tol: float = option(1e-8, "gradient tolerance of each fit (on the mean-scaled objective)")
    standardize: bool = option(False, "scale features by the training mean and std first")

    def validate(self) -> None:
        if not self.c_min > 0:
            raise ValueError(f"c_min must be > 0, got {self.c_min}")
        if self.c_max < self.c_min:
            raise ValueError(f"c_max ({self.c_max}) must be >= c_min ({self.c_min})")
        if self.steps_per_decade < 1:
            raise ValueError(f"steps_per_decade must be >= 1, got {self.steps_per_decade}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if not self.label_fractions:
            raise ValueError("label_fractions: give at least one fraction")
        bad = [f for f in self.label_fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"label_fractions must lie in (0, 1], got {bad}")
        if len(set(self.label_fractions)) != len(self.label_fractions):
            raise ValueError(f"label_fractions: repeated values in {self.label_fractions}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeated values in {self.seeds}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")


def _frac_key(fraction: float) -> str:
    return f"frac{fraction:g}"


class LinearProbeTask(ClassificationTask):
    """Logistic-regression probe with CLIP's C sweep, optionally at several label fractions."""

    Options = LinearProbeOptions
    protocol_version = "1"
    type_name = "linear_probe"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "top1"

    @classmethod
    def evaluate(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        options: LinearProbeOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        """Run the protocol on in-memory features [N, D] and integer labels."""
        from ..metrics.linear import ProbeSettings, label_efficiency

        opts = resolve_options(LinearProbeOptions, options)
        num_classes = cls.num_classes(x_train, y_train, x_test, y_test)
        settings = ProbeSettings(
            c_min=opts.c_min,
            c_max=opts.c_max,
            steps_per_decade=opts.steps_per_decade,
            val_fraction=opts.val_fraction,
            max_iter=opts.max_iter,
            tol=opts.tol,
            standardize=opts.standardize,
        )
        t0 = time.perf_counter()
        runs = label_efficiency(
            x_train,
            np.asarray(y_train),
            x_test,
            np.asarray(y_test),
            fractions=opts.label_fractions,
            seeds=opts.seeds,
            settings=settings,
            device=device,
            seed=seed,
        )
        fit_s = time.perf_counter() - t0

        metrics: dict[str, float] = {}
        fractions: dict[str, list[dict[str, Any]]] = {}
        per_fraction = len(runs) > 1 or min(runs) < 1.0
        for frac, results in runs.items():
            fractions[_frac_key(frac)] = [
                {
                    "seed": s,
                    "C": r.C,
                    "C_source": r.C_source,
                    "top1": r.top1,
                    "top5": r.top5,
                    "balanced_accuracy": r.balanced_accuracy,
                    "n_iter": r.n_iter,
                    "converged": r.converged,
                }
                for s, r in results
            ]
            if per_fraction:
                for name in ("top1", "top5", "balanced_accuracy"):
                    values = [getattr(r, name) for _, r in results]
                    # mean, std (ddof 0) and, with two or more seeds, a Student-t CI over seeds
                    metrics.update(seed_metrics(f"{name}@{_frac_key(frac)}", values))
        head = runs[max(runs)]
        for name in ("top1", "top5", "balanced_accuracy"):
            metrics[name] = float(np.mean([getattr(r, name) for _, r in head]))
        metrics["C"] = float(np.median([r.C for _, r in head]))
        samples = _samples(head, np.asarray(y_test))

        details: dict[str, Any] = {
            "num_classes": num_classes,
            "n_train": len(x_train),
            "n_test": len(x_test),
            "dim": int(np.shape(x_train)[1]),
            "headline_fraction": max(runs),
            "fractions": fractions,
            "not_converged": sum(not r.converged for rs in runs.values() for _, r in rs),
        }
        if 1.0 in runs:
            details["sweep"] = runs[1.0][0][1].trace
        n_fitted = len(np.unique(y_train))
        if n_fitted < 5:
            details["note"] = f"{n_fitted} classes: top5 is top-{n_fitted} accuracy (always 1)"
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": fit_s}, samples=samples)


def _samples(head: list, y_test: np.ndarray) -> dict[str, Any]:
    """Per-test-sample outcomes of the headline fraction: top-1/top-5 hits (with several seeds,
    the share of seeds that got the sample right, whose mean is the mean over seeds), and with
    one run the predictions behind ``balanced_accuracy``."""
    from ..stats.samples import task_samples

    arrays: dict[str, np.ndarray] = {}
    for name, attr in (("top1", "hits1"), ("top5", "hits5")):
        hits = [getattr(r, attr) for _, r in head]
        arrays[name] = hits[0] if len(hits) == 1 else np.mean(hits, axis=0)
    specs = {name: ("mean", [name]) for name in arrays}
    if len(head) == 1:
        arrays.update(y_true=y_test, y_pred=head[0][1].pred)
        specs["balanced_accuracy"] = ("balanced_accuracy", ["y_true", "y_pred"])
    return task_samples("correct", arrays, specs)
