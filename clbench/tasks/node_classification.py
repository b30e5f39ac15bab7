"""``node_classification``: logistic regression on node embeddings, Macro-F1 and Micro-F1.

The HeCo / MEOW protocol on frozen node embeddings. With ``shots`` empty the probe trains on the
dataset's train split (given splits, e.g. a ``split`` column of a ``labels`` file) and is scored
on its test split. With ``shots: [20, 40, 60]`` each entry draws that many labelled nodes per
class from the train split (seeded; once per seed in ``seeds``) and scores the test split;
metrics are then ``macro_f1@<k>shot_mean`` / ``_std`` and the same for ``micro_f1``, and the
headline ``macro_f1`` / ``micro_f1`` are the means at the largest shot.

The classifier is the multinomial logistic regression of ``linear_probe`` (scikit-learn's
objective), with C chosen on a stratified validation share of the training nodes over
``c_min .. c_max``; when a draw leaves too few nodes per class for a validation split, the C
chosen on the whole train split is used (recorded in ``details``).

>>> import numpy as np
>>> rng = np.random.default_rng(0); y = np.arange(300) % 3
>>> x = rng.normal(size=(300, 8)) + 3 * np.eye(3, 8)[y]
>>> out = NodeClassificationTask.evaluate(x[:200], y[:200], x[200:], y[200:], {"shots": [5], "seeds": [0, 1]})
>>> out.main_metric, out.metrics["macro_f1"] > 0.9
('macro_f1', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..options import option, resolve_options
from ..stats.samples import task_samples
from ..stats.seeds import seed_metrics
from .base import ClassificationTask, TaskOutput


@dataclasses.dataclass
class NodeClassificationOptions:
    shots: list[int] = option([], "labelled nodes per class drawn from the train split (empty: use it all)")
    seeds: list[int] = option([0, 1, 2, 3, 4], "one draw per seed for each shot count")
    c_min: float = option(1e-4, "smallest C searched")
    c_max: float = option(1e4, "largest C searched (c_min == c_max fixes C)")
    steps_per_decade: int = option(2, "grid points per decade of C")
    val_fraction: float = option(0.2, "share of each training class held out to choose C")
    max_iter: int = option(1000, "L-BFGS iterations per fit")
    standardize: bool = option(False, "scale features by the training mean and std first")

    def validate(self) -> None:
        if any(k < 1 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ValueError(f"shots: distinct positive integers expected, got {self.shots}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: give one or more distinct seeds")
        if not 0 < self.c_min <= self.c_max:
            raise ValueError(f"need 0 < c_min <= c_max, got {self.c_min}, {self.c_max}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


def shot_indices(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices per class (all of a smaller class), seeded, sorted."""
    rng = np.random.default_rng([seed, 5])
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


class NodeClassificationTask(ClassificationTask):
    """Logistic regression on node embeddings (given splits or k nodes per class); Macro/Micro-F1."""

    Options = NodeClassificationOptions
    protocol_version = "1"
    type_name = "node_classification"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "macro_f1"

    @classmethod
    def evaluate(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        options: NodeClassificationOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        from ..metrics.linear import ProbeSettings, linear_probe, stratified_split
        from ..metrics.multilabel import f1_scores

        opts = resolve_options(NodeClassificationOptions, options)
        num_classes = cls.num_classes(x_train, y_train, x_test, y_test)
        ytr, yte = np.asarray(y_train), np.asarray(y_test)
        xtr, xte = np.asarray(x_train, dtype=np.float32), np.asarray(x_test, dtype=np.float32)
        if opts.standardize:
            mean, std = xtr.mean(axis=0), xtr.std(axis=0)
            std[std == 0] = 1.0
            xtr, xte = (xtr - mean) / std, (xte - mean) / std
        st = ProbeSettings(c_min=opts.c_min, c_max=opts.c_max, steps_per_decade=opts.steps_per_decade,
                           val_fraction=opts.val_fraction, max_iter=opts.max_iter)
        t0 = time.perf_counter()
        full: dict[str, Any] = {}
        preds: dict[Any, np.ndarray] = {}  # test predictions per (shots, seed); None: the full set

        def fit(x, y, C, s, key=None):
            res = linear_probe(x, y, xte, yte, settings=st, C=C, device=device, seed=s)
            pred = res.model.predict(xte)
            preds[key] = pred
            return {"C": res.C, "C_source": res.C_source, **f1_scores(yte, pred)}

        def full_fit():
            if not full:
                full.update(fit(xtr, ytr, None, seed))
            return full

        metrics: dict[str, float] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        head: list[np.ndarray] = []
        if not opts.shots:
            r = full_fit()
            metrics.update(macro_f1=r["macro_f1"], micro_f1=r["micro_f1"], C=r["C"])
            head = [preds[None]]
        else:
            for k in sorted(opts.shots):
                runs[f"{k}shot"] = []
                for s in opts.seeds:
                    idx = shot_indices(ytr, k, s)
                    C = None
                    if opts.c_min != opts.c_max and stratified_split(ytr[idx], opts.val_fraction, s) is None:
                        C = full_fit()["C"]
                    r = fit(xtr[idx], ytr[idx], C, s, key=(k, s))
                    if k == max(opts.shots):
                        head.append(preds[(k, s)])
                    if C is not None:
                        r["C_source"] = "full"
                    runs[f"{k}shot"].append({"seed": s, "n_train": len(idx), **r})
                for name in ("macro_f1", "micro_f1"):
                    values = [r[name] for r in runs[f"{k}shot"]]
                    # mean, std (ddof 0) and, with several seeds, a Student-t CI over seeds
                    metrics.update(seed_metrics(f"{name}@{k}shot", values))
            top = max(opts.shots)
            metrics["macro_f1"] = metrics[f"macro_f1@{top}shot_mean"]
            metrics["micro_f1"] = metrics[f"micro_f1@{top}shot_mean"]
        details = {"num_classes": num_classes, "n_train": len(xtr), "n_test": len(xte), "dim": int(xtr.shape[1]),
                   "shots": runs}
        # per test node: the label, the prediction of each headline fit (one per seed with shots),
        # and the share of those fits that got it right (micro-F1 is its mean)
        arrays = {"y_true": yte, **{f"y_pred{i}": p for i, p in enumerate(head)},
                  "correct": np.mean([p == yte for p in head], axis=0)}
        samples = task_samples("labels", arrays, {
            "macro_f1": ("macro_f1", ["y_true", *(f"y_pred{i}" for i in range(len(head)))]),
            "micro_f1": ("mean", ["correct"]),
        })
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
                          samples=samples)
