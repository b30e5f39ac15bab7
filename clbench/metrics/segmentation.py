"""Semantic-segmentation metrics from a confusion matrix: mIoU, pixel accuracy, mean accuracy.

Everything is computed from one ``[C, C]`` confusion matrix ``conf`` whose row is the true class
and whose column is the predicted class, counted over the *valid* pixels only: pixels whose
target equals ``ignore_index`` are left out entirely, whatever was predicted there.

- ``pixel_accuracy`` = trace / total valid pixels;
- ``iou[c]`` = TP / (TP + FP + FN) = ``conf[c, c] / (row_c + col_c - conf[c, c])``;
- ``accuracy[c]`` (per-class recall) = TP / (TP + FN);
- ``miou`` = mean of ``iou`` over the classes that occur in the target *or* the prediction;
  ``mean_accuracy`` = mean of ``accuracy`` over the classes that occur in the target.

A class absent from both the target and the prediction has no defined IoU (0 / 0): it is NaN in
the per-class list and excluded from the mean, as in mmsegmentation and the DINOv2 linear
protocol. A class that is predicted but never occurs in the target has IoU 0 and *does* count.
A metric with no defined class at all (no valid pixel) is NaN.

Counting runs in NumPy for arrays and in torch (on the tensor's device) for tensors, so a task
can accumulate on the GPU and only move the ``C x C`` matrix.

>>> import numpy as np
>>> target = np.array([[0, 0, 1], [1, 255, 2]])
>>> pred = np.array([[0, 1, 1], [1, 0, 2]])
>>> conf = confusion_matrix(target, pred, num_classes=4)
>>> conf[:3, :3].tolist()
[[1, 1, 0], [0, 2, 0], [0, 0, 1]]
>>> scores = segmentation_scores(conf)
>>> round(scores["miou"], 4), scores["pixel_accuracy"]   # class 3 never occurs: left out
(0.7222, 0.8)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "miou", "pixel_accuracy", "segmentation_scores"]


def confusion_matrix(target: Any, pred: Any, num_classes: int, ignore_index: int | None = 255) -> Any:
    """``[C, C]`` int64 counts of (true class, predicted class) over the valid pixels.

    ``target`` and ``pred`` are integer arrays (or torch tensors) of the same shape. Pixels whose
    target is ``ignore_index`` are skipped. Any other target value outside ``[0, C)``, or a
    prediction outside ``[0, C)`` on a valid pixel, is a ``ValueError`` (a wrong label mapping
    must not be counted silently). Tensors give a tensor on their device; arrays an ndarray.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"target shape {tuple(target.shape)} != prediction shape {tuple(pred.shape)}")
    if _is_tensor(target) or _is_tensor(pred):
        return _confusion_torch(target, pred, num_classes, ignore_index)
    t = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
    p = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    _check_range(t, "target", num_classes, ignore_index)
    _check_range(p, "prediction", num_classes, None)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _confusion_torch(target: Any, pred: Any, num_classes: int, ignore_index: int | None) -> Any:
    import torch

    t = torch.as_tensor(target).reshape(-1).long()
    p = torch.as_tensor(pred, device=t.device).reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    for values, what, ign in ((t, "target", ignore_index), (p, "prediction", None)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)]
            _check_range(bad.unique().cpu().numpy(), what, num_classes, ign)
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _check_range(values: np.ndarray, what: str, num_classes: int, ignore_index: int | None) -> None:
    if values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
        bad = np.unique(values[(values < 0) | (values >= num_classes)])
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        extra = f" or the ignore index {ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"{what} values outside [0, {num_classes}){extra}: {shown}")


def _as_matrix(conf: Any) -> np.ndarray:
    if _is_tensor(conf):
        conf = conf.detach().cpu().numpy()
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {conf.shape}")
    return conf


def per_class_iou(conf: Any) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both target and prediction."""
    c = _as_matrix(conf)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def per_class_accuracy(conf: Any) -> np.ndarray:
    """Recall of each class (TP / pixels of the class); NaN for a class absent from the target."""
    c = _as_matrix(conf)
    support = c.sum(1)
    return np.where(support > 0, np.diag(c) / np.where(support > 0, support, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def miou(conf: Any) -> float:
    """Mean IoU over the classes present in the target or the prediction."""
    return _nanmean(per_class_iou(conf))


def pixel_accuracy(conf: Any) -> float:
    """Correct valid pixels / valid pixels (NaN when there is no valid pixel)."""
    c = _as_matrix(conf)
    total = c.sum()
    return float(np.trace(c) / total) if total > 0 else float("nan")


def segmentation_scores(conf: Any, class_names: list[str] | None = None) -> dict[str, Any]:
    """``miou``, ``pixel_accuracy``, ``mean_accuracy`` (floats) and per-class ``iou`` /
    ``accuracy`` lists (NaN where undefined), plus ``iou_by_class`` when names are given."""
    iou = per_class_iou(conf)
    acc = per_class_accuracy(conf)
    out: dict[str, Any] = {
        "miou": _nanmean(iou),
        "pixel_accuracy": pixel_accuracy(conf),
        "mean_accuracy": _nanmean(acc),
        "iou": iou.tolist(),
        "accuracy": acc.tolist(),
    }
    if class_names is not None:
        if len(class_names) != len(iou):
            raise ValueError(f"{len(class_names)} class names for a {len(iou)}-class confusion matrix")
        out["iou_by_class"] = dict(zip(class_names, iou.tolist()))
    return out
