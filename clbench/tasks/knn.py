"""``knn``: weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO).

Training and test features are L2-normalised; each test sample's ``k`` most cosine-similar
training samples vote for their class with weight ``exp(similarity / temperature)``. One pass
serves every ``k`` in the list. Metrics are ``top1@k<k>`` and ``top5@k<k>`` for each ``k``; the
headline is ``top1@k20`` when 20 is among them, else the first ``k`` listed.

Under ``torchrun`` the task is collective: every rank holds a contiguous shard of the training
bank and finds its exact partial top-k, rank 0 merges them and votes, with the same neighbours,
predictions and metrics as one process (:func:`clbench.distributed.knn_neighbours_on_ranks`).

In memory:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 4, size=300)
>>> x = rng.normal(size=(300, 16)) + 3 * np.eye(4, 16)[y]
>>> out = KnnTask.evaluate(x[:200], y[:200], x[200:], y[200:], {"k": [5, 20]})
>>> out.main_metric, out.metrics["top1@k20"] > 0.9
('top1@k20', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from .base import ClassificationTask, TaskOutput


@dataclasses.dataclass
class KnnOptions:
    k: list[int] = option([10, 20, 100, 200], "neighbourhood sizes (one search serves all)")
    temperature: float = option(0.07, "T in the vote weight exp(cosine / T)")
    chunk_size: int | None = option(
        None,
        "test rows per similarity block (default: ~64 MB of similarities on CPU, ~512 MB on GPU, at least"
        " 256 rows)",
    )
    precision: Literal["auto", "fp32", "bf16-prefilter"] = option(
        "auto",
        "similarity pass that finds the candidates (same neighbours and results for all; auto:"
        " bf16-prefilter on AMX-BF16 CPUs and sm80+ GPUs, else fp32)",
    )

    def validate(self) -> None:
        if not self.k:
            raise ValueError("k: give at least one neighbourhood size")
        if min(self.k) < 1:
            raise ValueError(f"k: every k must be >= 1, got {self.k}")
        if len(set(self.k)) != len(self.k):
            raise ValueError(f"k: repeated values in {self.k}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class KnnTask(ClassificationTask):
    """Weighted k-NN top-1 / top-5 accuracy of the test split against the train split."""

    Options = KnnOptions
    protocol_version = "1"
    execution_options = ("chunk_size", "precision")
    type_name = "knn"
    collective = True  # under torchrun the ranks search the training bank in shards

    def run(self, ctx: Any) -> TaskOutput | None:
        if ctx.dist is None:
            return super().run(ctx)
        opts = resolve_options(KnnOptions, self.options)

        def load() -> tuple[Any, Any, Any, Any]:
            x_train, y_train = ctx.features("train")
            x_test, y_test = ctx.features("test")
            self._check(x_train, y_train, x_test, y_test, opts)  # a data error fails every rank at once
            return x_train, y_train, x_test, y_test

        data = ctx.dist.load(load)
        return self.evaluate(*data, opts, device=ctx.device, seed=ctx.seed, dist=ctx.dist)

    @classmethod
    def _check(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any, opts: KnnOptions) -> int:
        num_classes = cls.num_classes(x_train, y_train, x_test, y_test)
        if max(opts.k) > len(x_train):
            raise DataError(f"knn: k={max(opts.k)} exceeds the {len(x_train)} training samples; lower k")
        return num_classes

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return f"top1@k{20 if 20 in options.k else options.k[0]}"

    @classmethod
    def evaluate(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        options: KnnOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
        dist: Any = None,
    ) -> TaskOutput | None:
        """Run the protocol on in-memory features [N, D] and integer labels (``seed`` is unused:
        the k-NN rule is deterministic; it is accepted so every task is called alike).

        ``dist``: a :class:`clbench.distributed.CellGroup` (all ranks call this together, each
        passing the whole training set and reading its shard): the search is split across the
        ranks; rank 0 returns the output, the other ranks None.
        """
        from ..metrics.classification import topk_hits
        from ..metrics.knn import knn_predict, knn_predict_from_neighbours
        from ..stats.samples import task_samples

        opts = resolve_options(KnnOptions, options)
        num_classes = cls._check(x_train, y_train, x_test, y_test, opts)
        search: dict[str, Any] = {}  # which similarity pass ran, candidates per row
        t0 = time.perf_counter()
        y_test = np.asarray(y_test)
        if dist is not None and dist.active:
            from ..distributed import knn_neighbours_on_ranks

            found = knn_neighbours_on_ranks(
                dist, x_train, x_test, max(opts.k), chunk_size=opts.chunk_size, device=device,
                precision=opts.precision, stats=search,
            )
            if found is None:  # a rank other than 0: rank 0 votes and returns the result
                return None
            pred = knn_predict_from_neighbours(
                *found, np.asarray(y_train), ks=opts.k, temperature=opts.temperature, num_classes=num_classes,
                chunk_size=opts.chunk_size, device=device,
            )
        else:
            pred = knn_predict(
                x_train,
                np.asarray(y_train),
                x_test,
                ks=opts.k,
                temperature=opts.temperature,
                num_classes=num_classes,
                chunk_size=opts.chunk_size,
                device=device,
                precision=opts.precision,
                stats=search,
            )
        fit_s = time.perf_counter() - t0
        metrics: dict[str, float] = {}
        hits: dict[str, np.ndarray] = {}  # per test sample, for CIs and paired tests
        n5 = min(5, num_classes)
        for k in opts.k:
            hits[f"top1@k{k}"] = topk_hits(pred[k], y_test, 1)
            hits[f"top5@k{k}"] = topk_hits(pred[k], y_test, n5)
            metrics[f"top1@k{k}"] = float(hits[f"top1@k{k}"].mean())
            metrics[f"top5@k{k}"] = float(hits[f"top5@k{k}"].mean())
        details = {
            "num_classes": num_classes,
            "n_train": len(x_train),
            "n_test": len(x_test),
            "dim": int(np.shape(x_train)[1]),
            "temperature": opts.temperature,
            "similarity_pass": search["precision"],
            "candidates_per_row": round(search["candidates_per_row"], 2),
            "fp32_redone_rows": search["fp32_redone_rows"],
        }
        if dist is not None:  # torchrun: the shards each rank searched, or why rank 0 searched alone
            details["distributed"] = (
                {"world_size": dist.world_size, "shards": search["shards"]} if dist.active
                else {"world_size": 1, "note": dist.note}
            )
        if num_classes < 5:
            details["note"] = f"{num_classes} classes: top5 is top-{num_classes} accuracy (always 1)"
        samples = task_samples("correct", hits, {name: ("mean", [name]) for name in hits})
        return TaskOutput(metrics, cls.main_metric(opts), details, {"fit_s": fit_s}, samples=samples)
