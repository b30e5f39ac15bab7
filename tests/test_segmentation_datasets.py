"""Segmentation datasets: mask folders, VOC devkits and COCO rasterisation (against pycocotools)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clbench.datasets.coco_semantic import CocoSemanticDataset, annotation_mask, semantic_mask
from clbench.datasets.segmentation import VOC_CLASSES, MaskFolderDataset, VocSegmentationDataset
from clbench.errors import ConfigError, DataError
from clbench.options import parse_options
from clbench.registry import DATASETS

# pycocotools' annToMask warns about NumPy 2's copy keyword on every call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * (3 * 250) + [224, 224, 192]


def build(cls, root: Path, seed: int = 0, **options):
    return cls(parse_options(cls.Options, options), name="ds", root=root, seed=seed)


def save_image(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def save_mask(path: Path, labels: np.ndarray, palette: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette(PALETTE)
    im.save(path)


def label_grid(h: int, w: int, num_classes: int, seed: int, border: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(h, w))
    if border:
        labels[0, :] = 255  # VOC-style ignore border
    return labels


def test_registered():
    assert DATASETS.get("mask-folder") is MaskFolderDataset
    assert DATASETS.get("voc-segmentation") is VocSegmentationDataset
    assert DATASETS.get("coco-semantic") is CocoSemanticDataset
    for cls in (MaskFolderDataset, VocSegmentationDataset, CocoSemanticDataset):
        assert cls.kind == "segmentation" and cls.modality == "image"


# -- VOC -------------------------------------------------------------------------------------------


def make_voc(root: Path) -> dict[str, np.ndarray]:
    truth = {}
    for i, stem in enumerate(["2007_000001", "2007_000002", "2008_000003"]):
        save_image(root / "JPEGImages" / f"{stem}.jpg", 12, 16, seed=i)
        labels = label_grid(12, 16, 21, seed=i)
        save_mask(root / "SegmentationClass" / f"{stem}.png", labels)
        truth[stem] = labels
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2008_000003\n")
    return truth


def test_voc_loads_classes_and_ignore_pixels(tmp_path):
    truth = make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    ds = build(VocSegmentationDataset, tmp_path, path="VOCdevkit")  # the devkit folder is accepted too
    train, test = ds.split("train"), ds.split("test")
    assert ds.classes == list(VOC_CLASSES) and len(ds.classes) == 21 and ds.ignore_index == 255
    assert list(train.ids) == ["2007_000001", "2007_000002"] and list(test.ids) == ["2008_000003"]
    image, mask = test.items[0]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, truth["2008_000003"])  # palette indices, not colours
    assert (mask == 255).sum() == 16


def test_voc_missing_mask_names_the_list_line(tmp_path):
    root = tmp_path / "VOC2012"
    make_voc(root)
    (root / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(DataError, match=r"train\.txt:2: mask .*2007_000002\.png not found"):
        build(VocSegmentationDataset, tmp_path, path="VOC2012").split("train")


def test_voc_unknown_label_value_names_the_file(tmp_path):
    root = tmp_path / "VOC2012"
    make_voc(root)
    labels = label_grid(12, 16, 21, seed=5)
    labels[3, 3] = 40
    save_mask(root / "SegmentationClass" / "2008_000003.png", labels)
    ds = build(VocSegmentationDataset, tmp_path, path="VOC2012")
    with pytest.raises(DataError, match=r"2008_000003\.png: label values 40 are neither one of the 21 classes"):
        ds.split("test").items[0]


# -- mask-folder -----------------------------------------------------------------------------------


def make_folder(root: Path, n: int = 5, num_classes: int = 3, palette: bool = True) -> dict[str, np.ndarray]:
    truth = {}
    for i in range(n):
        save_image(root / "img" / f"s{i}.jpg", 10, 14, seed=i)
        labels = label_grid(10, 14, num_classes, seed=i)
        save_mask(root / "ann" / f"s{i}.png", labels, palette=palette)
        truth[f"s{i}"] = labels
    return truth


@pytest.mark.parametrize("palette", [True, False])
def test_mask_folder_single_source_divided(tmp_path, palette):
    truth = make_folder(tmp_path, palette=palette)
    (tmp_path / "classes.txt").write_text("sky\ngrass\n\nroad\n")
    ds = build(MaskFolderDataset, tmp_path, images="img", masks="ann", classes_file="classes.txt", test_fraction=0.4)
    train, test = ds.split("train"), ds.split("test")
    assert ds.classes == ["sky", "grass", "road"]
    assert len(train) == 3 and len(test) == 2
    assert sorted(list(train.ids) + list(test.ids)) == sorted(truth)
    for split in (train, test):
        for stem, (image, mask) in zip(split.ids, split.items):
            assert image.shape == (10, 14, 3)
            np.testing.assert_array_equal(mask, truth[stem])
    # the division is seeded: same seed, same split; another seed, another split
    again = build(MaskFolderDataset, tmp_path, images="img", masks="ann", classes=["a", "b", "c"], test_fraction=0.4)
    assert list(again.split("test").ids) == list(test.ids)
    ids = {tuple(build(MaskFolderDataset, tmp_path, seed=s, images="img", masks="ann", classes=["a", "b", "c"],
                       test_fraction=0.4).split("test").ids) for s in range(6)}
    assert len(ids) > 1


def test_mask_folder_cityscapes_style_suffixes_and_label_map(tmp_path):
    # leftImg8bit/<split>/<city>/<name>_leftImg8bit.png + gtFine/<split>/<city>/<name>_gtFine_labelIds.png
    raw = np.array([[7, 8, 26, 0], [7, 7, 33, 1]])  # 7 road, 8 sidewalk, 26 car, 33 bicycle; 0, 1 unmapped
    for split in ("train", "val"):
        for city in ("aachen", "bonn"):
            name = f"{city}_000000_000019"
            save_image(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", 2, 4)
            save_mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", raw, palette=False)
            # other gtFine files beside it must not confuse the pairing
            save_mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_instanceIds.png", raw, palette=False)
    ds = build(
        MaskFolderDataset, tmp_path,
        train_images="leftImg8bit/train", train_masks="gtFine/train",
        test_images="leftImg8bit/val", test_masks="gtFine/val",
        image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelIds.png",
        classes=["road", "sidewalk", "car", "bicycle"], label_map={7: 0, 8: 1, 26: 2, 33: 3}, unmapped="ignore",
    )
    test = ds.split("test")
    assert list(test.ids) == ["aachen/aachen_000000_000019", "bonn/bonn_000000_000019"]
    np.testing.assert_array_equal(test.items[1][1], [[0, 1, 2, 255], [0, 0, 3, 255]])
    # without `unmapped: ignore` an unmapped label is an error naming the file and the values
    strict = build(
        MaskFolderDataset, tmp_path, images="leftImg8bit/val", masks="gtFine/val",
        image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelIds.png",
        classes=["road", "sidewalk", "car", "bicycle"], label_map={7: 0, 8: 1, 26: 2, 33: 3},
    )
    with pytest.raises(DataError, match=r"_gtFine_labelIds\.png: label values 0, 1 are not in label_map"):
        strict.split("train").items[0]


def test_mask_folder_reduce_zero_label_ade20k_style(tmp_path):
    raw = np.array([[0, 1, 2], [150, 0, 3]])  # ADE20K: 0 = other, 1..150 = classes
    save_image(tmp_path / "images" / "training" / "ADE_train_1.jpg", 2, 3)
    save_mask(tmp_path / "annotations" / "training" / "ADE_train_1.png", raw, palette=False)
    save_image(tmp_path / "images" / "validation" / "ADE_val_1.jpg", 2, 3)
    save_mask(tmp_path / "annotations" / "validation" / "ADE_val_1.png", raw, palette=False)
    common = {
        "train_images": "images/training", "train_masks": "annotations/training",
        "test_images": "images/validation", "test_masks": "annotations/validation",
        "classes": [f"c{i}" for i in range(150)],
    }
    ds = build(MaskFolderDataset, tmp_path, reduce_zero_label=True, **common)
    np.testing.assert_array_equal(ds.split("test").items[0][1], [[255, 0, 1], [149, 255, 2]])
    # forgetting reduce_zero_label: 150 is out of range, and the message says what to do
    plain = build(MaskFolderDataset, tmp_path, **common)
    with pytest.raises(DataError, match=r"ADE_val_1\.png: label values 150 .*reduce_zero_label"):
        plain.split("test").items[0]


def test_mask_folder_malformed_inputs_name_the_file(tmp_path):
    make_folder(tmp_path, n=4)
    opts = {"images": "img", "masks": "ann", "classes": ["a", "b", "c"], "test_fraction": 0.5}

    # a mask of another size than its image
    save_mask(tmp_path / "ann" / "s1.png", label_grid(9, 14, 3, seed=1))
    ds = build(MaskFolderDataset, tmp_path, **opts)
    split = next(s for s in (ds.split("train"), ds.split("test")) if "s1" in s.ids)
    with pytest.raises(DataError, match=r"s1\.png: mask is 14x9 \(WxH\) but its image .*s1\.jpg is 14x10"):
        split.items[list(split.ids).index("s1")]

    # an unknown label value
    labels = label_grid(10, 14, 3, seed=1)
    labels[2, 2] = 7
    save_mask(tmp_path / "ann" / "s1.png", labels)
    ds = build(MaskFolderDataset, tmp_path, **opts)
    split = next(s for s in (ds.split("train"), ds.split("test")) if "s1" in s.ids)
    with pytest.raises(DataError, match=r"s1\.png: label values 7 are neither one of the 3 classes \(0\.\.2\)"):
        split.items[list(split.ids).index("s1")]

    # a colour (RGB) mask
    Image.fromarray(np.zeros((10, 14, 3), dtype=np.uint8)).save(tmp_path / "ann" / "s1.png")
    ds = build(MaskFolderDataset, tmp_path, **opts)
    split = next(s for s in (ds.split("train"), ds.split("test")) if "s1" in s.ids)
    with pytest.raises(DataError, match=r"s1\.png: expected a palette \(P\) or single-channel index mask, got mode RGB"):
        split.items[list(split.ids).index("s1")]

    # a missing mask: found when the folder is scanned
    (tmp_path / "ann" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"s1\.jpg: no mask for this image \(expected .*ann/s1\.png\)"):
        build(MaskFolderDataset, tmp_path, **opts).split("train")


def test_mask_folder_option_errors(tmp_path):
    with pytest.raises(ConfigError, match="classes"):
        parse_options(MaskFolderDataset.Options, {"images": "a", "masks": "b"})
    with pytest.raises(ConfigError, match="not both"):
        parse_options(MaskFolderDataset.Options, {"images": "a", "masks": "b", "train_images": "c", "classes": ["x"]})
    with pytest.raises(ConfigError, match="test_masks: required"):
        parse_options(MaskFolderDataset.Options,
                      {"train_images": "a", "train_masks": "b", "test_images": "c", "classes": ["x"]})
    with pytest.raises(ConfigError, match="listed twice"):
        parse_options(MaskFolderDataset.Options, {"images": "a", "masks": "b", "classes": ["x", "x"]})
    with pytest.raises(ConfigError, match="reduce_zero_label"):
        parse_options(MaskFolderDataset.Options, {"images": "a", "masks": "b", "classes": ["x"],
                                                  "reduce_zero_label": True, "label_map": {1: 0}})
    ds = build(MaskFolderDataset, tmp_path, images="nope", masks="ann", classes=["x"])
    with pytest.raises(DataError, match="nope: file or folder not found"):
        ds.check()


def test_limit_keeps_a_seeded_subset(tmp_path):
    make_folder(tmp_path, n=8)
    a = build(MaskFolderDataset, tmp_path, images="img", masks="ann", classes=["a", "b", "c"], limit=2)
    b = build(MaskFolderDataset, tmp_path, images="img", masks="ann", classes=["a", "b", "c"], limit=2)
    assert len(a.split("train")) == 2 and len(a.split("test")) == 2
    assert list(a.split("train").ids) == list(b.split("train").ids)


# -- COCO ------------------------------------------------------------------------------------------


COCO_SETS = [("coco128", "images", "annotations/instances_coco128.json"),
             ("coco-mini", "val2017", "annotations/instances_val2017.json")]


@pytest.mark.parametrize("name,images,annotations", COCO_SETS, ids=[c[0] for c in COCO_SETS])
def test_coco_rasterisation_equals_pycocotools_annToMask(shared_data, name, images, annotations):
    from pycocotools.coco import COCO

    coco = COCO(str(shared_data / name / annotations))
    anns = coco.loadAnns(coco.getAnnIds())
    kinds = {"polygon": 0, "rle": 0}
    for ann in anns:
        img = coco.imgs[ann["image_id"]]
        ours = annotation_mask(ann["segmentation"], img["height"], img["width"])
        np.testing.assert_array_equal(ours, coco.annToMask(ann), err_msg=f"annotation {ann['id']}")
        kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
    assert kinds["polygon"] > 500 and kinds["rle"] >= 5  # both encodings were exercised

    # compressed RLE (string counts, as in results files) decodes to the same mask
    from pycocotools import mask as mask_utils

    for ann in anns[:50]:
        img = coco.imgs[ann["image_id"]]
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        rle["counts"] = rle["counts"].decode("ascii")
        np.testing.assert_array_equal(annotation_mask(rle, img["height"], img["width"]), coco.annToMask(ann))


def reference_semantic(coco, image_id: int, class_of: dict[int, int]) -> np.ndarray:
    """The composition rule, computed another way: per pixel, the covering non-crowd instance of
    least area (then lowest id) gives the class; else 255 under a crowd region; else 0."""
    img = coco.imgs[image_id]
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if a["category_id"] in class_of]
    h, w = img["height"], img["width"]
    out = np.zeros((h, w), dtype=np.int64)
    crowd = [a for a in anns if a["iscrowd"]]
    solid = [a for a in anns if not a["iscrowd"]]
    if crowd:
        out[np.any([coco.annToMask(a) > 0 for a in crowd], axis=0)] = 255
    if solid:
        masks = np.stack([coco.annToMask(a) > 0 for a in solid])
        areas = masks.reshape(len(solid), -1).sum(1)
        # rank instances by (area, id): the smallest rank covering a pixel wins
        order = sorted(range(len(solid)), key=lambda i: (areas[i], solid[i]["id"]))
        rank = np.empty(len(solid), dtype=np.int64)
        rank[order] = np.arange(len(solid))
        ranks = np.where(masks, rank[:, None, None], len(solid))
        best = ranks.argmin(0)
        covered = masks.any(0)
        classes = np.array([class_of[a["category_id"]] for a in solid])
        out[covered] = classes[best[covered]]
    return out


def test_coco_semantic_dataset_on_coco128(shared_data):
    from pycocotools.coco import COCO

    root = shared_data / "coco128"
    ds = build(CocoSemanticDataset, root, images="images", annotations="annotations/instances_coco128.json",
               test_fraction=0.25)
    train, test = ds.split("train"), ds.split("test")
    assert len(train) == 96 and len(test) == 32
    coco = COCO(str(root / "annotations" / "instances_coco128.json"))
    cats = sorted(coco.cats)
    assert ds.classes == ["background"] + [coco.cats[c]["name"] for c in cats] and len(ds.classes) == 81
    class_of = {c: k + 1 for k, c in enumerate(cats)}  # category ids 1..90 -> 1..80
    crowd_images = {a["image_id"] for a in coco.dataset["annotations"] if a["iscrowd"]}
    overlap_checked = 0
    for split in (train, test):
        for image_id, (image, mask) in zip(split.ids, split.items):
            if int(image_id) not in crowd_images and overlap_checked >= 12:
                continue
            overlap_checked += 1
            ref = reference_semantic(coco, int(image_id), class_of)
            assert image.shape[:2] == mask.shape
            np.testing.assert_array_equal(mask, ref, err_msg=f"image {image_id}")
    assert overlap_checked >= 12 + 5


def test_coco_category_subset_and_no_background(shared_data):
    from pycocotools.coco import COCO

    root = shared_data / "coco-mini"
    ann_file = "annotations/instances_val2017.json"
    ds = build(CocoSemanticDataset, root, images="val2017", annotations=ann_file, categories=["person", "dog"],
               background=False, limit=5)
    test = ds.split("test")
    assert ds.classes == ["person", "dog"]
    coco = COCO(str(root / ann_file))
    class_of = {coco.getCatIds(catNms=["person"])[0]: 0, coco.getCatIds(catNms=["dog"])[0]: 1}
    for image_id, (_, mask) in zip(test.ids, test.items):
        ref = reference_semantic(coco, int(image_id), {k: v + 1 for k, v in class_of.items()})
        expected = np.where(ref == 0, 255, np.where(ref == 255, 255, ref - 1))
        np.testing.assert_array_equal(mask, expected)


def test_semantic_mask_overlap_rule_by_hand():
    def box(x0, y0, x1, y1):  # a rectangle polygon (pixel corners)
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    anns = [
        {"id": 1, "category_id": 10, "segmentation": box(0, 0, 8, 8), "iscrowd": 0},  # large
        {"id": 2, "category_id": 20, "segmentation": box(2, 2, 4, 4), "iscrowd": 0},  # small, inside
        {"id": 3, "category_id": 30, "segmentation": box(6, 0, 10, 4), "iscrowd": 1},  # crowd
        {"id": 4, "category_id": 99, "segmentation": box(0, 8, 2, 10), "iscrowd": 0},  # not a kept class
    ]
    for order in (anns, anns[::-1]):  # the JSON order does not matter
        m = semantic_mask(order, {10: 1, 20: 2, 30: 3}, 10, 10)
        assert m[3, 3] == 2  # the small instance wins over the large one
        assert m[1, 1] == 1
        assert m[1, 7] == 1  # a non-crowd instance wins over a crowd region
        assert m[1, 9] == 255  # crowd only: ignored
        assert m[9, 1] == 0 and m[9, 9] == 0  # unkept category and empty: background


def test_coco_errors_name_the_file(tmp_path):
    save_image(tmp_path / "images" / "a.jpg", 8, 8)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 9, "width": 8},
                   {"id": 2, "file_name": "b.jpg", "height": 8, "width": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"b\.jpg: image listed in .*ann\.json not found"):
        build(CocoSemanticDataset, tmp_path, images="images", annotations="ann.json").split("train")
    save_image(tmp_path / "images" / "b.jpg", 8, 8)
    ds = build(CocoSemanticDataset, tmp_path, images="images", annotations="ann.json", test_fraction=0.5)
    split = next(s for s in (ds.split("train"), ds.split("test")) if "1" in s.ids)
    with pytest.raises(DataError, match=r"a\.jpg: image is 8x8 \(WxH\) but .*ann\.json says 8x9"):
        split.items[0]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: cannot read the annotations"):
        build(CocoSemanticDataset, tmp_path, images="images", annotations="bad.json").split("train")
    with pytest.raises(DataError, match="unknown categories 'y'"):
        build(CocoSemanticDataset, tmp_path, images="images", annotations="ann.json", categories=["y"]).split("train")
