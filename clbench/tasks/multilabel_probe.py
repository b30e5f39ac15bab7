"""``multilabel_probe``: one-vs-rest logistic regression, AUROC per label (CheXpert as in MGCA).

One L2-regularised logistic regression per label on frozen embeddings; C is chosen from ``Cs``
by the mean validation AUROC on a seeded ``val_fraction`` of the training rows, then refitted on
all of them. Label efficiency: each fraction in ``label_fractions`` (default 1%, 10%, 100%)
trains on a seeded random share of the training rows, once per seed in ``seeds``. Metrics:
``auroc`` (mean over labels with both classes in the test split; the headline, at the largest
fraction), ``auroc/<label>`` per label, and ``auroc@frac<f>_mean`` / ``_std`` per fraction.

Targets are 0/1 matrices: a ``labels`` dataset with ``target: multilabel``.

>>> import numpy as np
>>> rng = np.random.default_rng(0); x = rng.normal(size=(400, 6)); y = (x[:, :3] > 0).astype(int)
>>> out = MultilabelProbeTask.evaluate(x[:300], y[:300], x[300:], y[300:], {"label_fractions": [1.0]})
>>> out.main_metric, out.metrics["auroc"] > 0.95
('auroc', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from ..stats.seeds import seed_metrics
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class MultilabelProbeOptions:
    label_fractions: list[float] = option([0.01, 0.1, 1.0], "share of the training rows to train on")
    seeds: list[int] = option([0], "one subsample per seed for each fraction below 1")
    Cs: list[float] = option([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], "inverse regularisation strengths searched")
    val_fraction: float = option(0.2, "share of the training rows held out to choose C")
    max_iter: int = option(500, "L-BFGS iterations per fit")
    standardize: bool = option(True, "scale features by the training mean and std first")

    def validate(self) -> None:
        if not self.label_fractions or any(not 0 < f <= 1 for f in self.label_fractions):
            raise ValueError(f"label_fractions must lie in (0, 1], got {self.label_fractions}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: give one or more distinct seeds")
        if not self.Cs or min(self.Cs) <= 0:
            raise ValueError("Cs: give one or more positive values")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


def _matrix(y: Any, split: str) -> np.ndarray:
    y = None if y is None else np.asarray(y)
    if y is None or y.ndim != 2 or not np.isin(y, (0, 1)).all():
        shape = None if y is None else y.shape
        raise DataError(
            f"multilabel_probe: the {split} labels must be a 0/1 matrix [N, L] (got shape {shape}); "
            "use a labels dataset with target: multilabel"
        )
    return y.astype(np.int64)


def _probe(xtr, ytr, xte, yte, opts, seed, device):
    from ..metrics.multilabel import fit_ovr_logistic, mean_auroc

    C = opts.Cs[0]
    trace = []
    if len(opts.Cs) > 1:
        perm = np.random.default_rng([seed, 3]).permutation(len(xtr))
        n_val = round(opts.val_fraction * len(xtr))
        va, tr = perm[:n_val], perm[n_val:]
        if n_val >= 2 and len(tr) >= 2:
            for c in opts.Cs:
                m = fit_ovr_logistic(xtr[tr], ytr[tr], c, max_iter=opts.max_iter, device=device)
                score, _ = mean_auroc(ytr[va], m.scores(xtr[va]))
                trace.append({"C": c, "val_auroc": score})
            valid = [t for t in trace if not np.isnan(t["val_auroc"])]
            if valid:
                C = max(valid, key=lambda t: (t["val_auroc"], -t["C"]))["C"]
    model = fit_ovr_logistic(xtr, ytr, C, max_iter=opts.max_iter, device=device)
    scores = model.scores(xte)
    mean, per = mean_auroc(yte, scores)
    return {"auroc": mean, "per_label": per, "C": C, "sweep": trace, "n_train": len(xtr), "scores": scores}


class MultilabelProbeTask(Task):
    """One-vs-rest logistic regression; AUROC per label and its mean, at several label fractions."""

    Options = MultilabelProbeOptions
    protocol_version = "1"
    dataset_kinds = ("classification", "multilabel")
    splits = ("train", "test")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "auroc"

    def run(self, ctx: TaskContext) -> TaskOutput:
        x_train, y_train = ctx.features("train")
        x_test, y_test = ctx.features("test")
        names = getattr(ctx.dataset, "classes", None)
        return self.evaluate(x_train, y_train, x_test, y_test, self.options, label_names=names,
                             device=ctx.device, seed=ctx.seed)

    @classmethod
    def evaluate(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        options: MultilabelProbeOptions | dict[str, Any] | None = None,
        *,
        label_names: list[str] | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        opts = resolve_options(MultilabelProbeOptions, options)
        ytr, yte = _matrix(y_train, "train"), _matrix(y_test, "test")
        if ytr.shape[1] != yte.shape[1]:
            raise DataError(f"multilabel_probe: {ytr.shape[1]} training labels but {yte.shape[1]} test labels")
        xtr, xte = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
        if opts.standardize:
            mean, std = xtr.mean(axis=0), xtr.std(axis=0)
            std[std == 0] = 1.0
            xtr, xte = (xtr - mean) / std, (xte - mean) / std
        names = list(label_names) if label_names and len(label_names) == ytr.shape[1] else [
            str(j) for j in range(ytr.shape[1])
        ]
        t0 = time.perf_counter()
        runs: dict[float, list[dict[str, Any]]] = {}
        for frac in sorted(set(opts.label_fractions), reverse=True):
            seeds = [seed] if frac == 1.0 else opts.seeds
            runs[frac] = []
            for s in seeds:
                if frac == 1.0:
                    idx = np.arange(len(xtr))
                else:
                    n = max(2, round(frac * len(xtr)))
                    idx = np.sort(np.random.default_rng([s, 11]).choice(len(xtr), size=min(n, len(xtr)),
                                                                          replace=False))
                r = _probe(xtr[idx], ytr[idx], xte, yte, opts, s, device)
                r["seed"] = s
                runs[frac].append(r)
        head = runs[max(runs)]
        metrics: dict[str, float] = {"auroc": float(np.mean([r["auroc"] for r in head]))}
        for j, name in enumerate(names):
            metrics[f"auroc/{name}"] = float(np.mean([r["per_label"][j] for r in head]))
        if len(runs) > 1 or max(runs) < 1.0:
            for frac, rs in runs.items():
                values = [r["auroc"] for r in rs]
                # mean, std (ddof 0) and, with several seeds, a Student-t CI over seeds
                metrics.update(seed_metrics(f"auroc@frac{frac:g}", values))
        skipped = [names[j] for j in range(yte.shape[1]) if len(np.unique(yte[:, j])) < 2]
        details: dict[str, Any] = {
            "labels": names, "n_train": len(xtr), "n_test": len(xte), "dim": int(xtr.shape[1]),
            "headline_fraction": max(runs),
            "fractions": {f"frac{f:g}": [{k: v for k, v in r.items() if k not in ("per_label", "scores")}
                                         for r in rs]
                          for f, rs in runs.items()},
        }
        if skipped:
            details["labels_without_both_classes_in_test"] = skipped
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
                          samples=_samples(head, yte))


#: labels up to which the mean AUROC gets a bootstrap CI (each resample recomputes every label's AUROC)
MAX_CI_LABELS = 64


def _samples(head: list[dict[str, Any]], yte: np.ndarray) -> dict[str, Any]:
    """Per test row: each label's truth and score, so the mean AUROC is recomputed per resample."""
    from ..stats.samples import task_samples

    if len(head) != 1:
        return {"unavailable": "the headline label fraction ran with several seeds: no per-sample CI"}
    if yte.shape[1] > MAX_CI_LABELS:
        return {"unavailable": f"{yte.shape[1]} labels: a bootstrap of the mean AUROC is too slow"}
    scores = head[0]["scores"]
    arrays: dict[str, np.ndarray] = {}
    for j in range(yte.shape[1]):
        arrays[f"y{j}"] = yte[:, j].astype(np.int8)
        arrays[f"s{j}"] = np.asarray(scores[:, j], dtype=np.float64)
    return task_samples("labels", arrays, {"auroc": ("mean_auroc", list(arrays))})
