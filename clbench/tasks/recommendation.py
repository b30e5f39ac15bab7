"""``recommendation``: full-ranking Recall@K and NDCG@K from user and item embeddings.

The LightGCN / XSimGCL protocol on an ``interactions`` dataset: the encoder embeds the
``users`` and ``items`` splits (usually the ``precomputed`` encoder), every user with a test
interaction scores all items (inner product, or cosine with ``score: cosine``), the user's
training items are masked, and the top ``max(ks)`` items give ``recall@K`` and ``ndcg@K``
(headline ``recall@20`` when 20 is among ``ks``, else the first K). Users are scored in chunks of
``chunk_size``. The metrics live in :func:`clbench.metrics.recommendation.topk_metrics`.

>>> import numpy as np
>>> e = np.eye(3); test = np.array([[0, 0], [1, 1], [2, 2]]); train = np.array([[0, 1]])
>>> RecommendationTask.evaluate(e, e, train, test, {"ks": [1]}).metrics["recall@1"]
1.0
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from ..stats.samples import task_samples
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class RecommendationOptions:
    ks: list[int] = option([10, 20, 50], "cut-offs K")
    score: Literal["dot", "cosine"] = option("dot", "user-item score")
    chunk_size: int = option(1024, "users scored per block")

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1 or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks: distinct positive integers expected, got {self.ks}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class RecommendationTask(Task):
    """Full-ranking Recall@K and NDCG@K of user and item embeddings, training items masked."""

    Options = RecommendationOptions
    protocol_version = "1"
    execution_options = ("chunk_size",)
    dataset_kinds = ("interactions",)
    splits = ("users", "items")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return f"recall@{20 if 20 in options.ks else options.ks[0]}"

    def run(self, ctx: TaskContext) -> TaskOutput:
        users, _ = ctx.features("users")
        items, _ = ctx.features("items")
        train, test = ctx.dataset.interactions()
        return self.evaluate(users, items, train, test, self.options, device=ctx.device, seed=ctx.seed)

    @classmethod
    def evaluate(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        train: np.ndarray,
        test: np.ndarray,
        options: RecommendationOptions | dict[str, Any] | None = None,
        *,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        """Score embeddings users [U, D], items [I, D] on (user, item) index pairs [M, 2]."""
        from ..metrics.recommendation import topk_metrics

        opts = resolve_options(RecommendationOptions, options)
        users, items = np.asarray(users), np.asarray(items)
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise DataError(f"recommendation: user {users.shape} and item {items.shape} embeddings must "
                            "be matrices of one width")
        t0 = time.perf_counter()
        per_user: dict[str, np.ndarray] = {}
        try:
            out = topk_metrics(users, items, train, test, ks=opts.ks, score=opts.score, chunk=opts.chunk_size,
                               device=device, per_user=True, user_scores=per_user)
        except ValueError as err:
            raise DataError(f"recommendation: {err}") from None
        n_eval = int(out.pop("users"))
        details = {
            "users": len(users), "items": len(items), "evaluated_users": n_eval,
            "train_interactions": len(train), "test_interactions": len(test),
        }
        if max(opts.ks) > len(items):
            details["note"] = f"K above the {len(items)} items is cut to {len(items)}"
        # every metric is a mean over evaluated users: CIs resample users
        samples = task_samples("per_query", per_user, {key: ("mean", [key]) for key in per_user})
        return TaskOutput(out, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
                          samples=samples)
