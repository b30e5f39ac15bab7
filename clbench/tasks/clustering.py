"""``clustering``: k-means on the embeddings of one split, scored by NMI, ARI and purity.

k is the number of classes of the split unless ``k`` is set; k-means (scikit-learn, k-means++
initialisation) runs once per seed in ``seeds`` and every metric is reported as its mean
(``nmi``, the headline) and standard deviation (``nmi_std``) over seeds. ``normalize`` L2-normalises
the embeddings first (spherical clustering, the usual choice for contrastive features).

>>> import numpy as np
>>> y = np.repeat(np.arange(3), 20)
>>> x = np.eye(3)[y] * 10 + np.random.default_rng(0).normal(scale=0.1, size=(60, 3))
>>> ClusteringTask.evaluate(x, y).metrics["nmi"]
1.0
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from ..stats.samples import task_samples
from ..stats.seeds import seed_metrics
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class ClusteringOptions:
    split: str = option("test", "the split to cluster")
    k: int | None = option(None, "number of clusters (default: the number of classes present)")
    seeds: list[int] = option([0, 1, 2], "one k-means run per seed")
    normalize: bool = option(True, "L2-normalise embeddings before clustering")
    max_iter: int = option(300, "k-means iterations per run")

    def validate(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: give one or more distinct seeds")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


class ClusteringTask(Task):
    """k-means over several seeds, scored by NMI, ARI and purity against the class labels."""

    Options = ClusteringOptions
    protocol_version = "1"
    dataset_kinds = ("classification",)
    splits = ()

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "nmi"

    def run(self, ctx: TaskContext) -> TaskOutput:
        x, y = ctx.features(self.options.split)
        return self.evaluate(x, y, self.options, seed=ctx.seed)

    @classmethod
    def evaluate(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        options: ClusteringOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        """Cluster in-memory embeddings [N, D] against integer class labels [N]."""
        from ..metrics.clustering import ari, kmeans, nmi, purity
        from ..metrics.diagnostics import l2_normalize

        opts = resolve_options(ClusteringOptions, options)
        if labels is None:
            raise DataError("clustering: the split has no labels")
        labels = np.asarray(labels)
        x = np.asarray(x, dtype=np.float32)
        if labels.ndim != 1 or len(labels) != len(x):
            raise DataError(f"clustering: need one class label per row, got labels {labels.shape} for {x.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError("clustering: embeddings contain NaN or infinite values")
        k = opts.k or len(np.unique(labels))
        if k > len(x):
            raise DataError(f"clustering: k={k} exceeds the {len(x)} samples")
        if opts.normalize:
            x = l2_normalize(x).astype(np.float32)
        t0 = time.perf_counter()
        runs = []
        assignments: dict[str, np.ndarray] = {}
        for s in opts.seeds:
            c = kmeans(x, k, seed=s, max_iter=opts.max_iter)
            assignments[f"clusters_seed{s}"] = c
            runs.append({"seed": s, "nmi": nmi(labels, c), "ari": ari(labels, c), "purity": purity(labels, c)})
        metrics: dict[str, float] = {}
        for name in ("nmi", "ari", "purity"):
            values = [r[name] for r in runs]
            metrics[name] = float(np.mean(values))
            # std over seeds (ddof 0), and with several seeds a Student-t CI over them
            metrics.update({key: v for key, v in seed_metrics(name, values).items() if not key.endswith("_mean")})
        details = {"k": k, "n": len(x), "num_classes": len(np.unique(labels)), "runs": runs}
        # NMI/ARI/purity are not means of per-sample terms: a CI resamples samples (with their
        # cluster of every seed) and recomputes the mean over seeds on each resample
        names = ["y_true", *assignments]
        samples = task_samples(
            "labels", {"y_true": labels, **assignments}, {name: (name, names) for name in ("nmi", "ari", "purity")}
        )
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
                          samples=samples)
