"""Weighted k-nearest-neighbour classification, the rule of InstDisc (Wu et al., 2018) and DINO.

Features are L2-normalised; each test sample takes its ``k`` most cosine-similar training samples,
and each neighbour votes for its class with weight ``exp(similarity / T)``. The class with the
largest total vote wins (ties go to the lower class index).

The similarity matrix is never materialised: test rows are processed in chunks, each chunk is one
float32 matrix multiply against the whole training set followed by one exact top-k for the largest
``k`` (block-pruned on CPU, see :func:`_topk_unsorted`); the smaller ``k`` reuse the first
columns of that sorted neighbour list.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centers = rng.normal(size=(3, 16))
>>> y = rng.integers(0, 3, size=200)
>>> x = centers[y] + 0.3 * rng.normal(size=(200, 16))
>>> pred = knn_predict(x[:150], y[:150], x[150:], ks=[5, 20], temperature=0.07, num_classes=3)
>>> sorted(pred), pred[5].shape
([5, 20], (50, 3))
>>> float((pred[5][:, 0] == y[150:]).mean())
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .classification import topk_accuracy

__all__ = ["knn_metrics", "knn_predict"]

#: similarity-block size (elements) per chunk when ``chunk_size`` is not given: about 64 MB on a
#: CPU (keeps the block near the caches' reach; measured fastest on 50k-row training sets), 512 MB
#: on a GPU (fewer, larger kernels)
_BLOCK_ELEMENTS = {"cpu": 2**24, "cuda": 2**27}


def _as_float32_tensor(x: Any, device: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    # a copy only when needed (other dtype, non-contiguous, or read-only such as a memory map)
    arr = np.require(np.asarray(x), dtype=np.float32, requirements=["C", "W"])
    return torch.from_numpy(arr).to(device)


def _topk_unsorted(sims: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` largest entries of each row of ``sims`` [R, N] and their columns, in no order.

    A plain ``topk`` over N columns is several times slower on a CPU than the matrix multiply
    feeding it. Instead the columns are cut into ``L`` strided slices (block ``j`` holds columns
    ``j, j + B, j + 2B, ...``), so one vectorised elementwise max over the slices gives every
    block's maximum. The k largest entries lie in the k blocks with the largest maxima (a block
    outside them is beaten by k blocks, each holding an entry larger than its maximum), so the
    exact top-k is a ``topk`` over those ``k * L`` candidates (plus the few trailing columns).
    """
    import torch

    r, n = sims.shape
    slices = 16 if k <= 64 else 8
    blocks = n // slices
    if sims.device.type != "cpu" or blocks < 4 * k:
        return sims.topk(k, dim=1, sorted=False)
    body = sims[:, : blocks * slices].view(r, slices, blocks)
    _, best = body.amax(dim=1).topk(k, dim=1, sorted=False)  # [r, k] block ids
    cand = body.gather(2, best[:, None, :].expand(r, slices, k)).reshape(r, slices * k)
    cols = (torch.arange(slices, device=sims.device)[:, None] * blocks + best[:, None, :]).reshape(r, -1)
    if blocks * slices < n:
        cand = torch.cat([cand, sims[:, blocks * slices :]], dim=1)
        tail = torch.arange(blocks * slices, n, device=sims.device).expand(r, -1)
        cols = torch.cat([cols, tail], dim=1)
    values, pos = cand.topk(k, dim=1, sorted=False)
    return values, cols.gather(1, pos)


def _check_inputs(train_x: Any, train_y: Any, test_x: Any) -> tuple[int, int, int]:
    if len(train_x.shape) != 2 or len(test_x.shape) != 2:
        raise ValueError(f"features must be 2-D [N, D]; got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train features have {train_x.shape[1]} dimensions, test features {test_x.shape[1]}"
        )
    if len(train_y) != train_x.shape[0]:
        raise ValueError(f"{train_x.shape[0]} train features but {len(train_y)} train labels")
    return train_x.shape[0], test_x.shape[0], train_x.shape[1]


def knn_predict(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
    topn: int = 5,
) -> dict[int, np.ndarray]:
    """Ranked class predictions of the weighted k-NN rule, for each ``k`` in ``ks``.

    Args:
        train_x, test_x: features [N, D] and [M, D] (NumPy arrays or tensors; any scale: they are
            L2-normalised here).
        train_y: integer labels [N] in ``[0, num_classes)``.
        ks: the neighbourhood sizes; one ``topk`` for ``max(ks)`` serves them all.
        temperature: ``T`` in the vote weight ``exp(cos_sim / T)``.
        num_classes: number of classes (default: ``max(train_y) + 1``).
        chunk_size: test rows per similarity block (default: sized to ~64 MB on CPU, ~512 MB on GPU).
        device: torch device for the computation (``"cuda"`` to use a GPU).
        topn: how many ranked classes to return per row (capped at ``num_classes``).

    Returns:
        ``{k: int64 array [M, min(topn, num_classes)]}``: class indices, best first.
    """
    import torch

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n_train, n_test, _ = _check_inputs(train_x, train_y, test_x)
    if ks[-1] > n_train:
        raise ValueError(f"k={ks[-1]} exceeds the number of training samples ({n_train})")
    labels_np = train_y.cpu().numpy() if isinstance(train_y, torch.Tensor) else np.asarray(train_y)
    if not np.issubdtype(labels_np.dtype, np.integer):
        raise ValueError(f"train labels must be integers, got dtype {labels_np.dtype}")
    if num_classes is None:
        num_classes = int(labels_np.max()) + 1
    if labels_np.min() < 0 or labels_np.max() >= num_classes:
        raise ValueError(f"train labels must lie in [0, {num_classes})")
    n_out = min(topn, num_classes)
    dev = torch.device(device)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS.get(dev.type, 2**24) // max(n_train, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows = max(1, min(chunk_size, n_test))

    with torch.inference_mode():
        train = torch.nn.functional.normalize(_as_float32_tensor(train_x, dev), dim=1)
        labels = torch.from_numpy(labels_np.astype(np.int64)).to(dev)
        test = torch.nn.functional.normalize(_as_float32_tensor(test_x, dev), dim=1)
        kmax = ks[-1]
        sims = torch.empty(rows, n_train, device=dev, dtype=torch.float32)
        out = {k: torch.empty(n_test, n_out, dtype=torch.int64, device=dev) for k in ks}
        for start in range(0, n_test, rows):
            stop = min(start + rows, n_test)
            block = sims[: stop - start]
            torch.mm(test[start:stop], train.T, out=block)
            top_sim, top_idx = _topk_unsorted(block, kmax)
            top_sim, order = top_sim.sort(dim=1, descending=True)
            top_labels = labels[top_idx.gather(1, order)]
            # dividing every weight of a row by exp(max_sim / T) leaves its ranking unchanged and
            # keeps exp() finite for any T
            weights = ((top_sim - top_sim[:, :1]) / temperature).exp_()
            for k in ks:
                votes = torch.zeros(stop - start, num_classes, device=dev, dtype=torch.float32)
                votes.scatter_add_(1, top_labels[:, :k], weights[:, :k])
                ranked = votes.sort(dim=1, descending=True, stable=True).indices[:, :n_out]
                out[k][start:stop] = ranked
        return {k: v.cpu().numpy() for k, v in out.items()}


def knn_metrics(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    device: str = "cpu",
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy of :func:`knn_predict` for each ``k``: ``{k: {"top1", "top5"}}``.

    With fewer than five classes ``top5`` is the top-``num_classes`` accuracy (that is, 1.0).
    """
    test_y = np.asarray(test_y)
    if num_classes is None:
        num_classes = int(max(np.max(train_y), np.max(test_y))) + 1
    pred = knn_predict(
        train_x,
        train_y,
        test_x,
        ks=ks,
        temperature=temperature,
        num_classes=num_classes,
        chunk_size=chunk_size,
        device=device,
    )
    n5 = min(5, num_classes)
    return {
        k: {"top1": topk_accuracy(p, test_y, 1), "top5": topk_accuracy(p, test_y, n5)}
        for k, p in pred.items()
    }
