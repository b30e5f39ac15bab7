"""Full-ranking top-K recommendation metrics (the LightGCN / XSimGCL protocol).

For each user with at least one test interaction, every item is scored (``user . item``, or the
cosine), the user's training items are masked out, and the top ``max(K)`` items are compared with
the test items: ``Recall@K = hits / |test items|`` and ``NDCG@K = DCG / IDCG`` with binary gains,
``DCG = sum_{hit at rank r} 1 / log2(r + 2)`` and the ideal DCG over ``min(K, |test items|)``
ranks. Users are processed in chunks, so the score matrix never exceeds ``chunk`` rows.

>>> import numpy as np
>>> users = np.eye(2); items = np.eye(2)          # user u likes item u
>>> test = np.array([[0, 0], [1, 1]]); train = np.zeros((0, 2), dtype=int)
>>> topk_metrics(users, items, train, test, ks=[1])
{'recall@1': 1.0, 'ndcg@1': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["topk_metrics"]


def _pairs(p: np.ndarray, n_users: int, n_items: int, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.int64).reshape(-1, 2)
    if len(p) and (p[:, 0].min() < 0 or p[:, 0].max() >= n_users or p[:, 1].min() < 0 or p[:, 1].max() >= n_items):
        raise ValueError(f"{what} interactions index users or items out of range")
    return p


def topk_metrics(
    users: np.ndarray,
    items: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    *,
    ks: Sequence[int] = (10, 20, 50),
    score: str = "dot",
    chunk: int = 1024,
    device: str = "cpu",
    per_user: bool = False,
    user_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users with test items.

    ``users`` [U, D] and ``items`` [I, D] are embeddings; ``train`` and ``test`` are integer
    (user index, item index) pairs [M, 2]. With ``per_user`` the result also holds ``"users"``,
    the number of users evaluated. Pass a dict as ``user_scores`` to receive each metric per
    evaluated user (arrays in user-index order; their means are the returned metrics).
    """
    import torch

    n_users, n_items = len(users), len(items)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    kmax = min(ks[-1], n_items)
    train = _pairs(train, n_users, n_items, "training")
    test = _pairs(test, n_users, n_items, "test")
    u = torch.as_tensor(np.asarray(users, dtype=np.float32), device=device)
    it = torch.as_tensor(np.asarray(items, dtype=np.float32), device=device)
    if score == "cosine":
        u = torch.nn.functional.normalize(u, dim=1)
        it = torch.nn.functional.normalize(it, dim=1)
    elif score != "dot":
        raise ValueError(f"score must be 'dot' or 'cosine', got {score!r}")
    test = np.unique(test, axis=0)
    eval_users = np.unique(test[:, 0])
    if len(eval_users) == 0:
        raise ValueError("no user has a test interaction")
    # CSR-like lookups: sorted pairs and per-user offsets
    def offsets(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = p[np.lexsort((p[:, 1], p[:, 0]))]
        return p, np.searchsorted(p[:, 0], np.arange(n_users + 1))

    tr, tr_off = offsets(train)
    te, te_off = offsets(test)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    ideal = np.cumsum(discounts)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    each: dict[str, list[float]] = {key: [] for key in sums}
    for s in range(0, len(eval_users), chunk):
        batch = eval_users[s : s + chunk]
        scores = u[torch.as_tensor(batch, device=device)] @ it.T
        rows, cols = [], []
        for r, user in enumerate(batch):
            mine = tr[tr_off[user] : tr_off[user + 1], 1]
            rows.append(np.full(len(mine), r))
            cols.append(mine)
        if rows:
            rr, cc = np.concatenate(rows), np.concatenate(cols)
            if len(rr):
                scores[torch.as_tensor(rr, device=device), torch.as_tensor(cc, device=device)] = -torch.inf
        top = torch.topk(scores, kmax, dim=1).indices.cpu().numpy()
        for r, user in enumerate(batch):
            truth = te[te_off[user] : te_off[user + 1], 1]
            hit = np.isin(top[r], truth)
            for k in ks:
                kk = min(k, kmax)
                h = hit[:kk]
                recall = h.sum() / len(truth)
                ndcg = float(discounts[:kk][h].sum() / ideal[min(kk, len(truth)) - 1])
                sums[f"recall@{k}"] += recall
                sums[f"ndcg@{k}"] += ndcg
                each[f"recall@{k}"].append(float(recall))
                each[f"ndcg@{k}"].append(ndcg)
    out = {key: float(v / len(eval_users)) for key, v in sums.items()}
    if user_scores is not None:
        user_scores.update({key: np.asarray(v, dtype=np.float64) for key, v in each.items()})
    if per_user:
        out["users"] = float(len(eval_users))
    return out
