"""Bootstrap statistics of dense tasks, where the resampled unit is an image: mIoU from summed
per-image pixel counts, COCO AP re-accumulated over a multiset of images. Pure numpy.

Every function takes ``C`` ``[b, n]``, how often each of the ``n`` images occurs in each of ``b``
resamples (a row of ones is the original image set), and the per-image arrays (one row per
image), and returns the metric of each resample ``[b]``. Several trials (seeds) are stored as
further arrays; the statistic is then the mean over trials, as the task reports it.

Segmentation (``kind: pixel_counts``), arrays ``gold, intersection, union[, intersection@trial1,
union@trial1, ...]``, each int64 ``[n, C]``: ``gold[i, c]`` the pixels of class ``c`` in image
``i``'s target, ``intersection`` / ``union`` the per-class TP and TP + FP + FN of the prediction.
A resample's counts are ``C @ counts`` (one matrix product; integer sums, exact in float64), and
``miou`` / ``seg_mean_accuracy`` / ``seg_pixel_accuracy`` follow from them exactly as
:mod:`clbench.metrics.segmentation` computes them from the summed confusion matrix.

Detection (``kind: detections``), arrays ``gold`` int64 ``[n, K]`` (non-ignored ground-truth
objects per image and category: COCOeval's ``npig`` terms), then per trial ``score`` float64,
``category`` int (-1: padding), ``match`` and ``ignore`` uint16 bit masks (bit ``t``: matched /
ignored at IoU threshold ``t`` of 0.50:0.05:0.95), each ``[n, W]``: image ``i``'s detections as
COCOeval.evaluate() kept them (area "all", at most 100 per category, in its order). ``coco_ap``
is COCOeval.accumulate + summarize's AP@[.5:.95] (``coco_ap50``, ``coco_ap75``: one threshold)
over the multiset of images: detections of all images sorted by score (stable, image order), an
image drawn ``w`` times contributing each of its detections ``w`` times in a row. On the original
set this is COCOeval's computation step by step (equal to the last bit, ties included). On a
resample it equals COCOeval run on the resampled image list whenever no two distinct detections
share a score (ties between distinct detections are broken by image order instead of draw
order). Work per resample is linear in the detections: precision only needs evaluating at true
positives (COCOeval's interpolated precision at a recall level is the largest precision at or
after the first detection reaching it, and that maximum is always at a true positive), and a
recall threshold maps to a count of true positives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["REC_THRS", "coco_ap", "coco_ap50", "coco_ap75", "mean_accuracy", "miou", "pixel_accuracy"]

#: COCOeval's recall thresholds 0:0.01:1 and number of IoU thresholds 0.50:0.05:0.95
REC_THRS = np.linspace(0.0, 1.0, 101, endpoint=True)
N_IOU = 10
#: elements of the per-batch working arrays held at once (rows are processed in chunks)
_CHUNK_ELEMENTS = 2**22


# -------------------------------------------------------------------------------- segmentation
def _per_trial(arrays: Sequence[np.ndarray], size: int) -> list[tuple[np.ndarray, ...]]:
    if not arrays or len(arrays) % size:
        raise ValueError(f"expected groups of {size} per-trial arrays, got {len(arrays)} arrays")
    return [tuple(arrays[i : i + size]) for i in range(0, len(arrays), size)]


def _sums(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``[b, C]`` counts of each resample (integers below 2**53: exact in float64)."""
    return np.asarray(c, dtype=np.float64) @ np.asarray(x, dtype=np.float64)


def _masked_means(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the mean of the valid entries (NaN when none), as ``values[valid].mean()``."""
    out = np.full(len(values), np.nan)
    for r in range(len(values)):
        v = values[r][valid[r]]
        if v.size:
            out[r] = v.mean()
    return out


def _trial_mean(values: list[np.ndarray], *, nan_ok: bool = False) -> np.ndarray:
    """Mean over trials per resample (``np.nanmean`` with ``nan_ok``, NaN when all are NaN)."""
    if len(values) == 1:
        return values[0]
    stacked = np.stack(values, axis=1)
    if not nan_ok:
        return np.array([np.mean(row) for row in stacked])
    return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in stacked])


def miou(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present in the resample's target or prediction."""
    out = []
    for inter, union in _per_trial(per_trial, 2):
        i, u = _sums(c, inter), _sums(c, union)
        valid = u > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(_masked_means(i / np.where(valid, u, 1), valid))
    return _trial_mean(out)


def mean_accuracy(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """Mean per-class recall over the classes present in the resample's target."""
    g = _sums(c, gold)
    valid = g > 0
    out = []
    for inter, _union in _per_trial(per_trial, 2):
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(_masked_means(_sums(c, inter) / np.where(valid, g, 1), valid))
    return _trial_mean(out)


def pixel_accuracy(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """Correct pixels over valid pixels of the resample."""
    total = _sums(c, gold).sum(axis=1)
    out = []
    for inter, _union in _per_trial(per_trial, 2):
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(
                np.where(total > 0, _sums(c, inter).sum(axis=1) / np.where(total > 0, total, 1), np.nan)
            )
    return _trial_mean(out)


# ----------------------------------------------------------------------------------- detection
def _plan(
    score: np.ndarray, category: np.ndarray, match: np.ndarray, ignore: np.ndarray, num_categories: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per category, its detections over all images in COCOeval's accumulate order (concatenated
    in image order, then sorted by descending score with a stable sort): (image, match, ignore)."""
    n = score.shape[0]
    width = score.shape[1] if score.ndim == 2 else 0
    flat_cat = np.asarray(category).reshape(n * width)
    sel = np.flatnonzero(flat_cat >= 0)
    if sel.size and flat_cat[sel].max() >= num_categories:
        raise ValueError(
            f"detection category index {int(flat_cat[sel].max())} >= {num_categories} categories"
        )
    order = sel[np.argsort(flat_cat[sel], kind="stable")]  # by category, image order kept
    bounds = np.searchsorted(flat_cat[order], np.arange(num_categories + 1))
    flat_score = np.asarray(score, dtype=np.float64).reshape(-1)
    flat_match = np.asarray(match).reshape(-1).astype(np.int64)
    flat_ignore = np.asarray(ignore).reshape(-1).astype(np.int64)
    plan = []
    for k in range(num_categories):
        idx = order[bounds[k] : bounds[k + 1]]
        idx = idx[np.argsort(-flat_score[idx], kind="mergesort")]
        plan.append((idx // max(width, 1), flat_match[idx], flat_ignore[idx]))
    return plan


def _recall_steps(npig: np.ndarray) -> np.ndarray:
    """``[v, R]``: the fewest true positives ``m`` whose recall ``m / npig`` (as COCOeval divides)
    reaches each recall threshold."""
    thr = REC_THRS[None, :]
    total = np.asarray(npig, dtype=np.float64)[:, None]
    m = np.ceil(thr * total)
    for _ in range(8):
        up = m / total < thr
        m = m + up
        down = (m > 0) & ((m - 1) / total >= thr)
        m = m - down
        if not (up.any() or down.any()):
            break
    return m


def _first_at_least(cum: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``[v, R]``: per row, the first index whose (non-decreasing, integer) ``cum`` is >= ``m``;
    ``cum.shape[1]`` when none is."""
    v, p = cum.shape
    big = float(cum[:, -1].max()) + 2.0
    offset = np.arange(v, dtype=np.float64)[:, None] * big
    keys = (cum + offset).ravel()
    queries = (np.minimum(m, big - 1.0) + offset).ravel()
    return np.searchsorted(keys, queries, side="left").reshape(m.shape) - np.arange(v)[:, None] * p


def _coco_trial(
    c: np.ndarray,
    gold: np.ndarray,
    score: np.ndarray,
    category: np.ndarray,
    match: np.ndarray,
    ignore: np.ndarray,
    thresholds: Sequence[int],
) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    gold = np.asarray(gold)
    b = c.shape[0]
    num_cat = gold.shape[1]
    plan = _plan(score, category, match, ignore, num_cat)
    t_count, r_count = len(thresholds), len(REC_THRS)
    dmax = max((len(p[0]) for p in plan), default=0)
    rows = max(1, min(b, _CHUNK_ELEMENTS // max(1, t_count * r_count * num_cat + 3 * dmax)))
    npig_all = _sums(c, gold)  # [b, K]
    out = np.empty(b)
    for start in range(0, b, rows):
        cc = c[start : start + rows]
        nb = len(cc)
        precision = np.full((nb, t_count, r_count, num_cat), -1.0)
        for k in range(num_cat):
            npig = npig_all[start : start + nb, k]
            rv = np.flatnonzero(npig > 0)  # COCOeval skips a category without ground truth (-1)
            if not rv.size:
                continue
            precision[rv, :, :, k] = 0.0
            img, mt, ig = plan[k]
            if not img.size:
                continue
            g = cc[rv][:, img]  # each detection's multiplicity in each resample
            wall = np.cumsum(g, axis=1)
            steps = _recall_steps(npig[rv])
            for ti, t in enumerate(thresholds):
                ign = ((ig >> t) & 1).astype(bool)
                tp_pos = np.flatnonzero(((mt >> t) & 1).astype(bool) & ~ign)
                if not tp_pos.size:
                    continue  # no true positive: precision 0 at every recall level
                tp = np.cumsum(g[:, tp_pos], axis=1)
                fp = wall[:, tp_pos] - tp
                ign_pos = np.flatnonzero(ign)
                if ign_pos.size:  # ignored detections ahead of each true positive are no false positives
                    ign_cum = np.concatenate(
                        [np.zeros((len(rv), 1)), np.cumsum(g[:, ign_pos], axis=1)], axis=1
                    )
                    fp = fp - ign_cum[:, np.searchsorted(ign_pos, tp_pos)]
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                first = _first_at_least(tp, steps)
                p = tp_pos.size
                q = np.take_along_axis(pr, np.minimum(first, p - 1), axis=1)
                precision[rv, ti, :, k] = np.where(first < p, q, 0.0)
        for r in range(nb):
            s = precision[r]
            s = s[s > -1]
            out[start + r] = s.mean() if s.size else np.nan
    return out


def _coco(
    c: np.ndarray, gold: np.ndarray, per_trial: Sequence[np.ndarray], thresholds: Sequence[int]
) -> np.ndarray:
    values = [_coco_trial(c, gold, *quad, thresholds) for quad in _per_trial(per_trial, 4)]
    return _trial_mean(values, nan_ok=True)


def coco_ap(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """COCO AP@[.5:.95] (area all, 100 detections) of each resample."""
    return _coco(c, gold, per_trial, range(N_IOU))


def coco_ap50(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """COCO AP at IoU 0.5 of each resample."""
    return _coco(c, gold, per_trial, [0])


def coco_ap75(c: np.ndarray, gold: np.ndarray, *per_trial: np.ndarray) -> np.ndarray:
    """COCO AP at IoU 0.75 of each resample."""
    return _coco(c, gold, per_trial, [5])
