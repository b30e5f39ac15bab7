"""Object-detection datasets (kind ``detection``): COCO instances JSON and Pascal VOC XML.

- ``coco``: a folder of images and a COCO instances JSON (``instances_val2017.json``: ``images``
  with ``id``/``file_name``/``width``/``height``, ``annotations`` with ``image_id``,
  ``category_id``, ``bbox`` [x, y, w, h] and optionally ``segmentation``/``area``/``iscrowd``,
  ``categories`` with ``id``/``name``). One file is one split (named by ``split``, default
  ``train``), or ``test_fraction`` holds out a seeded fraction of its images as ``test``, or
  ``splits`` names several files: ``{train: {images: ..., annotations: ...}, test: {...}}``.
- ``voc-detection``: a VOC devkit year folder (``Annotations/*.xml``, ``JPEGImages/``,
  ``ImageSets/Main/<set>.txt``). ``splits`` maps a split to image sets, each ``<set>`` in
  ``root`` or ``<year folder>/<set>`` below it, so VOC07+12 is ``root: VOCdevkit`` with
  ``splits: {train: [VOC2007/trainval, VOC2012/trainval], test: [VOC2007/test]}``. Boxes are
  converted as detectron2 does (``xmin - 1, ymin - 1, xmax, ymax``); ``difficult`` objects are kept
  for training (as detectron2 does) and ignored in evaluation (as VOC does).

Every split is a :class:`~clbench.datasets.base.Split` of :class:`DetectionItem` (boxes, labels
``0..C-1``, the original category ids, crowd/difficult flags, COCO segmentations; the image is
read only by ``load_image()``). ``dataset.category_ids[label]`` is the COCO category id of a
label, and ``coco_ground_truth(split)`` the split as a COCO-format dict for COCOeval.

Suite example::

    datasets:
      coco: {type: coco, splits: {train: {images: coco/train2017, annotations: coco/annotations/instances_train2017.json},
                                  test: {images: coco/val2017, annotations: coco/annotations/instances_val2017.json}}}
      voc: {type: voc-detection, root: VOCdevkit,
            splits: {train: [VOC2007/trainval, VOC2012/trainval], test: [VOC2007/test]}}

Malformed input (invalid JSON, missing keys, boxes outside their image, unknown categories or
classes) raises :class:`clbench.errors.DataError` naming the file and the entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Dataset, Split

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
#: boxes may overshoot their image by this many pixels (rounding in converted annotations)
_TOLERANCE = 1.0


@dataclasses.dataclass
class DetectionItem:
    """One image and its objects. ``boxes`` are [x, y, w, h] in pixels (COCO convention)."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float64, x y w h
    labels: np.ndarray  # [N] int64 in 0..C-1
    category_ids: np.ndarray  # [N] int64, the original ids
    iscrowd: np.ndarray  # [N] bool: crowd regions (never trained on, ignored in evaluation)
    difficult: np.ndarray  # [N] bool: VOC difficult (trained on, ignored in evaluation)
    areas: np.ndarray  # [N] float64: the annotation's area (segment area for COCO)
    segmentations: list[Any] | None = None  # COCO polygons / RLE per object, when present
    name: str = ""

    @property
    def boxes_xyxy(self) -> np.ndarray:
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)

    def load_image(self) -> Any:
        """The image as a PIL RGB image."""
        from PIL import Image

        try:
            with Image.open(self.path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"{self.path}: cannot read image ({err})") from None


class DetectionDataset(Dataset):
    """Shared part: categories, the COCO-format ground truth of a split."""

    modality = "image"
    kind = "detection"

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.categories: list[dict[str, Any]] = []
        self.category_ids: list[int] = []

    @property
    def has_masks(self) -> bool:
        return False

    def check(self) -> None:
        """Files exist, and the annotations parse and pass their checks (before any training)."""
        super().check()
        if self._splits is None:
            self._splits = self.load()

    def coco_ground_truth(self, split: str) -> dict[str, Any]:
        """The split as a COCO instances dict (crowd and difficult objects as ``iscrowd: 1``)."""
        items = self.split(split).items
        images, anns = [], []
        for it in items:
            images.append(
                {"id": it.image_id, "width": it.width, "height": it.height, "file_name": Path(it.path).name}
            )
            for j in range(len(it.labels)):
                ann = {
                    "id": len(anns) + 1,
                    "image_id": it.image_id,
                    "category_id": int(it.category_ids[j]),
                    "bbox": [float(v) for v in it.boxes[j]],
                    "area": float(it.areas[j]),
                    "iscrowd": int(bool(it.iscrowd[j]) or bool(it.difficult[j])),
                }
                if it.segmentations is not None and it.segmentations[j] is not None:
                    ann["segmentation"] = it.segmentations[j]
                anns.append(ann)
        return {"images": images, "annotations": anns, "categories": [dict(c) for c in self.categories]}


# -- COCO ------------------------------------------------------------------------------------


@dataclasses.dataclass
class CocoOptions:
    images: str | None = option(None, "folder of the images (one-file form)")
    annotations: str | None = option(None, "COCO instances JSON (one-file form)")
    split: str = option("train", "name of the split the one file makes (without test_fraction)")
    test_fraction: float | None = option(
        None, "hold out this seeded fraction of the file's images as split 'test' (the rest: 'train')"
    )
    splits: dict[str, dict[str, str]] = option(
        {}, "split name -> {images: folder, annotations: JSON} (instead of images/annotations)"
    )
    limit: int | None = option(None, "keep a seeded sample of N images per split")

    def validate(self) -> None:
        one = self.images is not None or self.annotations is not None
        if one and self.splits:
            raise ValueError("splits: give either images/annotations or splits, not both")
        if not one and not self.splits:
            raise ValueError("images: give images and annotations (or splits)")
        if one and (self.images is None or self.annotations is None):
            raise ValueError("annotations: images and annotations go together")
        for name, entry in self.splits.items():
            if set(entry) != {"images", "annotations"}:
                raise ValueError(f"splits.{name}: expected exactly the keys images and annotations")
        if self.test_fraction is not None:
            if self.splits:
                raise ValueError("test_fraction: only with the one-file form (images/annotations)")
            if not 0.0 < self.test_fraction < 1.0:
                raise ValueError("test_fraction: expected a number strictly between 0 and 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")


class CocoDataset(DetectionDataset):
    """Images + COCO instances JSON (boxes, and masks for Mask R-CNN)."""

    Options = CocoOptions

    def _files(self) -> dict[str, tuple[Path, Path]]:
        o = self.options
        if o.splits:
            return {
                n: (self.resolve(e["images"]), self.resolve(e["annotations"])) for n, e in o.splits.items()
            }
        return {o.split: (self.resolve(o.images), self.resolve(o.annotations))}

    def sources(self) -> list[Path]:
        return [p for pair in self._files().values() for p in pair]

    @property
    def has_masks(self) -> bool:
        if self._splits is None:
            self._splits = self.load()
        return any(it.segmentations is not None for s in self._splits.values() for it in s.items)

    def load(self) -> dict[str, Split]:
        splits: dict[str, Split] = {}
        for name, (images, ann_file) in self._files().items():
            cats, items = read_coco_instances(ann_file, images)
            if not self.categories:
                self.categories = cats
                self.category_ids = [c["id"] for c in cats]
                self.classes = [c["name"] for c in cats]
            elif [c["id"] for c in cats] != self.category_ids:
                raise DataError(f"{ann_file}: categories differ from those of the other splits")
            splits[name] = Split(items=items, modality="image", ids=[str(it.image_id) for it in items])
        o = self.options
        if o.test_fraction is not None:
            (items,) = [s.items for s in splits.values()]
            order = np.random.default_rng(self.seed).permutation(len(items))
            n_test = max(1, round(len(items) * o.test_fraction))
            if n_test >= len(items):
                raise DataError(
                    f"{o.annotations}: too few images ({len(items)}) for test_fraction {o.test_fraction}"
                )
            test, train = sorted(order[:n_test]), sorted(order[n_test:])
            splits = {
                "train": Split(
                    items=[items[i] for i in train],
                    modality="image",
                    ids=[str(items[i].image_id) for i in train],
                ),
                "test": Split(
                    items=[items[i] for i in test],
                    modality="image",
                    ids=[str(items[i].image_id) for i in test],
                ),
            }
        if o.limit is not None:
            for name, s in list(splits.items()):
                if o.limit < len(s.items):
                    keep = sorted(
                        np.random.default_rng(self.seed).choice(len(s.items), o.limit, replace=False)
                    )
                    splits[name] = Split(
                        items=[s.items[i] for i in keep], modality="image", ids=[s.ids[i] for i in keep]
                    )
        return splits


def _fail(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_coco_instances(annotations: Path, images: Path) -> tuple[list[dict[str, Any]], list[DetectionItem]]:
    """(categories sorted by id, one item per image in file order), validated."""
    try:
        data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(annotations, "file not found") from None
    except json.JSONDecodeError as err:
        raise _fail(annotations, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise _fail(annotations, "expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(annotations, f"missing key {key!r} (a list); is this an instances file?")
    cats: dict[int, dict[str, Any]] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise _fail(annotations, f"categories[{i}]: expected an object with an integer id and a name")
        cats[c["id"]] = {"id": c["id"], "name": str(c["name"])}
    if not cats:
        raise _fail(annotations, "no categories")
    ordered = [cats[k] for k in sorted(cats)]
    label_of = {c["id"]: i for i, c in enumerate(ordered)}
    imgs: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise _fail(annotations, f"images[{i}]: expected an object")
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                raise _fail(annotations, f"images[{i}]: missing key {key!r}")
        if not isinstance(im["id"], int) or im["id"] in imgs:
            raise _fail(annotations, f"images[{i}]: id {im['id']!r} is not a unique integer")
        if not (_number(im["width"]) and _number(im["height"]) and im["width"] > 0 and im["height"] > 0):
            raise _fail(annotations, f"images[{i}]: width and height must be positive numbers")
        imgs[im["id"]] = im
    per_image: dict[int, list[dict[str, Any]]] = {k: [] for k in imgs}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise _fail(annotations, f"annotations[{i}]: expected an object")
        for key in ("image_id", "category_id", "bbox"):
            if key not in a:
                raise _fail(annotations, f"annotations[{i}]: missing key {key!r}")
        if a["image_id"] not in imgs:
            raise _fail(annotations, f"annotations[{i}]: image_id {a['image_id']!r} is not in images")
        if a["category_id"] not in label_of:
            raise _fail(
                annotations, f"annotations[{i}]: category_id {a['category_id']!r} is not in categories"
            )
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            raise _fail(annotations, f"annotations[{i}]: bbox must be 4 numbers [x, y, w, h], got {box!r}")
        x, y, w, h = box
        im = imgs[a["image_id"]]
        if w < 0 or h < 0:
            raise _fail(annotations, f"annotations[{i}]: bbox {box} has a negative width or height")
        if (
            x < -_TOLERANCE
            or y < -_TOLERANCE
            or x + w > im["width"] + _TOLERANCE
            or y + h > im["height"] + _TOLERANCE
        ):
            raise _fail(
                annotations,
                f"annotations[{i}]: bbox {box} is outside its image {im['id']} ({im['width']}x{im['height']})",
            )
        per_image[a["image_id"]].append(a)
    folder = Path(images)
    items = []
    for im in data["images"]:
        anns = per_image[im["id"]]
        segs = [a.get("segmentation") for a in anns]
        items.append(
            DetectionItem(
                image_id=im["id"],
                path=str(folder / im["file_name"]),
                width=int(im["width"]),
                height=int(im["height"]),
                boxes=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
                labels=np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64),
                category_ids=np.array([a["category_id"] for a in anns], dtype=np.int64),
                iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                difficult=np.zeros(len(anns), dtype=bool),
                areas=np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], dtype=np.float64),
                segmentations=segs if anns and all(s is not None for s in segs) else None,
                name=str(im["file_name"]),
            )
        )
    return ordered, items


# -- Pascal VOC ------------------------------------------------------------------------------


@dataclasses.dataclass
class VocDetectionOptions:
    root: str = option(
        help="a VOC year folder (Annotations, JPEGImages, ImageSets/Main) or the devkit above it",
        kw_only=True,
    )
    splits: dict[str, list[str]] = option(
        {"train": ["trainval"], "test": ["test"]},
        "split name -> image sets: '<set>' in root, or '<year folder>/<set>' below it",
    )
    classes: list[str] = option(list(VOC_CLASSES), "class names in label order (default: the 20 VOC classes)")
    limit: int | None = option(None, "keep a seeded sample of N images per split")

    def validate(self) -> None:
        if not self.splits:
            raise ValueError("splits: give at least one split")
        for name, sets in self.splits.items():
            if not sets:
                raise ValueError(f"splits.{name}: give at least one image set")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: expected a non-empty list of distinct names")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")


class VocDetectionDataset(DetectionDataset):
    """Pascal VOC boxes from the devkit's XML files."""

    Options = VocDetectionOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.classes = list(options.classes)
        self.categories = [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)]
        self.category_ids = [c["id"] for c in self.categories]

    def _set_file(self, entry: str) -> tuple[Path, Path]:
        """(year folder, ImageSets/Main/<set>.txt) of one split entry."""
        root = self.resolve(self.options.root)
        year, _, name = entry.rpartition("/")
        folder = root / year if year else root
        return folder, folder / "ImageSets" / "Main" / f"{name}.txt"

    def sources(self) -> list[Path]:
        return [self._set_file(e)[1] for sets in self.options.splits.values() for e in sets]

    def load(self) -> dict[str, Split]:
        splits: dict[str, Split] = {}
        next_id = 1
        for name, sets in self.options.splits.items():
            items = []
            for entry in sets:
                folder, set_file = self._set_file(entry)
                try:
                    ids = [ln.split()[0] for ln in set_file.read_text().splitlines() if ln.strip()]
                except FileNotFoundError:
                    raise DataError(f"{set_file}: image set file not found (dataset {self.name!r})") from None
                for image_name in ids:
                    items.append(
                        parse_voc_xml(
                            folder / "Annotations" / f"{image_name}.xml", folder, self.classes, next_id
                        )
                    )
                    next_id += 1
            if self.options.limit is not None and self.options.limit < len(items):
                keep = sorted(
                    np.random.default_rng(self.seed).choice(len(items), self.options.limit, replace=False)
                )
                items = [items[i] for i in keep]
            splits[name] = Split(items=items, modality="image", ids=[it.name for it in items])
        return splits


def parse_voc_xml(xml_path: Path, folder: Path, classes: list[str], image_id: int) -> DetectionItem:
    """One VOC annotation file as a :class:`DetectionItem` (detectron2's box convention)."""
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation file not found") from None
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: invalid XML ({err})") from None

    def text(node: Any, tag: str, where: str) -> str:
        found = node.find(tag)
        if found is None or found.text is None:
            raise DataError(f"{xml_path}: {where}: missing <{tag}>")
        return found.text.strip()

    def num(node: Any, tag: str, where: str) -> float:
        value = text(node, tag, where)
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{xml_path}: {where}: <{tag}> is not a number: {value!r}") from None

    size = root.find("size")
    if size is None:
        raise DataError(f"{xml_path}: missing <size>")
    width, height = int(num(size, "width", "size")), int(num(size, "height", "size"))
    if width <= 0 or height <= 0:
        raise DataError(f"{xml_path}: size {width}x{height} is not positive")
    filename = root.findtext("filename") or f"{xml_path.stem}.jpg"
    label_of = {c: i for i, c in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k + 1}"
        cls = text(obj, "name", where)
        if cls not in label_of:
            raise DataError(
                f"{xml_path}: {where}: class {cls!r} is not in the class list ({', '.join(classes)})"
            )
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{xml_path}: {where}: missing <bndbox>")
        x1, y1, x2, y2 = (num(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1 = x1 - 1.0, y1 - 1.0  # VOC pixel indices are 1-based (detectron2's conversion)
        if (
            not (x2 > x1 and y2 > y1)
            or x1 < -_TOLERANCE
            or y1 < -_TOLERANCE
            or x2 > width + _TOLERANCE
            or y2 > height + _TOLERANCE
        ):
            raise DataError(
                f"{xml_path}: {where}: box ({x1 + 1:g}, {y1 + 1:g}, {x2:g}, {y2:g}) is empty or outside the {width}x{height} image"
            )
        boxes.append([x1, y1, x2 - x1, y2 - y1])
        labels.append(label_of[cls])
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    lab = np.array(labels, dtype=np.int64)
    return DetectionItem(
        image_id=image_id,
        path=str(folder / "JPEGImages" / filename),
        width=width,
        height=height,
        boxes=b,
        labels=lab,
        category_ids=lab + 1,
        iscrowd=np.zeros(len(lab), dtype=bool),
        difficult=np.array(difficult, dtype=bool),
        areas=b[:, 2] * b[:, 3],
        name=xml_path.stem,
    )


__all__ = [
    "VOC_CLASSES",
    "CocoDataset",
    "DetectionItem",
    "VocDetectionDataset",
    "parse_voc_xml",
    "read_coco_instances",
]
