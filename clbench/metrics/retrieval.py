"""Dense retrieval: exact chunked top-k search and the TREC ranking metrics, as pure functions.

:func:`topk_search` finds, for every query, the ``k`` best documents by cosine or dot-product
similarity without ever holding the full query x corpus score matrix: it scores one block of
(at most ``query_chunk_size`` queries) x (``chunk_size`` documents) at a time and merges each
block's top-k into a running top-k.

:func:`retrieval_metrics` scores a run against graded judgements (qrels) with the definitions
``pytrec_eval`` (trec_eval 9) uses, which is also what MTEB reports:

- ranking: documents sorted by score, descending; **ties broken by document id, descending**
  (string order, as trec_eval's ``strcmp``), so a run's metrics never depend on input order;
- a document is *relevant* when its judgement is >= 1 (trec_eval's default relevance level);
  unjudged documents are non-relevant;
- ``precision@k`` = relevant in the top k / k (k even when fewer documents were retrieved);
- ``recall@k`` = relevant in the top k / relevant judged (0 when the query has none);
- ``map@k`` (trec_eval ``map_cut``) = sum of precision at each relevant rank <= k / relevant judged;
- ``ndcg@k`` (trec_eval ``ndcg_cut``): gain = the judgement itself (linear, not 2^rel - 1;
  negative judgements gain 0), discount log2(rank + 1); the ideal ranking sorts the positive
  judgements; a query without positive judgements scores 0;
- ``mrr@k`` as MTEB computes it: 1 / rank of the first document judged > 0 within the top k.

Only queries present in both the qrels and the run are scored (as pytrec_eval does); averages
are plain means over those queries.

>>> qrels = {"q1": {"d1": 2, "d2": 1}}
>>> run = {"q1": {"d1": 0.2, "d3": 0.9, "d2": 0.1}}
>>> r = retrieval_metrics(run, qrels, ks=(1, 3))
>>> r.metrics["precision@1"], round(r.metrics["mrr@3"], 3), r.metrics["recall@3"]
(0.0, 0.5, 1.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 100, 1000)
METRIC_NAMES = ("ndcg", "map", "mrr", "recall", "precision")


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------
def topk_search(
    q: Any,
    d: Any,
    k: int,
    *,
    chunk_size: int = 32768,
    query_chunk_size: int = 1024,
    device: str = "cpu",
    similarity: str = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` documents of ``d`` [N, D] for each query of ``q`` [Q, D].

    Returns ``(scores, indices)``, float32 and int64 arrays of shape [Q, min(k, N)], each row
    sorted by score descending (equal scores: lower document index first). (The metrics re-sort
    equal scores by document id, as trec_eval does.) ``similarity`` is
    ``"cosine"`` (rows L2-normalised first; a zero row scores 0) or ``"dot"``.

    Peak extra memory is one score block of ``query_chunk_size x chunk_size`` floats plus the
    running top-k (``Q x k``); ``d`` is read chunk by chunk (a memory-mapped array stays on disk
    until its chunk is scored). Documents tied at the k-th score are kept lowest index first,
    so the result is the same for every chunk size and equals a stable argsort of the full
    score matrix.

    >>> import numpy as np
    >>> q = np.array([[1.0, 0.0]], dtype=np.float32)
    >>> d = np.array([[0.0, 1.0], [2.0, 0.1], [1.0, 1.0]], dtype=np.float32)
    >>> scores, idx = topk_search(q, d, 2)
    >>> idx.tolist()
    [[1, 2]]
    """
    import torch

    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity: expected 'cosine' or 'dot', got {similarity!r}")
    if k < 1:
        raise ValueError(f"k: expected a positive integer, got {k}")
    if chunk_size < 1 or query_chunk_size < 1:
        raise ValueError("chunk_size and query_chunk_size must be positive")
    q_t = _as_tensor(q, device)
    if q_t.ndim != 2 or np.ndim(d) != 2:
        raise ValueError(f"expected 2-d query and document arrays, got {tuple(q_t.shape)} and {np.shape(d)}")
    n_docs, dim = int(np.shape(d)[0]), int(np.shape(d)[1])
    if q_t.shape[1] != dim:
        raise ValueError(f"query dimension {q_t.shape[1]} != document dimension {dim}")
    n_q = q_t.shape[0]
    k = min(k, n_docs)
    if n_q == 0 or k == 0:
        return np.zeros((n_q, k), np.float32), np.zeros((n_q, k), np.int64)
    if similarity == "cosine":
        q_t = _normalise(q_t)

    best_s = torch.full((n_q, k), float("-inf"), dtype=torch.float32, device=device)
    best_i = torch.full((n_q, k), -1, dtype=torch.int64, device=device)
    with torch.inference_mode():
        for start in range(0, n_docs, chunk_size):
            block = _as_tensor(d[start : start + chunk_size], device)
            if similarity == "cosine":
                block = _normalise(block)
            kk = min(k, block.shape[0])
            for qs in range(0, n_q, query_chunk_size):
                scores = q_t[qs : qs + query_chunk_size] @ block.T
                s, i = _topk_lowest_index(scores, None, kk)
                del scores
                s = torch.cat([best_s[qs : qs + query_chunk_size], s], dim=1)
                i = torch.cat([best_i[qs : qs + query_chunk_size], i + start], dim=1)
                s, i = _topk_lowest_index(s, i, k)
                best_s[qs : qs + query_chunk_size] = s
                best_i[qs : qs + query_chunk_size] = i
            del block
    scores_np, idx_np = best_s.cpu().numpy(), best_i.cpu().numpy()
    # the selection is exact; now order ties inside the top k by document index as well
    order = np.lexsort((idx_np, -scores_np), axis=1)
    return np.take_along_axis(scores_np, order, 1), np.take_along_axis(idx_np, order, 1)


def _topk_lowest_index(scores, idx, k: int):
    """Row-wise top-k of ``scores`` [R, M] (in no particular order); among scores tied at the
    k-th place the lowest ``idx`` (column position when ``idx`` is None) is kept, so the result never
    depends on how the corpus was chunked."""
    import torch

    m = scores.shape[1]
    if m <= k:  # everything is kept
        sel = torch.arange(m, device=scores.device).expand(len(scores), -1) if idx is None else idx
        return scores, sel
    # one candidate beyond the k-th shows whether a tie was cut: the (k+1)-th score equals the k-th
    if scores.device.type == "cpu" and k > 128:  # for large k NumPy's introselect beats torch.topk on CPU
        arr = scores.numpy()
        # a few rows at a time: argpartition returns int64 positions for the whole row (copy the
        # k + 1 kept, so that buffer is freed at once)
        part = np.concatenate([
            np.argpartition(arr[r : r + 128], m - k - 1, axis=1)[:, m - k - 1 :].copy()
            for r in range(0, len(arr), 128)
        ])
        pos = torch.from_numpy(np.ascontiguousarray(part[:, 1:]))
        s = torch.gather(scores, 1, pos)
        nxt = torch.gather(scores, 1, torch.from_numpy(np.ascontiguousarray(part[:, :1])))[:, 0]
        kth = s.amin(dim=1)  # (min(dim) with indices is ~1000x slower on CPU here)
    else:
        s, pos = torch.topk(scores, k + 1, dim=1, largest=True, sorted=True)
        nxt, kth = s[:, k], s[:, k - 1]
        s, pos = s[:, :k].contiguous(), pos[:, :k]
    cut = (nxt == kth) & torch.isfinite(kth)
    sel = pos if idx is None else torch.gather(idx, 1, pos)
    if bool(cut.any()):  # rare with real embeddings: redo those rows with a full stable sort
        rows = cut.nonzero()[:, 0]
        sub_s = scores[rows]
        if idx is None:
            sub_i = torch.arange(m, device=scores.device).expand(len(rows), -1)
        else:
            by_index = torch.argsort(idx[rows], dim=1, stable=True)
            sub_s = torch.gather(sub_s, 1, by_index)
            sub_i = torch.gather(idx[rows], 1, by_index)
        best = torch.sort(sub_s, dim=1, descending=True, stable=True).indices[:, :k]
        s[rows] = torch.gather(sub_s, 1, best)
        sel[rows] = torch.gather(sub_i, 1, best)
    return s, sel


def _as_tensor(x: Any, device: str):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32)
    arr = np.asarray(x)
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # memory-mapped read-only chunks: torch wants writeable memory
        arr = arr.copy()
    return torch.from_numpy(arr).to(device)


def _normalise(x):
    import torch

    return torch.nn.functional.normalize(x, p=2, dim=1, eps=1e-12)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RetrievalScores:
    """Mean metrics (``"ndcg@10"`` -> value) and per-query values aligned with ``query_ids``."""

    metrics: dict[str, float]
    per_query: dict[str, np.ndarray]
    query_ids: list[str]

    def query(self, qid: str) -> dict[str, float]:
        """All metrics of one query."""
        i = self.query_ids.index(qid)
        return {name: float(v[i]) for name, v in self.per_query.items()}


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """The metric names :func:`retrieval_metrics` produces for ``ks``."""
    return [f"{m}@{k}" for m in METRIC_NAMES for k in _check_ks(ks)]


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]] | tuple[np.ndarray, np.ndarray],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    query_ids: Sequence[str] | None = None,
    doc_ids: Sequence[str] | None = None,
) -> RetrievalScores:
    """nDCG, MAP, MRR, recall and precision at each k in ``ks`` (definitions in the module doc).

    ``run`` is either ``{qid: {docid: score}}`` or ranked arrays ``(scores, indices)`` of shape
    [Q, K] (as :func:`topk_search` returns) with ``query_ids`` naming the rows and ``doc_ids``
    the document indices (an index < 0 marks an empty slot). Either way, each query's documents
    are re-sorted by score descending, then document id descending, exactly as trec_eval does.
    """
    ks = _check_ks(ks)
    depth = max(ks)
    qids: list[str] = []
    rows: list[np.ndarray] = []  # per query: judgement of each ranked document (0 if unjudged)
    if isinstance(run, Mapping):
        for qid, docs in run.items():
            judged = qrels.get(qid)
            if judged is None:
                continue
            ranked = sorted(docs.items(), key=lambda item: (float(item[1]), item[0]), reverse=True)[:depth]
            qids.append(qid)
            rows.append(np.array([judged.get(doc, 0) for doc, _ in ranked], dtype=np.float64))
    else:
        scores, indices = (np.asarray(a) for a in run)
        if query_ids is None or doc_ids is None:
            raise ValueError("ranked arrays need query_ids and doc_ids")
        if scores.shape != indices.shape or scores.ndim != 2 or len(query_ids) != scores.shape[0]:
            raise ValueError(
                f"scores {scores.shape}, indices {indices.shape} and {len(query_ids)} query ids do not match"
            )
        doc_arr = np.asarray(list(doc_ids), dtype=object)
        # rank of each document id in string order: ties then break on it without string compares
        id_rank = np.empty(len(doc_arr), dtype=np.int64)
        id_rank[np.argsort(np.asarray(list(doc_ids), dtype=str), kind="stable")] = np.arange(len(doc_arr))
        valid = indices >= 0
        safe = np.where(valid, indices, 0)
        s = np.where(valid, scores.astype(np.float64), -np.inf)
        order = np.lexsort((-np.where(valid, id_rank[safe], -1), -s), axis=1)[:, :depth]
        ranked_idx = np.take_along_axis(safe, order, 1)
        ranked_ok = np.take_along_axis(valid, order, 1)
        for row, qid in enumerate(query_ids):
            judged = qrels.get(qid)
            if judged is None:
                continue
            docs = doc_arr[ranked_idx[row][ranked_ok[row]]]
            qids.append(qid)
            rows.append(np.array([judged.get(doc, 0) for doc in docs], dtype=np.float64))
    if not qids:
        raise ValueError("no query of the run has judgements in the qrels")
    return _score(qids, rows, qrels, ks)


def _check_ks(ks: Sequence[int]) -> list[int]:
    out = sorted({int(k) for k in ks})
    if not out or out[0] < 1:
        raise ValueError(f"ks: expected positive integers, got {list(ks)}")
    return out


def _score(qids: list[str], rows: list[np.ndarray], qrels: Mapping[str, Mapping[str, int]], ks: list[int]):
    depth = max(ks)
    n = len(qids)
    rel = np.zeros((n, depth), dtype=np.float64)
    for i, r in enumerate(rows):
        rel[i, : len(r)] = r
    hits = rel >= 1  # trec_eval's relevance level for map / recall / precision
    cum_hits = np.cumsum(hits, axis=1)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    prec_at_rank = cum_hits / ranks
    ap_terms = np.cumsum(np.where(hits, prec_at_rank, 0.0), axis=1)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(np.maximum(rel, 0.0) * discount, axis=1)  # negative judgements gain 0

    num_rel = np.zeros(n)
    idcg = np.zeros((n, depth))
    for i, qid in enumerate(qids):
        judged = np.array(list(qrels[qid].values()), dtype=np.float64)
        num_rel[i] = np.count_nonzero(judged >= 1)
        ideal = np.sort(judged[judged > 0])[::-1][:depth]
        idcg[i, : len(ideal)] = ideal
    idcg = np.cumsum(idcg * discount, axis=1)

    # MTEB's MRR: first document judged > 0
    positive = rel > 0
    first = np.where(positive.any(axis=1), positive.argmax(axis=1), depth)

    per_query: dict[str, np.ndarray] = {}
    safe_rel = np.where(num_rel > 0, num_rel, 1.0)
    for k in ks:
        c = k - 1
        per_query[f"ndcg@{k}"] = np.where(idcg[:, c] > 0, dcg[:, c] / np.where(idcg[:, c] > 0, idcg[:, c], 1.0), 0.0)
        per_query[f"map@{k}"] = np.where(num_rel > 0, ap_terms[:, c] / safe_rel, 0.0)
        per_query[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        per_query[f"recall@{k}"] = np.where(num_rel > 0, cum_hits[:, c] / safe_rel, 0.0)
        per_query[f"precision@{k}"] = cum_hits[:, c] / k
    names = [f"{m}@{k}" for m in METRIC_NAMES for k in ks]
    per_query = {name: per_query[name] for name in names}
    metrics = {name: float(v.mean()) for name, v in per_query.items()}
    return RetrievalScores(metrics=metrics, per_query=per_query, query_ids=qids)


__all__ = ["DEFAULT_KS", "RetrievalScores", "metric_keys", "retrieval_metrics", "topk_search"]
