"""``sts``: semantic textual similarity, scored as MTEB scores it.

Each pair's two sentences are embedded (every distinct sentence once, through the feature cache);
the task correlates the gold scores with the cosine similarity of the two embeddings over all
pairs. The headline metric is ``cosine_spearman`` on a 0-1 scale (MTEB's main score); Pearson and
the euclidean, manhattan and dot-product variants are reported too. When the dataset has several
subsets (SemEval files, STS-B genres) each gets ``cosine_spearman[subset]`` and
``cosine_pearson[subset]`` (and the chosen main metric), next to the all-pairs numbers.

In memory:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(size=(50, 8)); b = a + rng.normal(scale=0.5, size=(50, 8))
>>> gold = -np.linalg.norm(a - b, axis=1)
>>> out = STSTask.evaluate(a, b, gold, )
>>> out.main_metric, out.metrics["euclidean_spearman"]
('cosine_spearman', 1.0)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..metrics.sts import CORRELATIONS, SIMILARITIES, sts_metrics
from ..options import option, resolve_options
from ..stats.samples import task_samples
from .base import Task, TaskContext, TaskOutput

MainMetric = Literal[
    "cosine_spearman",
    "cosine_pearson",
    "euclidean_spearman",
    "euclidean_pearson",
    "manhattan_spearman",
    "manhattan_pearson",
    "dot_spearman",
    "dot_pearson",
]


@dataclasses.dataclass
class STSTaskOptions:
    metric: MainMetric = option(
        "cosine_spearman", "headline metric: <cosine|euclidean|manhattan|dot>_<spearman|pearson>"
    )


class STSTask(Task):
    """Correlation of embedding similarity with gold similarity over sentence pairs."""

    Options = STSTaskOptions
    protocol_version = "1"
    dataset_kinds = ("sts",)
    splits = ("sentences",)
    modality = "text"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return options.metric

    def run(self, ctx: TaskContext) -> TaskOutput:
        ds = ctx.dataset
        x, _ = ctx.features("sentences")
        n = len(ds.split("sentences"))
        if len(x) != n:
            raise DataError(f"{len(x)} embeddings for {n} sentences of dataset {ds.name!r}")
        x = np.asarray(x)
        out = self.evaluate(x[ds.pairs_a], x[ds.pairs_b], ds.scores, ds.subsets, options=self.options)
        out.details["n_sentences"] = n
        return out

    @classmethod
    def evaluate(
        cls,
        emb_a: np.ndarray,
        emb_b: np.ndarray,
        scores: np.ndarray,
        subsets: Sequence[str] | None = None,
        *,
        options: STSTaskOptions | dict[str, Any] | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        """Score pairs (``emb_a[i]``, ``emb_b[i]``) against the gold ``scores[i]``.

        ``subsets`` (one name per pair) adds per-subset metrics when there are two or more.
        ``options`` is an :class:`STSTaskOptions`, a dict of suite options or None (defaults);
        ``device`` and ``seed`` are unused (the protocol is deterministic numpy) and accepted so
        every task is called alike.
        """
        options = resolve_options(STSTaskOptions, options)
        t0 = time.perf_counter()
        emb_a = np.asarray(emb_a)
        emb_b = np.asarray(emb_b)
        scores = np.asarray(scores, dtype=np.float64)
        if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
            raise ValueError(
                f"expected two [P, D] embedding arrays of one shape, got {emb_a.shape} and {emb_b.shape}"
            )
        if scores.shape != (len(emb_a),):
            raise ValueError(f"expected {len(emb_a)} gold scores, got shape {scores.shape}")
        if len(scores) < 2:
            raise ValueError("need at least two pairs to compute a correlation")
        if not np.isfinite(scores).all():
            raise ValueError(
                f"gold score of pair {int(np.flatnonzero(~np.isfinite(scores))[0])} is not finite"
            )
        main = options.metric
        metrics = sts_metrics(emb_a, emb_b, scores)
        # per pair: gold score and each similarity, so correlations can be bootstrapped over pairs
        arrays = {"gold": scores, **{sim: fn(emb_a, emb_b) for sim, fn in SIMILARITIES.items()}}
        samples = task_samples(
            "pairs", arrays, {f"{sim}_{corr}": (corr, ["gold", sim]) for sim in SIMILARITIES for corr in CORRELATIONS}
        )
        details: dict[str, Any] = {"n_pairs": len(scores)}
        if subsets is not None:
            subsets = [str(s) for s in subsets]
            if len(subsets) != len(scores):
                raise ValueError(f"{len(subsets)} subset names for {len(scores)} pairs")
            names = list(dict.fromkeys(subsets))
            if len(names) > 1:
                labels = np.asarray(subsets, dtype=object)
                details["subset_sizes"] = {}
                for name in names:
                    keep = labels == name
                    details["subset_sizes"][name] = int(keep.sum())
                    for key in dict.fromkeys(("cosine_spearman", "cosine_pearson", main)):
                        sim, corr = key.split("_")
                        s = SIMILARITIES[sim](emb_a[keep], emb_b[keep])
                        metrics[f"{key}[{name}]"] = CORRELATIONS[corr](scores[keep], s)
        return TaskOutput(
            metrics=metrics, main_metric=main, details=details, timings={"fit_s": time.perf_counter() - t0},
            samples=samples,
        )
