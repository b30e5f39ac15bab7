"""``coco-semantic``: COCO instance annotations rasterised into semantic-segmentation masks.

Images and an instances JSON (``images`` + ``annotations``, divided by ``test_fraction``, or
``train_*`` + ``test_*``). Each instance's ``segmentation`` (polygons, uncompressed RLE as in
crowd annotations, or compressed RLE) is decoded with pycocotools' mask utilities exactly as
``COCO.annToMask`` does. Category ids map to contiguous class indices in id order, after class 0
``background`` unless ``background: false`` (then unlabelled pixels are ignored and classes
start at 0); ``categories`` keeps a subset by name (instances of other categories are not
drawn). Crowd regions are ignored (255). Where instances overlap, a pixel takes the class of
the *smallest* instance covering it (instances are painted by decreasing pixel area, ties by
annotation id), and a non-crowd instance wins over a crowd region, so the mask never depends on
the order of the JSON file. Masks are rasterised when an item is read (in DataLoader workers).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Split
from .imagefolder import load_rgb
from .segmentation import SegmentationDataset, SourceOptions, check_class_names, listing

__all__ = ["CocoSemanticDataset", "annotation_mask", "semantic_mask"]


@dataclasses.dataclass(kw_only=True)
class CocoSemanticOptions(SourceOptions):
    images: str | None = option(None, "image folder (one source, divided by test_fraction)")
    annotations: str | None = option(None, "instances JSON for `images`")
    train_images: str | None = option(None, "training image folder")
    train_annotations: str | None = option(None, "training instances JSON")
    test_images: str | None = option(None, "evaluation image folder")
    test_annotations: str | None = option(None, "evaluation instances JSON")
    categories: list[str] | None = option(None, "keep these category names only (others are not drawn)")
    background: bool = option(True, "class 0 'background' for unlabelled pixels (false: they are ignored)")

    def validate(self) -> None:
        self._validate_sources(("images", "annotations"), ("images", "annotations"))
        if self.categories is not None:
            check_class_names(self.categories, "categories")


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """One COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a uint8 [H, W] mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE per polygon, merged
        if not segmentation:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE (crowds)
    elif isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise TypeError(f"expected polygons or an RLE, got {type(segmentation).__name__}")
    with warnings.catch_warnings():  # pycocotools' decode warns about NumPy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def semantic_mask(
    annotations: Sequence[dict], class_of: dict[int, int], height: int, width: int, *,
    background: int | None = 0, ignore_index: int = 255,
) -> np.ndarray:
    """Compose instance annotations into one int64 class mask (see the module docstring for the
    overlap rule). ``class_of`` maps category id -> class index; other categories are not drawn."""
    mask = np.full((height, width), ignore_index if background is None else background, dtype=np.int64)
    drawn = [a for a in annotations if a["category_id"] in class_of]
    crowd = [a for a in drawn if a.get("iscrowd", 0)]
    instances = []
    for ann in drawn:
        if not ann.get("iscrowd", 0):
            m = annotation_mask(ann["segmentation"], height, width).astype(bool)
            instances.append((-int(m.sum()), int(ann["id"]), m, class_of[ann["category_id"]]))
    for ann in crowd:
        mask[annotation_mask(ann["segmentation"], height, width).astype(bool)] = ignore_index
    for _, _, m, cls in sorted(instances, key=lambda t: (t[0], t[1])):
        mask[m] = cls
    return mask


@dataclasses.dataclass(frozen=True)
class CocoReader:
    """(image path, height, width, annotations) -> (image, semantic mask)."""

    class_of: tuple[tuple[int, int], ...]
    background: bool
    ignore_index: int
    annotation_file: str

    def __call__(self, record: tuple[str, int, int, tuple]) -> tuple[np.ndarray, np.ndarray]:
        path, height, width, anns = record
        image = load_rgb(path)
        if image.shape[:2] != (height, width):
            raise DataError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but {self.annotation_file} "
                f"says {width}x{height}"
            )
        try:
            mask = semantic_mask(
                anns, dict(self.class_of), height, width,
                background=0 if self.background else None, ignore_index=self.ignore_index,
            )
        except (ValueError, TypeError, KeyError) as err:
            ids = ", ".join(str(a.get("id")) for a in anns[:5])
            raise DataError(
                f"{self.annotation_file}: cannot rasterise the annotations of {path} (ids {ids}...): {err}"
            ) from None
        return image, mask


class CocoSemanticDataset(SegmentationDataset):
    """COCO instance annotations rasterised to semantic masks (crowds ignored)."""

    Options: ClassVar[type] = CocoSemanticOptions

    def _sources(self) -> dict[str, tuple[Path, Path]]:
        o = self.options
        if o.images:
            return {"all": (self.resolve(o.images), self.resolve(o.annotations))}
        return {
            "train": (self.resolve(o.train_images), self.resolve(o.train_annotations)),
            "test": (self.resolve(o.test_images), self.resolve(o.test_annotations)),
        }

    def sources(self) -> list[Path]:
        return [p for pair in self._sources().values() for p in pair]

    def check(self) -> None:
        super().check()
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError:
            raise DataError(
                f"dataset {self.name!r}: coco-semantic needs pycocotools (pip install 'clbench[dense]')"
            ) from None

    def load(self) -> dict[str, Split]:
        self.check()
        parsed = {name: (images, _read_json(ann)) for name, (images, ann) in self._sources().items()}
        first_file = next(iter(self._sources().values()))[1]
        categories = _categories(parsed[next(iter(parsed))][1], first_file)
        for name, (_, data) in parsed.items():
            other = _categories(data, self._sources()[name][1])
            if other != categories:
                raise DataError(
                    f"{self._sources()[name][1]}: its categories differ from those of {first_file}"
                )
        if self.options.categories is not None:
            by_name = {n: i for i, n in categories}
            unknown = [n for n in self.options.categories if n not in by_name]
            if unknown:
                raise DataError(f"{first_file}: unknown categories {listing(unknown)}")
            wanted = set(self.options.categories)
            categories = [(i, n) for i, n in categories if n in wanted]
        offset = 1 if self.options.background else 0
        self.classes = (["background"] if self.options.background else []) + [n for _, n in categories]
        class_of = tuple((cat_id, k + offset) for k, (cat_id, _) in enumerate(categories))
        found, readers = {}, {}
        for name, (images, data) in parsed.items():
            ann_file = self._sources()[name][1]
            found[name] = _coco_records(data, images, ann_file)
            readers[name] = CocoReader(class_of, self.options.background, self.ignore_index, str(ann_file))
        if "all" in found:
            found = self._divide(*found["all"])
            readers = {"train": readers["all"], "test": readers["all"]}
        splits = {}
        for name in found:
            splits.update(self._finish({name: found[name]}, readers[name]))
        return splits


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the annotations ({type(err).__name__}: {err})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(f"{path}: expected a COCO instances file with a list {key!r}")
    return data


def _categories(data: dict, path: Path) -> list[tuple[int, str]]:
    try:
        return sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every category needs an integer 'id' and a 'name'") from None


def _coco_records(data: dict, images: Path, path: Path) -> tuple[list, list]:
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        try:
            by_image.setdefault(int(ann["image_id"]), []).append(
                {k: ann[k] for k in ("id", "category_id", "segmentation")} | {"iscrowd": int(ann.get("iscrowd", 0))}
            )
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: annotation {ann.get('id') if isinstance(ann, dict) else ann!r} lacks "
                "id, image_id, category_id or segmentation"
            ) from None
    records, ids = [], []
    for img in sorted(data["images"], key=lambda im: im.get("id", 0)):
        try:
            image_id, name, h, w = int(img["id"]), str(img["file_name"]), int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: image entry {img!r} lacks id, file_name, height or width") from None
        file = images / name
        if not file.is_file():
            raise DataError(f"{file}: image listed in {path} not found")
        records.append((str(file), h, w, tuple(by_image.get(image_id, ()))))
        ids.append(str(image_id))
    return records, ids
