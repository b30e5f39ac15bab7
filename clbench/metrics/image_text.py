"""Image-text metrics as pure functions: retrieval Recall@k both ways, and zero-shot scores.

Retrieval follows CLIP_benchmark after its multi-caption fix: each caption has exactly one image
(``caption_to_image[c]``), an image has one or more captions.

- text -> image: a caption query is a hit at k when its image is among the k best images;
- image -> text: an image query is a hit at k when **any** of its captions is among the k best
  captions.

Scores are cosine similarities (rows L2-normalised; ``similarity="dot"`` uses raw dot products).
Ties are broken towards the lower index (a stable descending sort), the rule
:func:`clbench.metrics.classification.topk_accuracy` uses. The full score matrix is never held:
:func:`image_text_ranks` scores ``chunk_size`` queries at a time and keeps only the rank of each
query's best positive, so memory is one ``chunk_size x N`` block.

>>> import numpy as np
>>> img = np.eye(3, dtype=np.float32)
>>> txt = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0]], dtype=np.float32)
>>> m = image_text_recall(img, txt, np.array([0, 1, 2, 0]), ks=(1,))
>>> m["text_to_image_R@1"], m["image_to_text_R@1"]
(1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .retrieval import _as_tensor

__all__ = ["image_text_ranks", "image_text_recall", "recall_from_ranks", "recall_metrics", "zero_shot_weights"]

DEFAULT_KS = (1, 5, 10)


def _inverse_norms(t):
    """1 / L2 norm of each row (a zero row gets 0: it scores 0 against everything)."""
    n = t.norm(dim=1)
    return (1.0 / n.clamp(min=1e-12)) * (n > 0)


def _check_mapping(caption_to_image: np.ndarray, n_images: int, n_captions: int) -> np.ndarray:
    c2i = np.asarray(caption_to_image)
    if c2i.ndim != 1 or len(c2i) != n_captions:
        raise ValueError(f"caption_to_image: expected {n_captions} image indices, got shape {c2i.shape}")
    if not np.issubdtype(c2i.dtype, np.integer):
        raise ValueError(f"caption_to_image: expected integers, got {c2i.dtype}")
    if n_captions and (c2i.min() < 0 or c2i.max() >= n_images):
        raise ValueError(f"caption_to_image: indices must lie in [0, {n_images})")
    if len(np.unique(c2i)) != n_images:
        raise ValueError("caption_to_image: every image needs at least one caption")
    return c2i.astype(np.int64)


def image_text_ranks(
    image_emb: Any,
    text_emb: Any,
    caption_to_image: np.ndarray,
    *,
    chunk_size: int = 256,
    device: str = "cpu",
    similarity: str = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the best positive of each query: (text->image [T], image->text [I]).

    ``rank < k`` means a hit at k. A rank counts the candidates ordered before the best positive:
    those scoring higher, and those scoring equal at a lower index.
    """
    import torch

    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity: expected 'cosine' or 'dot', got {similarity!r}")
    if chunk_size < 1:
        raise ValueError("chunk_size: expected a positive integer")
    img = _as_tensor(image_emb, device)
    txt = _as_tensor(text_emb, device)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"expected [I, D] and [T, D] embeddings, got {tuple(img.shape)} and {tuple(txt.shape)}")
    n_img, n_txt = img.shape[0], txt.shape[0]
    c2i_np = _check_mapping(caption_to_image, n_img, n_txt)
    # cosine: scale each candidate column by its inverse norm (a query's own norm, the same along its
    # row, changes no ranking), so no normalised copy of the embeddings is ever made
    if similarity == "cosine":
        img_inv, txt_inv = _inverse_norms(img), _inverse_norms(txt)
    else:
        img_inv = txt_inv = None
    c2i = torch.as_tensor(c2i_np, device=device)
    # each image's captions as a padded [I, m] index matrix (padding: -1), for the image -> text pass
    counts = np.bincount(c2i_np, minlength=n_img)
    order = np.argsort(c2i_np, kind="stable")
    caps = np.full((n_img, int(counts.max())), -1, dtype=np.int64)
    caps[c2i_np[order], np.arange(n_txt) - np.repeat(np.cumsum(counts) - counts, counts)] = order
    caps_t = torch.as_tensor(caps, device=device)
    t2i = torch.empty(n_txt, dtype=torch.int64, device=device)
    i2t = torch.empty(n_img, dtype=torch.int64, device=device)
    with torch.inference_mode():
        img_pos = torch.arange(n_img, device=device)
        for s in range(0, n_txt, chunk_size):
            scores = txt[s : s + chunk_size] @ img.T  # [c, I]
            if img_inv is not None:
                scores *= img_inv[None, :]
            target = c2i[s : s + chunk_size, None]
            t2i[s : s + chunk_size] = _count_before(scores, scores.gather(1, target), img_pos, target)
            del scores
        txt_pos = torch.arange(n_txt, device=device)
        for s in range(0, n_img, chunk_size):
            scores = (txt @ img[s : s + chunk_size].T).T  # [c, T], without a transposed copy of txt
            scores = scores * txt_inv[None, :] if txt_inv is not None else scores
            mine = caps_t[s : s + chunk_size]  # [c, m]
            pos = scores.gather(1, mine.clamp(min=0)).masked_fill(mine < 0, float("-inf"))
            best = pos.max(1, keepdim=True).values
            # the lowest-index caption among the image's captions at the best positive score
            best_idx = torch.where((pos == best) & (mine >= 0), mine, n_txt).min(1, keepdim=True).values
            i2t[s : s + chunk_size] = _count_before(scores, best, txt_pos, best_idx)
            del scores
    return t2i.cpu().numpy(), i2t.cpu().numpy()


def _count_before(scores, best, positions, best_idx):
    """Per row: candidates scoring above ``best``, or equal to it at a lower position than ``best_idx``."""
    before = scores > best
    before |= (scores == best) & (positions[None, :] < best_idx)
    return before.sum(1)


def recall_from_ranks(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose best positive has rank < ``k``."""
    ranks = np.asarray(ranks)
    if len(ranks) == 0:
        raise ValueError("no queries to score")
    return float((ranks < k).mean())


def image_text_recall(
    image_emb: Any,
    text_emb: Any,
    caption_to_image: np.ndarray,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 256,
    device: str = "cpu",
    similarity: str = "cosine",
) -> dict[str, float]:
    """``text_to_image_R@k``, ``image_to_text_R@k`` for each k, and ``mean_R@k`` (their mean), plus
    ``mean_recall`` (the mean over both directions and all k, CLIP_benchmark's summary)."""
    if not ks or any(k < 1 for k in ks):
        raise ValueError("ks: expected positive integers")
    t2i, i2t = image_text_ranks(
        image_emb, text_emb, caption_to_image, chunk_size=chunk_size, device=device, similarity=similarity
    )
    return recall_metrics(t2i, i2t, ks)


def recall_metrics(t2i: np.ndarray, i2t: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics of :func:`image_text_recall` from the ranks :func:`image_text_ranks` returns."""
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        a, b = recall_from_ranks(t2i, k), recall_from_ranks(i2t, k)
        out[f"text_to_image_R@{k}"] = a
        out[f"image_to_text_R@{k}"] = b
        out[f"mean_R@{k}"] = (a + b) / 2
    both = [v for key, v in out.items() if not key.startswith("mean_")]
    out["mean_recall"] = float(np.mean(both))
    return out


def zero_shot_weights(prompt_emb: np.ndarray, prompt_class: np.ndarray, num_classes: int) -> np.ndarray:
    """Class weights [C, D] by template ensembling: normalise each prompt embedding, average the
    prompts of each class, renormalise (CLIP's zero-shot classifier).

    >>> w = zero_shot_weights(np.array([[2.0, 0], [0, 1], [0, 3]]), np.array([0, 0, 1]), 2)
    >>> np.round(w.astype(float), 4).tolist()
    [[0.7071, 0.7071], [0.0, 1.0]]
    """
    e = np.asarray(prompt_emb, dtype=np.float64)
    cls = np.asarray(prompt_class, dtype=np.int64)
    if e.ndim != 2 or len(cls) != len(e):
        raise ValueError(f"expected [P, D] prompt embeddings and P class indices, got {e.shape} and {cls.shape}")
    counts = np.bincount(cls, minlength=num_classes)
    if len(counts) != num_classes or (counts == 0).any():
        raise ValueError("every class needs at least one prompt, and only classes in [0, num_classes)")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    w = np.zeros((num_classes, e.shape[1]))
    np.add.at(w, cls, e)
    w /= counts[:, None]
    w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    return w.astype(np.float32)
