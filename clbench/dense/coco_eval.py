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
    outcomes: dict[str, Any] | None = None,
) -> dict[str, float]:
    """COCOeval's 12 summary statistics (named as :data:`STAT_NAMES`) of ``detections``.

    ``ground_truth`` is a COCO instances dict (images, annotations, categories); no detections
    at all scores 0 (COCOeval itself cannot load an empty result list). When ``details`` is
    given, it receives ``per_category_AP`` (category name -> AP@[.5:.95], NaN without ground
    truth). When ``outcomes`` is given, it receives the per-image outcomes the bootstrap
    re-accumulates AP from (:func:`image_outcomes`).
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
        if outcomes is not None:
            outcomes.update(image_outcomes(ev))
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


def image_outcomes(ev: Any) -> dict[str, Any]:
    """Per-image outcomes of an evaluated COCOeval (after ``evaluate()``), one row per image in
    ``params.imgIds`` order, for :mod:`clbench.stats.dense`'s AP over resampled images.

    ``gold`` int64 [n, K]: non-ignored ground-truth objects per image and category (area "all");
    ``score`` float64, ``category`` int32 (index into ``params.catIds``, -1 pads a row),
    ``match`` / ``ignore`` uint16 [n, W]: each image's detections as ``evaluate()`` kept them
    (area "all", by category, in COCOeval's order), bit ``t`` set when matched to a ground-truth
    object / ignored at IoU threshold ``t``; ``image_ids``, ``category_ids``.
    """
    p = ev.params
    n, n_area, n_cat, n_iou = len(p.imgIds), len(p.areaRng), len(p.catIds), len(p.iouThrs)
    if n_iou > 16:
        raise ValueError(f"{n_iou} IoU thresholds do not fit a 16-bit mask")
    a = list(p.areaRngLbl).index("all")
    bits = (1 << np.arange(n_iou)).astype(np.int64)
    gold = np.zeros((n, n_cat), dtype=np.int64)
    rows: list[list[tuple[np.ndarray, int, np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
    for k in range(n_cat):
        base = (k * n_area + a) * n
        for i in range(n):
            e = ev.evalImgs[base + i]
            if e is None:
                continue
            gold[i, k] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            if len(e["dtScores"]):
                # COCOeval counts a match where the matched ground-truth id is non-zero
                m = (np.asarray(e["dtMatches"]) != 0).astype(np.int64).T @ bits
                ig = (np.asarray(e["dtIgnore"]) != 0).astype(np.int64).T @ bits
                rows[i].append((np.asarray(e["dtScores"], dtype=np.float64), k, m, ig))
    width = max(1, max((sum(len(r[0]) for r in row) for row in rows), default=0))
    score = np.zeros((n, width), dtype=np.float64)
    category = np.full((n, width), -1, dtype=np.int32)
    match = np.zeros((n, width), dtype=np.uint16)
    ignore = np.zeros((n, width), dtype=np.uint16)
    for i, row in enumerate(rows):
        j = 0
        for s, k, m, ig in row:
            d = len(s)
            score[i, j : j + d], category[i, j : j + d] = s, k
            match[i, j : j + d], ignore[i, j : j + d] = m, ig
            j += d
    return {
        "gold": gold, "score": score, "category": category, "match": match, "ignore": ignore,
        "image_ids": list(p.imgIds), "category_ids": list(p.catIds),
    }  # fmt: skip


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


__all__ = ["HEADLINE", "STAT_NAMES", "coco_evaluate", "image_outcomes", "predictions_to_coco"]
