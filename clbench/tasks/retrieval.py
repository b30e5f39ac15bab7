"""Dense retrieval: embed queries and corpus, exact top-k search, TREC metrics (as MTEB reports).

The protocol matches MTEB's retrieval evaluation: exact search over the whole corpus with the
encoder's similarity (cosine unless the encoder says ``dot``), the top ``max(k_values)``
documents of each judged query scored with pytrec_eval's definitions (see
:mod:`clbench.metrics.retrieval`). As in MTEB, a document whose id equals the query id is kept
unless ``ignore_identical_ids`` is set (MTEB sets it per task, e.g. ArguAna, Quora); it is then
dropped from the retrieved list, which may leave ``max(k_values) - 1`` documents.

Ties: within the retrieved list, equal scores are ordered by document id, descending (trec_eval's
rule, which MTEB inherits through pytrec_eval); documents tied exactly with the last one kept at
depth ``max(k_values)`` are chosen lowest corpus position first (MTEB leaves this to torch.topk),
which only a metric at that depth could notice.

Metric keys: ``ndcg@k``, ``map@k``, ``mrr@k``, ``recall@k``, ``precision@k``; main: ``ndcg@10``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..metrics.retrieval import DEFAULT_KS, retrieval_metrics, topk_search
from ..options import option
from ..stats.samples import task_samples
from .base import Task, TaskContext, TaskOutput

MAIN_METRIC = "ndcg@10"


@dataclasses.dataclass
class RetrievalOptions:
    # option() turns a list default into a default_factory: no instance shares a mutable default
    k_values: list[int] = option(list(DEFAULT_KS), "cut-offs for the metrics (10 is always computed)")
    chunk_size: int = option(32768, "corpus documents scored per block (bounds search memory)")
    similarity: Literal["auto", "cosine", "dot"] = option(
        "auto", "auto: the encoder's own similarity (cosine for most); cosine or dot to override"
    )
    ignore_identical_ids: bool = option(False, "drop a retrieved document whose id equals the query id (MTEB's flag)")

    def validate(self) -> None:
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ValueError("k_values: expected a non-empty list of positive integers")
        if self.chunk_size < 1:
            raise ValueError("chunk_size: expected a positive integer")


class RetrievalTask(Task):
    """nDCG@10 (and MAP, MRR, recall, precision at each k) of exact dense retrieval."""

    Options = RetrievalOptions
    protocol_version = "1"
    execution_options = ("chunk_size",)
    dataset_kinds = ("retrieval",)
    splits = ("queries", "corpus")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return MAIN_METRIC

    def run(self, ctx: TaskContext) -> TaskOutput:
        dataset = ctx.dataset
        qrels = getattr(dataset, "qrels", None)
        if qrels is None:
            raise DataError(f"dataset {getattr(dataset, 'name', '?')!r} has no qrels: not a retrieval dataset")
        q_split, d_split = dataset.split("queries"), dataset.split("corpus")
        if q_split.ids is None or d_split.ids is None:
            raise DataError(f"dataset {dataset.name!r}: retrieval splits need ids")
        q_emb, _ = ctx.features("queries")
        d_emb, _ = ctx.features("corpus")
        similarity = self.options.similarity
        if similarity == "auto":
            similarity = getattr(ctx.encoder, "similarity", "cosine")
        return self.evaluate(
            q_emb, list(q_split.ids), d_emb, list(d_split.ids), qrels,
            dataclasses.replace(self.options, similarity=similarity), device=ctx.device,
        )

    @classmethod
    def evaluate(
        cls,
        q_emb: np.ndarray,
        q_ids: Sequence[str],
        d_emb: np.ndarray,
        d_ids: Sequence[str],
        qrels: Mapping[str, Mapping[str, int]],
        options: RetrievalOptions | None = None,
        *,
        device: str = "cpu",
    ) -> TaskOutput:
        """Score in-memory embeddings: queries [Q, D] named by ``q_ids``, documents [N, D] by ``d_ids``.

        Only queries with judgements in ``qrels`` are searched and scored; ``similarity="auto"``
        means cosine here (there is no encoder to ask).

        >>> import numpy as np
        >>> q = np.eye(2, dtype=np.float32); d = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
        >>> out = RetrievalTask.evaluate(q, ["a", "b"], d, ["x", "y", "z"], {"a": {"x": 1}, "b": {"z": 1}})
        >>> out.metrics["mrr@10"]
        0.75
        """
        opts = options if options is not None else RetrievalOptions()
        similarity = "cosine" if opts.similarity == "auto" else opts.similarity
        ks = sorted(set(opts.k_values) | {10})
        q_emb, d_emb = np.asarray(q_emb), np.asarray(d_emb)
        if len(q_ids) != len(q_emb) or len(d_ids) != len(d_emb):
            raise ValueError(
                f"{len(q_emb)} query and {len(d_emb)} document embeddings for {len(q_ids)} and {len(d_ids)} ids"
            )
        keep = np.array([i for i, qid in enumerate(q_ids) if qid in qrels], dtype=np.int64)
        if len(keep) == 0:
            raise DataError("no query has judgements in the qrels")
        kept_ids = [q_ids[i] for i in keep]
        t0 = time.perf_counter()
        scores, indices = topk_search(
            q_emb[keep], d_emb, max(ks), chunk_size=opts.chunk_size, device=device, similarity=similarity
        )
        search_s = time.perf_counter() - t0
        if opts.ignore_identical_ids:
            doc_pos = {d: i for i, d in enumerate(d_ids)}
            for row, qid in enumerate(kept_ids):
                same = doc_pos.get(qid)
                if same is not None:
                    indices[row][indices[row] == same] = -1
        result = retrieval_metrics((scores, indices), qrels, ks, query_ids=kept_ids, doc_ids=d_ids)
        details = {
            "num_queries": len(kept_ids),
            "num_documents": len(d_ids),
            "similarity": similarity,
            "top_k": int(max(ks)),
            "per_query": {
                "query_ids": result.query_ids,
                **{name: [round(float(v), 6) for v in values] for name, values in result.per_query.items()
                   if name in (MAIN_METRIC, f"recall@{max(ks)}")},
            },
        }
        # every metric is a mean over queries: bootstrap CIs resample queries
        samples = task_samples(
            "per_query", result.per_query, {name: ("mean", [name]) for name in result.per_query}
        )
        return TaskOutput(
            metrics=result.metrics, main_metric=MAIN_METRIC, details=details,
            timings={"search_s": search_s, "fit_s": time.perf_counter() - t0}, samples=samples,
        )


__all__ = ["RetrievalOptions", "RetrievalTask"]
