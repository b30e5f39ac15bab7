"""Detection datasets (COCO JSON, VOC XML) and the COCOeval path, against pycocotools directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clbench.datasets.coco_instances import VOC_CLASSES, CocoDataset, VocDetectionDataset
from clbench.dense.coco_eval import STAT_NAMES, coco_evaluate, predictions_to_coco
from clbench.errors import DataError
from clbench.options import parse_options

pytest.importorskip("pycocotools")
# pycocotools' mask decoding warns about numpy 2's copy keyword
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def make(cls: type, tmp_path=None, **options):
    return cls(parse_options(cls.Options, options), name="test", root=tmp_path, seed=0)


@pytest.fixture
def coco_mini(shared_data):
    root = shared_data / "coco-mini"
    ann = root / "annotations" / "instances_val2017.json"
    ds = make(CocoDataset, images=str(root / "val2017"), annotations=str(ann))
    return ds, ann


def _masks(coco: COCO, item, anns) -> np.ndarray:
    if not anns:
        return np.zeros((0, 1, item.height, item.width), dtype=np.float32)
    return np.stack([coco.annToMask(a) for a in anns])[:, None].astype(np.float32)


def _reference(ann_file, results: list[dict], iou_type: str) -> np.ndarray:
    gt = COCO(str(ann_file))
    ev = COCOeval(gt, gt.loadRes(results), iouType=iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats)


def _ours(stats: dict[str, float]) -> np.ndarray:
    return np.array([-1.0 if np.isnan(stats[k]) else stats[k] for k in STAT_NAMES])


def test_ground_truth_fed_back_scores_ap_one(coco_mini):
    ds, ann_file = coco_mini
    coco = COCO(str(ann_file))
    dets = []
    for item in ds.split("train").items:
        anns = [a for a in coco.imgToAnns[item.image_id] if not a["iscrowd"]]
        keep = ~item.iscrowd
        assert len(anns) == keep.sum()
        dets += predictions_to_coco(
            item.image_id,
            boxes=item.boxes_xyxy[keep],
            scores=np.ones(keep.sum()),
            labels=item.labels[keep],
            category_ids=ds.category_ids,
            masks=_masks(coco, item, anns),
        )
    gt = ds.coco_ground_truth("train")
    for iou in ("bbox", "segm"):
        stats = coco_evaluate(gt, dets, iou_type=iou)
        assert stats["AP"] == 1.0 and stats["AP50"] == 1.0 and stats["AP75"] == 1.0, iou
        assert stats["AR100"] == 1.0


def test_perturbed_predictions_score_exactly_what_cocoeval_computes(coco_mini):
    ds, ann_file = coco_mini
    coco = COCO(str(ann_file))
    cat_ids = sorted(coco.getCatIds())  # independent label -> category id map
    rng = np.random.default_rng(0)
    ours, reference = [], []
    for item in ds.split("train").items:
        anns = [a for a in coco.imgToAnns[item.image_id] if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([cat_ids.index(a["category_id"]) for a in anns], dtype=np.int64)
        masks = _masks(coco, item, anns)
        keep = rng.random(len(anns)) > 0.2  # dropped detections
        boxes, labels, masks = boxes[keep], labels[keep], masks[keep]
        wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        boxes = boxes + rng.normal(scale=0.1, size=boxes.shape) * wh  # jittered boxes
        shift = rng.integers(-6, 7, size=(len(masks), 2))
        masks = (
            np.stack([np.roll(m, tuple(s), axis=(-2, -1)) for m, s in zip(masks, shift)])
            if len(masks)
            else masks
        )
        n_false = int(rng.integers(0, 4))  # false detections
        x1 = rng.uniform(0, item.width * 0.7, n_false)
        y1 = rng.uniform(0, item.height * 0.7, n_false)
        fb = np.stack(
            [
                x1,
                y1,
                x1 + rng.uniform(5, item.width * 0.3, n_false),
                y1 + rng.uniform(5, item.height * 0.3, n_false),
            ],
            1,
        )
        fm = np.zeros((n_false, 1, item.height, item.width), dtype=np.float32)
        for k, (a, b, c, d) in enumerate(fb.astype(int)):
            fm[k, 0, b:d, a:c] = 1.0
        boxes = np.concatenate([boxes, fb])
        labels = np.concatenate([labels, rng.integers(0, len(cat_ids), n_false)])
        masks = np.concatenate([masks, fm])
        scores = rng.random(len(boxes))
        ours += predictions_to_coco(
            item.image_id,
            boxes=boxes,
            scores=scores,
            labels=labels,
            category_ids=ds.category_ids,
            masks=masks,
        )
        for j in range(len(boxes)):
            rle = mask_utils.encode(np.asfortranarray(masks[j, 0].astype(np.uint8)))
            x, y, x2, y2 = boxes[j]
            reference.append(
                {"image_id": item.image_id, "category_id": cat_ids[labels[j]], "bbox": [x, y, x2 - x, y2 - y],
                 "score": scores[j], "segmentation": rle}
            )  # fmt: skip
    assert len(ours) == len(reference) > 100
    gt = ds.coco_ground_truth("train")
    for iou in ("bbox", "segm"):
        want = _reference(ann_file, [dict(r) for r in reference], iou)
        got = _ours(coco_evaluate(gt, ours, iou_type=iou))
        np.testing.assert_array_equal(got, want)
        assert 0.05 < want[0] < 0.95  # a real mix of hits and misses


def test_no_detections_score_zero():
    gt = {"images": [{"id": 1, "width": 20, "height": 20}], "categories": [{"id": 5, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "area": 100}]}  # fmt: skip
    stats = coco_evaluate(gt, [])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


# -- COCO JSON validation ------------------------------------------------------------------------


def _coco_json(tmp_path, data, name="inst.json"):
    (tmp_path / "img").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return make(CocoDataset, tmp_path, images="img", annotations=name)


GOOD = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
    "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 150, "iscrowd": 0}
    ],
}


def test_coco_json_is_read_with_contiguous_labels(tmp_path):
    ds = _coco_json(tmp_path, GOOD)
    (item,) = ds.split("train").items
    assert ds.category_ids == [3, 7] and ds.classes == ["dog", "cat"]
    assert item.labels.tolist() == [1] and item.category_ids.tolist() == [7]
    np.testing.assert_array_equal(item.boxes_xyxy, [[1, 2, 11, 22]])
    assert ds.coco_ground_truth("train")["annotations"][0]["bbox"] == [1, 2, 10, 20]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "invalid JSON at line 1"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "missing key 'annotations'"),
        (
            lambda d: {**d, "images": [{"id": 1, "file_name": "a.jpg", "width": 40}]},
            r"images\[0\]: missing key 'height'",
        ),
        (
            lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [35, 2, 10, 5]}]},
            r"annotations\[0\]: bbox .* outside",
        ),
        (
            lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, 3]}]},
            "bbox must be 4 numbers",
        ),
        (
            lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 99}]},
            "category_id 99 is not in categories",
        ),
        (
            lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 2}]},
            "image_id 2 is not in images",
        ),
        (
            lambda d: {**d, "annotations": [{"image_id": 1, "bbox": [1, 1, 2, 2]}]},
            "missing key 'category_id'",
        ),
    ],
    ids=[
        "syntax",
        "no-annotations",
        "image-key",
        "box-outside",
        "box-shape",
        "category",
        "image-id",
        "ann-key",
    ],
)
def test_malformed_coco_json_names_the_file_and_the_entry(tmp_path, edit, message):
    ds = _coco_json(tmp_path, edit(json.loads(json.dumps(GOOD))))
    with pytest.raises(DataError, match=message) as err:
        ds.split("train")
    assert "inst.json" in str(err.value)


def test_coco_test_fraction_splits_images_disjointly(tmp_path):
    data = dict(
        GOOD, images=[{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(1, 11)]
    )
    (tmp_path / "img").mkdir()
    (tmp_path / "i.json").write_text(json.dumps(data))
    ds = make(CocoDataset, tmp_path, images="img", annotations="i.json", test_fraction=0.3)
    train, test = ds.split("train").ids, ds.split("test").ids
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)


# -- Pascal VOC ------------------------------------------------------------------------------------


def _voc_xml(name: str, objects: list[tuple[str, tuple[int, int, int, int], int]], size=(50, 40)) -> str:
    objs = "".join(
        f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b, d in objects
    )
    return (
        f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


def _voc_year(root, images: dict[str, str], sets: dict[str, list[str]]):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, xml in images.items():
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        Image.new("RGB", (50, 40), (10, 20, 30)).save(root / "JPEGImages" / f"{name}.jpg")
    for s, names in sets.items():
        (root / "ImageSets" / "Main" / f"{s}.txt").write_text("\n".join(names) + "\n")


def test_voc_xml_boxes_classes_and_difficult(tmp_path):
    _voc_year(
        tmp_path / "VOC2007",
        {
            "000001": _voc_xml("000001", [("dog", (1, 1, 20, 30), 0), ("person", (10, 5, 50, 40), 1)]),
            "000002": _voc_xml("000002", [("car", (5, 6, 7, 8), 0)]),
        },
        {"trainval": ["000001"], "test": ["000002"]},
    )
    _voc_year(tmp_path / "VOC2012", {"2008_000003": _voc_xml("2008_000003", [("cat", (2, 3, 4, 5), 0)])},
              {"trainval": ["2008_000003"]})  # fmt: skip
    ds = make(VocDetectionDataset, tmp_path, root=".",
              splits={"train": ["VOC2007/trainval", "VOC2012/trainval"], "test": ["VOC2007/test"]})  # fmt: skip
    train = ds.split("train").items
    assert [it.name for it in train] == ["000001", "2008_000003"]
    a = train[0]
    np.testing.assert_array_equal(a.boxes_xyxy, [[0, 0, 20, 30], [9, 4, 50, 40]])  # 1-based -> 0-based
    assert a.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert a.difficult.tolist() == [False, True]
    assert a.load_image().size == (50, 40)
    gt = ds.coco_ground_truth("train")
    assert [x["iscrowd"] for x in gt["annotations"]] == [0, 1, 0]  # difficult: ignored in evaluation
    assert ds.split("test").items[0].labels.tolist() == [VOC_CLASSES.index("car")]
    # difficult objects neither count as misses nor make a detection on them a false positive
    only = predictions_to_coco(a.image_id, boxes=a.boxes_xyxy[:1], scores=[0.9], labels=a.labels[:1],
                               category_ids=ds.category_ids)  # fmt: skip
    both = predictions_to_coco(a.image_id, boxes=a.boxes_xyxy, scores=[0.9, 0.8], labels=a.labels,
                               category_ids=ds.category_ids)  # fmt: skip
    one_image = {**gt, "images": gt["images"][:1], "annotations": gt["annotations"][:2]}
    # (COCOeval's precision is tp / (tp + fp + eps): one true positive gives 1 - 2e-16)
    assert coco_evaluate(one_image, only)["AP"] == pytest.approx(1.0, abs=1e-12)
    assert coco_evaluate(one_image, both)["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><size>", "invalid XML"),
        (_voc_xml("x", [("unicorn", (1, 1, 5, 5), 0)]), "class 'unicorn' is not in the class list"),
        (_voc_xml("x", [("dog", (1, 1, 60, 5), 0)]), "outside the 50x40 image"),
        ("<annotation><object><name>dog</name></object></annotation>", "missing <size>"),
        (
            _voc_xml("x", [("dog", (1, 1, 5, 5), 0)]).replace("<xmax>5</xmax>", "<xmax>five</xmax>"),
            "not a number",
        ),
    ],
    ids=["syntax", "class", "outside", "no-size", "number"],
)
def test_malformed_voc_xml_names_the_file(tmp_path, xml, message):
    _voc_year(tmp_path, {"x": xml}, {"trainval": ["x"]})
    ds = make(VocDetectionDataset, tmp_path, root=".", splits={"train": ["trainval"]})
    with pytest.raises(DataError, match=message) as err:
        ds.split("train")
    assert "x.xml" in str(err.value)


def test_voc_missing_image_set_is_a_data_error(tmp_path):
    _voc_year(tmp_path, {}, {})
    ds = make(VocDetectionDataset, tmp_path, root=".")
    with pytest.raises(DataError, match=r"trainval\.txt"):
        ds.check()


def test_validation_reads_and_checks_the_annotations(tmp_path):
    ds = _coco_json(tmp_path, {**GOOD, "annotations": [{**GOOD["annotations"][0], "bbox": [1, 2, -3, 4]}]})
    with pytest.raises(DataError, match=r"inst\.json: annotations\[0\]: .* negative width"):
        ds.check()  # at `clbench validate` time, before any training
