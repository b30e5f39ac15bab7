"""COCO-style evaluation of detections with pycocotools' COCOeval (bbox and segm).

clbench's detections are torchvision's outputs per image (``boxes`` xyxy in original image
pixels, ``scores``, contiguous ``labels``, optional ``masks`` [N, 1, H, W] probabilities);
:func:`predictions_to_coco` turns them into COCO result entries (xywh boxes, the dataset's
category ids, masks thresholded at 0.5 and RLE-encoded), and :func:`coco_evaluate` runs COCOeval
on them against a COCO-format ground-truth dict. The 12 summary statistics are named as
:data:`STAT_NAMES` (``AP`` = AP@[.5:.95], ``APs`` small objects, ``AR100`` recall at 100
detections, ...); COCOeval's -1 ("no ground truth in this area range") becomes NaN.

>>> gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 3, "name": "c"}],
...       "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}]}
>>> dets = predictions_to_coco(1, boxes=[[1, 1, 5, 5]], scores=[0.9], labels=[0], category_ids=[3])
>>> round(coco_evaluate(gt, dets)["AP50"], 6)
1.0
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: the statistics a detection result reports as metrics (the rest go to details)
HEADLINE = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predictions_to_coco(
    image_id: int,
    *,
    boxes: Any,
    scores: Any,
    labels: Any,
    category_ids: Sequence[int],
    masks: Any = None,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO result entries of one image's detections (``boxes`` xyxy, ``labels`` 0..C-1)."""
    b = _np(boxes, np.float64).reshape(-1, 4)
    s = _np(scores, np.float64).reshape(-1)
    lab = _np(labels, np.int64).reshape(-1)
    if not len(b) == len(s) == len(lab):
        raise ValueError(f"image {image_id}: {len(b)} boxes, {len(s)} scores and {len(lab)} labels")
    out = []
    rles = _encode_masks(masks, mask_threshold) if masks is not None else None
    for j in range(len(b)):
        x1, y1, x2, y2 = (float(v) for v in b[j])
        det = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(lab[j])]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(s[j]),
        }
        if rles is not None:
            det["segmentation"] = rles[j]
        out.append(det)
    return out


def _np(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _encode_masks(masks: Any, threshold: float) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    m = _np(masks, np.float32)
    if m.ndim == 4:  # [N, 1, H, W] from Mask R-CNN
        m = m[:, 0]
    binary = np.asfortranarray((m >= threshold).transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(binary) if len(m) else []
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")  # JSON-serialisable
    return list(rles)


def coco_evaluate(
    ground_truth: dict[str, Any],
    detections: list[dict[str, Any]],
    *,
    iou_type: str = "bbox",
    details: dict[str, Any] | None = None,
) -> dict[str, float]:
    """COCOeval's 12 summary statistics (named as :data:`STAT_NAMES`) of ``detections``.

    ``ground_truth`` is a COCO instances dict (images, annotations, categories); no detections
    at all scores 0 (COCOeval itself cannot load an empty result list). When ``details`` is
    given, it receives ``per_category_AP`` (category name -> AP@[.5:.95], NaN without ground
    truth).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = _with_defaults(ground_truth, iou_type)
        gt.createIndex()
        if detections:
            dt = gt.loadRes([dict(d) for d in detections])  # loadRes mutates its entries
        else:
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "categories": list(gt.dataset["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: (float("nan") if v < 0 else float(v)) for name, v in zip(STAT_NAMES, ev.stats)}
    if details is not None:
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        per_cat = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_cat[gt.cats[cat_id]["name"]] = float(p.mean()) if p.size else float("nan")
        details["per_category_AP"] = per_cat
    return stats


def _with_defaults(gt: dict[str, Any], iou_type: str) -> dict[str, Any]:
    """A shallow copy COCO() accepts: ``iscrowd``/``area``/``id`` filled in where missing."""
    anns = []
    for i, a in enumerate(gt.get("annotations", [])):
        a = dict(a)
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        if iou_type == "segm" and "segmentation" not in a:
            raise ValueError(f"annotation {a['id']} has no segmentation: segm evaluation needs masks")
        anns.append(a)
    return {**gt, "annotations": anns}


__all__ = ["HEADLINE", "STAT_NAMES", "coco_evaluate", "predictions_to_coco"]
