"""A folder of images, one subfolder per class, read lazily.

Two layouts::

    path/train/<class>/*.jpg        path/<class>/*.jpg
    path/test/<class>/*.jpg         (one split, divided by test_fraction, seeded and stratified)

(``val/`` stands in for ``test/`` when there is no ``test/``.)

Class names are the subfolder names, sorted; with ``train/`` and ``test/`` the test classes must
be among the train classes and get the same indices. Images are found recursively inside each
class folder (extensions: jpg, jpeg, png, bmp, webp, gif, tif, tiff; any letter case); hidden
folders are skipped. A class folder without images is an error, not a silently missing class.

Each item is opened only when indexed and returned as an RGB ``uint8`` array ``[H, W, 3]`` (the
first frame of a GIF; EXIF orientation is not applied, as in torchvision's ImageFolder).

An image that cannot be decoded fails its cells with a DataError naming the file
(``on_decode_error: fail``, the default). With ``on_decode_error: skip`` every image is decoded
once when the dataset loads and those that fail are left out; their number and (the first 20)
paths are recorded in each result's ``features[].dataset_info`` (``skipped_undecodable``,
``skipped_files``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataError
from ..options import option
from .base import ClassificationOptions, Dataset, Split, make_classification_splits

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


@dataclasses.dataclass
class ImageFolderOptions(ClassificationOptions):
    path: str = option(
        help="folder with train/ and test/ class subfolders, or one folder of class subfolders", kw_only=True
    )
    on_decode_error: Literal["fail", "skip"] = option(
        "fail", "an undecodable image: fail the cell naming it, or skip it (decodes all images up front; counted)"
    )

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: expected a folder of class subfolders")


class ImageFiles(Sequence):
    """Image files opened on access: ``files[i]`` is an RGB uint8 array ``[H, W, 3]``.

    Picklable (it holds only paths), so DataLoader workers can read it.
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return ImageFiles(self.paths[i])
        return load_rgb(self.paths[i])

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.paths)} images)"


def load_rgb(path: str | Path) -> np.ndarray:
    """One image file as an RGB uint8 array; DataError naming the file when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


def class_folders(folder: Path) -> list[Path]:
    """The class subfolders of ``folder``, sorted by name; DataError if there are none."""
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of class subfolders")
    try:
        subdirs = sorted(
            (p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name
        )
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err})") from None
    if not subdirs:
        loose = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        extra = f"; it holds {loose} images directly, put each class in its own subfolder" if loose else ""
        raise DataError(f"{folder}: no class subfolders found (expected <class>/<image> files){extra}")
    return subdirs


def image_files(folder: Path) -> list[str]:
    """Image paths under ``folder`` (recursive, sorted, hidden folders skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and not f.startswith(".")
        )
    return found


def scan(folder: Path) -> dict[str, list[str]]:
    """Class name -> image paths, for each class subfolder of ``folder``."""
    classes = {}
    for sub in class_folders(folder):
        files = image_files(sub)
        if not files:
            raise DataError(
                f"{sub}: class folder without images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        classes[sub.name] = files
    return classes


class ImageFolderDataset(Dataset):
    """Images in class subfolders (``train/`` + ``test/``, or one folder split by ``test_fraction``)."""

    Options = ImageFolderOptions
    modality = "image"
    kind = "classification"

    def _root(self) -> Path:
        return self.resolve(self.options.path)

    def info(self) -> dict:
        if self.options.on_decode_error != "skip" or self._splits is None:
            return {}
        return {"skipped_undecodable": len(self._skipped), "skipped_files": self._skipped[:20]}

    def _scan(self, folder: Path) -> dict[str, list[str]]:
        found = scan(folder)
        if self.options.on_decode_error == "skip":
            for name, paths in found.items():
                good = []
                for p in paths:
                    try:
                        load_rgb(p)
                    except DataError:
                        self._skipped.append(p)
                    else:
                        good.append(p)
                if not good:
                    raise DataError(f"{folder / name}: no image of this class can be decoded")
                found[name] = good
        return found

    def _split_folders(self) -> tuple[Path, Path] | None:
        """(train, test) folders when the data comes split, else None (one folder of classes)."""
        root = self._root()
        train = root / "train"
        tests = [root / name for name in ("test", "val") if (root / name).is_dir()]
        if train.is_dir() and tests:
            return train, tests[0]
        if train.is_dir() or tests:
            have, lack = ("train/", "test/ (or val/)") if train.is_dir() else (f"{tests[0].name}/", "train/")
            raise DataError(
                f"{root}: has {have} but no {lack}; add it, or point path at one folder of class "
                "subfolders to split it by test_fraction"
            )
        return None

    def sources(self) -> list[Path]:
        return [self._root()]

    def check(self) -> None:
        root = self._root()
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found (dataset {self.name!r})")
        for folder in self._split_folders() or (root,):
            class_folders(folder)

    def load(self) -> dict[str, Split]:
        root = self._root()
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found (dataset {self.name!r})")
        common = {"modality": self.modality, "options": self.options, "seed": self.seed, "source": str(root)}
        self._skipped: list[str] = []
        split_folders = self._split_folders()
        if split_folders is None:
            found = self._scan(root)
            self.classes = list(found)
            return make_classification_splits(single=_items(found, self.classes), **common)
        train_folder, test_folder = split_folders
        train, test = self._scan(train_folder), self._scan(test_folder)
        unknown = [name for name in test if name not in train]
        if unknown:
            raise DataError(
                f"{test_folder}: test classes not found in {train_folder}: {', '.join(unknown[:5])}"
                + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
            )
        self.classes = list(train)
        return make_classification_splits(
            train=_items(train, self.classes), test=_items(test, self.classes), **common
        )


def _items(found: dict[str, list[str]], classes: list[str]) -> tuple[ImageFiles, np.ndarray]:
    index = {name: i for i, name in enumerate(classes)}
    paths = [p for name in found for p in found[name]]
    labels = np.fromiter(
        (index[name] for name in found for _ in found[name]), dtype=np.int64, count=len(paths)
    )
    return ImageFiles(paths), labels
