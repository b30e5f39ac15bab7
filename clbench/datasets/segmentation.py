"""Semantic-segmentation datasets: image + per-pixel class mask, with an ignore index.

Every dataset here has ``kind = "segmentation"`` and the splits ``train`` and ``test``. An item
of a split is a pair ``(image, mask)``: the RGB image as ``uint8 [H, W, 3]`` and the mask as
``int64 [H, W]`` holding class indices in ``[0, len(classes))`` or ``ignore_index``. Files are
read (and COCO annotations rasterised) only when an item is indexed, so DataLoader workers share
the work; a malformed file raises :class:`DataError` naming it at that point.

Types:

- ``mask-folder``: a folder of images and a folder of PNG masks paired by file stem (the path
  relative to the folder, minus ``image_suffix`` / ``mask_suffix``), with a class list inline
  (``classes``) or in a file (``classes_file``, one name per line). Masks are palette (``P``) or
  single-channel index PNGs (the stored index is the label; a palette only colours it). Raw
  labels can be remapped: ``reduce_zero_label`` (ADE20K: 0 "other" becomes ignore, 1..150 become
  0..149) or ``label_map`` (Cityscapes: label ids -> train ids, ``unmapped: ignore``). Labels that
  are neither a class nor the ignore index are an error naming the file and the values.
- ``voc-segmentation``: a Pascal VOC devkit (``JPEGImages``, ``SegmentationClass``,
  ``ImageSets/Segmentation/<list>.txt``), 21 classes (background + 20), 255 = ignore (the object
  borders).
- ``coco-semantic`` (:mod:`clbench.datasets.coco_semantic`): COCO instance annotations
  rasterised into semantic masks.

``mask-folder`` and ``coco-semantic`` take either ``train_*`` and ``test_*`` sources, or one
source (``images`` + ``masks`` / ``annotations``) divided by ``test_fraction`` (seeded).
``limit`` keeps a seeded random subset of each split.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Dataset, Split
from .imagefolder import image_files, load_rgb

__all__ = [
    "VOC_CLASSES",
    "MaskDecoder",
    "MaskFolderDataset",
    "SegmentationDataset",
    "SegmentationItems",
    "VocSegmentationDataset",
    "read_mask",
]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


# -- items ------------------------------------------------------------------------------------


class SegmentationItems(Sequence):
    """``items[i]`` = ``reader(records[i])`` = ``(image uint8 [H,W,3], mask int64 [H,W])``.

    Picklable (records are paths and small dicts, the reader a frozen dataclass)."""

    def __init__(self, records: Sequence[Any], reader: Any):
        self.records = list(records)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return SegmentationItems(self.records[i], self.reader)
        return self.reader(self.records[int(i)])

    def __repr__(self) -> str:
        return f"SegmentationItems({len(self)} images)"


def read_mask(path: str | Path) -> np.ndarray:
    """The raw labels of a palette or single-channel PNG mask (the stored index, not the colour)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DataError(
                    f"{path}: expected a palette (P) or single-channel index mask, got mode {im.mode}; "
                    "colour-coded RGB masks must be converted to class indices first"
                )
            raw = np.asarray(im)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the mask ({type(err).__name__}: {err})") from None
    return raw.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class MaskDecoder:
    """Raw mask labels -> class indices (or ``ignore_index``), with the value checks."""

    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False
    label_map: tuple[tuple[int, int], ...] | None = None
    unmapped: str = "error"

    def __call__(self, raw: np.ndarray, path: Any) -> np.ndarray:
        ign = self.ignore_index
        if self.label_map is not None:
            # a lookup table over the values present (PNG labels are non-negative integers)
            values = np.flatnonzero(np.bincount(raw.ravel())) if raw.size else np.zeros(0, dtype=np.int64)
            mapping = dict(self.label_map)
            fallback = ign if self.unmapped == "ignore" else None
            out_values = [mapping.get(int(v), ign if int(v) == ign else fallback) for v in values]
            unknown = [int(v) for v, o in zip(values, out_values) if o is None]
            if unknown:
                raise DataError(
                    f"{path}: label values {listing(unknown)} are not in label_map "
                    "(add them, or set unmapped: ignore)"
                )
            lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.int64)
            lut[values] = out_values
            mask = lut[raw]
        elif self.reduce_zero_label:
            mask = raw - 1
            mask[(raw == 0) | (raw == ign)] = ign
        else:
            mask = raw
        bad = (mask != ign) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            hint = " (ADE20K-style 0 = 'other'? set reduce_zero_label: true)" if self.num_classes in values else ""
            raise DataError(
                f"{path}: label values {listing(values)} are neither one of the {self.num_classes} classes "
                f"(0..{self.num_classes - 1}) nor the ignore index {ign}{hint}"
            )
        return mask


def listing(values: Sequence[int], n: int = 10) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:n])
    return shown + (f" (and {len(values) - n} more)" if len(values) > n else "")


@dataclasses.dataclass(frozen=True)
class MaskFileReader:
    """(image path, mask path) -> (image, decoded mask), checking that their sizes agree."""

    decoder: MaskDecoder

    def __call__(self, record: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = record
        if not os.path.exists(mask_path):
            raise DataError(f"{mask_path}: mask not found (for image {image_path})")
        image = load_rgb(image_path)
        raw = read_mask(mask_path)
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, self.decoder(raw, mask_path)


# -- shared dataset machinery -------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """Base of the segmentation datasets: ``classes``, ``ignore_index``, train/test splits."""

    modality = "image"
    kind = "segmentation"
    ignore_index: int = 255

    def _finish(self, records: dict[str, tuple[list[Any], list[str]]], reader: Any) -> dict[str, Split]:
        """Apply ``limit`` and build the Splits from (records, ids) per split."""
        splits = {}
        for name, (recs, ids) in records.items():
            if not recs:
                raise DataError(f"dataset {self.name!r}: the {name} split is empty")
            limit = getattr(self.options, "limit", None)
            if limit is not None and limit < len(recs):
                keep = np.sort(np.random.default_rng([self.seed, 17]).choice(len(recs), size=limit, replace=False))
                recs, ids = [recs[i] for i in keep], [ids[i] for i in keep]
            splits[name] = Split(items=SegmentationItems(recs, reader), modality="image", ids=ids)
        return splits

    def _divide(self, recs: list[Any], ids: list[str]) -> dict[str, tuple[list[Any], list[str]]]:
        """One source divided into train and test by ``test_fraction`` (seeded)."""
        n = len(recs)
        if n < 2:
            raise DataError(f"dataset {self.name!r}: {n} image(s) cannot be divided into train and test")
        n_test = min(n - 1, max(1, round(n * self.options.test_fraction)))
        order = np.random.default_rng([self.seed, 23]).permutation(n)
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
        return {
            "train": ([recs[i] for i in train], [ids[i] for i in train]),
            "test": ([recs[i] for i in test], [ids[i] for i in test]),
        }


@dataclasses.dataclass(kw_only=True)
class SourceOptions:
    limit: int | None = option(None, "keep a seeded random subset of this many images per split")
    test_fraction: float = option(0.2, "held-out fraction when one source is given (seeded)")

    def _validate_sources(self, single: tuple[str, ...], split: tuple[str, ...]) -> None:
        given_single = [k for k in single if getattr(self, k)]
        given_split = [f"{s}_{k}" for s in ("train", "test") for k in split if getattr(self, f"{s}_{k}")]
        if given_single and given_split:
            raise ValueError(
                f"give either {' + '.join(single)} (one source, divided by test_fraction) or the "
                f"train_/test_ sources, not both (got {', '.join(given_single + given_split)})"
            )
        need = list(single) if given_single or not given_split else [f"{s}_{k}" for s in ("train", "test") for k in split]
        missing = [k for k in need if not getattr(self, k)]
        if missing:
            raise ValueError(f"{missing[0]}: required (expected a path)")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction: expected a number strictly between 0 and 1")


# -- mask-folder ---------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class MaskFolderOptions(SourceOptions):
    images: str | None = option(None, "image folder (one source, divided by test_fraction)")
    masks: str | None = option(None, "PNG mask folder paired with `images`")
    train_images: str | None = option(None, "training image folder")
    train_masks: str | None = option(None, "training mask folder")
    test_images: str | None = option(None, "evaluation image folder")
    test_masks: str | None = option(None, "evaluation mask folder")
    classes: list[str] | None = option(None, "class names, index order (or classes_file)")
    classes_file: str | None = option(None, "text file with one class name per line, index order")
    image_suffix: str | None = option(None, "image name ending removed to pair (default: the extension)")
    mask_suffix: str = option(".png", "mask name ending removed to pair, e.g. _gtFine_labelIds.png")
    ignore_index: int = option(255, "mask value excluded from training and scoring")
    reduce_zero_label: bool = option(False, "ADE20K: label 0 becomes ignore, every other label minus 1")
    label_map: dict[int, int] | None = option(None, "raw label -> class index (Cityscapes ids -> train ids)")
    unmapped: Literal["error", "ignore"] = option("error", "raw labels missing from label_map: error or ignore")

    def validate(self) -> None:
        self._validate_sources(("images", "masks"), ("images", "masks"))
        if (self.classes is None) == (self.classes_file is None):
            raise ValueError("classes: give the class names inline (classes) or in a file (classes_file), one of them")
        if self.classes is not None:
            check_class_names(self.classes, "classes")
        if self.reduce_zero_label and self.label_map is not None:
            raise ValueError("reduce_zero_label: cannot be combined with label_map (map the labels there)")
        if self.unmapped != "error" and self.label_map is None:
            raise ValueError("unmapped: only used together with label_map")
        if not self.mask_suffix:
            raise ValueError("mask_suffix: expected a file ending such as .png")


def check_class_names(names: Sequence[str], where: str) -> None:
    if not names:
        raise ValueError(f"{where}: expected at least one class name")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: class {name!r} is listed twice")
        seen.add(name)


def pair_files(images: Path, masks: Path, image_suffix: str | None, mask_suffix: str) -> tuple[list, list]:
    """(image, mask) path pairs and their keys, matched by relative path minus the suffixes."""
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found")
    if not masks.is_dir():
        raise DataError(f"{masks}: mask folder not found")
    by_key: dict[str, str] = {}
    for path in image_files(images):
        rel = os.path.relpath(path, images)
        if image_suffix is None:
            key = os.path.splitext(rel)[0]
        elif rel.endswith(image_suffix):
            key = rel[: -len(image_suffix)]
        else:
            continue
        if key in by_key:
            raise DataError(f"{path}: two images pair with the same mask name ({by_key[key]})")
        by_key[key] = path
    if not by_key:
        ending = f" ending in {image_suffix!r}" if image_suffix else ""
        raise DataError(f"{images}: no images{ending} found")
    records, ids = [], []
    for key in sorted(by_key):
        mask = masks / (key + mask_suffix)
        if not mask.is_file():
            raise DataError(f"{by_key[key]}: no mask for this image (expected {mask})")
        records.append((by_key[key], str(mask)))
        ids.append(key)
    return records, ids


class MaskFolderDataset(SegmentationDataset):
    """Images + PNG masks paired by stem (VOC, ADE20K or Cityscapes style), with a class list."""

    Options: ClassVar[type] = MaskFolderOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.ignore_index = options.ignore_index

    def _folders(self) -> dict[str, tuple[Path, Path]]:
        o = self.options
        if o.images:
            return {"all": (self.resolve(o.images), self.resolve(o.masks))}
        return {
            "train": (self.resolve(o.train_images), self.resolve(o.train_masks)),
            "test": (self.resolve(o.test_images), self.resolve(o.test_masks)),
        }

    def sources(self) -> list[Path]:
        paths = [p for pair in self._folders().values() for p in pair]
        if self.options.classes_file:
            paths.append(self.resolve(self.options.classes_file))
        return paths

    def _classes(self) -> list[str]:
        if self.options.classes is not None:
            return list(self.options.classes)
        path = self.resolve(self.options.classes_file)
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as err:
            raise DataError(f"{path}: cannot read the class list ({err})") from None
        try:
            check_class_names(names, "class list")
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None
        return names

    def check(self) -> None:
        super().check()
        classes = self._classes()
        if self.options.ignore_index in range(len(classes)):
            raise DataError(
                f"dataset {self.name!r}: ignore_index {self.options.ignore_index} is also a class index "
                f"(0..{len(classes) - 1})"
            )

    def load(self) -> dict[str, Split]:
        self.check()
        o = self.options
        self.classes = self._classes()
        label_map = tuple(sorted(o.label_map.items())) if o.label_map is not None else None
        decoder = MaskDecoder(len(self.classes), o.ignore_index, o.reduce_zero_label, label_map, o.unmapped)
        found = {
            name: pair_files(images, masks, o.image_suffix, o.mask_suffix)
            for name, (images, masks) in self._folders().items()
        }
        if "all" in found:
            found = self._divide(*found["all"])
        return self._finish(found, MaskFileReader(decoder))


# -- voc-segmentation ------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class VocSegmentationOptions:
    path: str = option(help="VOC devkit year folder (holding JPEGImages, SegmentationClass, ImageSets)")
    train_list: str = option("train", "ImageSets/Segmentation list used for training")
    test_list: str = option("val", "ImageSets/Segmentation list used for evaluation")
    masks_folder: str = option("SegmentationClass", "mask folder (e.g. SegmentationClassAug for SBD-augmented)")
    limit: int | None = option(None, "keep a seeded random subset of this many images per split")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: expected the VOC year folder, e.g. VOCdevkit/VOC2012")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")


class VocSegmentationDataset(SegmentationDataset):
    """Pascal VOC semantic segmentation: 21 classes, 255 = ignore (object borders)."""

    Options: ClassVar[type] = VocSegmentationOptions

    def _root(self) -> Path:
        root = self.resolve(self.options.path)
        if not (root / "ImageSets").is_dir() and (root / "VOC2012" / "ImageSets").is_dir():
            return root / "VOC2012"  # pointed at VOCdevkit/
        return root

    def _list(self, name: str) -> Path:
        return self._root() / "ImageSets" / "Segmentation" / f"{name}.txt"

    def sources(self) -> list[Path]:
        root = self._root()
        o = self.options
        return [self._list(o.train_list), self._list(o.test_list), root / "JPEGImages", root / o.masks_folder]

    def load(self) -> dict[str, Split]:
        self.check()
        root = self._root()
        self.classes = list(VOC_CLASSES)
        found = {}
        for split, list_name in (("train", self.options.train_list), ("test", self.options.test_list)):
            list_file = self._list(list_name)
            records, ids = [], []
            for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
                stem = line.strip().split(" ")[0] if line.strip() else ""
                if not stem:
                    continue
                image = root / "JPEGImages" / f"{stem}.jpg"
                mask = root / self.options.masks_folder / f"{stem}.png"
                for path, what in ((image, "image"), (mask, "mask")):
                    if not path.is_file():
                        raise DataError(f"{list_file}:{line_no}: {what} {path} not found for {stem!r}")
                records.append((str(image), str(mask)))
                ids.append(stem)
            found[split] = (records, ids)
        return self._finish(found, MaskFileReader(MaskDecoder(len(VOC_CLASSES), 255)))
