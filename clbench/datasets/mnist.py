"""MNIST-style IDX files: ``train-images-idx3-ubyte`` & co., each optionally gzipped.

The same layout serves MNIST, Fashion-MNIST and KMNIST. A folder holding only the ``t10k``
files (such as a test-set-only copy) becomes one split, divided by ``test_fraction``.

Suite example::

    datasets:
      mnist: {type: mnist, path: data/mnist, limit: 5000}

IDX layout (big-endian): two zero bytes, a type code (``0x08`` = unsigned byte), the number of
dimensions, one uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option
from .base import ClassificationOptions, Dataset, Split, make_classification_splits

#: IDX type code -> (numpy dtype, big-endian), as defined by the format
IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: split prefix -> accepted spellings of (images, labels) files, without the optional ".gz"
_FILES = {
    "train": (
        ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
        ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ),
    "t10k": (
        ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
        ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
    ),
}


@dataclasses.dataclass
class MnistOptions(ClassificationOptions):
    path: str = option(
        help="folder with the IDX files (train-images-idx3-ubyte, ..., t10k-labels-idx1-ubyte; .gz allowed)",
        kw_only=True,
    )

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: expected the folder holding the IDX files")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(path: Path) -> tuple[str, tuple[int, ...]]:
    """(numpy dtype, shape) from an IDX file's header; DataError naming the file when malformed."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_TYPES:
                raise DataError(
                    f"{path}: not an IDX file (expected a magic number 0x0000TTNN with a known "
                    f"type code TT, got {head.hex() or 'an empty file'})"
                )
            ndim = head[3]
            raw = f.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the IDX file ({err})") from None
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (expected {ndim} dimension sizes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    return IDX_TYPES[head[2]], shape


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (plain or gzipped), in native byte order.

    >>> read_idx(Path("t10k-labels-idx1-ubyte.gz")).shape  # doctest: +SKIP
    (10000,)
    """
    dtype, shape = read_idx_header(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the IDX file ({err})") from None
    offset = 4 + 4 * len(shape)
    itemsize = np.dtype(dtype).itemsize
    expected = int(np.prod(shape, dtype=np.int64)) * itemsize
    if len(data) - offset != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(data) - offset} bytes after the header"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return arr.astype(np.dtype(dtype).newbyteorder("="), copy=False)


class MnistDataset(Dataset):
    """MNIST-style IDX files: uint8 grayscale images ``[H, W]``, integer labels."""

    Options = MnistOptions
    modality = "image"
    kind = "classification"

    def _folder(self) -> Path:
        return self.resolve(self.options.path)

    def _find(self, names: tuple[str, ...]) -> Path | None:
        folder = self._folder()
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def _locate(self) -> dict[str, tuple[Path, Path]]:
        """Split prefix -> (images file, labels file) for each complete pair found."""
        folder = self._folder()
        if not folder.is_dir():
            raise DataError(
                f"{folder}: folder not found (expected MNIST IDX files there; dataset {self.name!r})"
            )
        found: dict[str, tuple[Path, Path]] = {}
        for prefix, (image_names, label_names) in _FILES.items():
            images, labels = self._find(image_names), self._find(label_names)
            if images is not None and labels is not None:
                found[prefix] = (images, labels)
            elif images is not None or labels is not None:
                missing = label_names[0] if labels is None else image_names[0]
                raise DataError(f"{folder}: found {(images or labels).name} but not {missing}[.gz]")
        if not found:
            expected = ", ".join(names[0] for pair in _FILES.values() for names in pair)
            raise DataError(f"{folder}: no MNIST IDX files found (expected {expected}, each optionally .gz)")
        return found

    def sources(self) -> list[Path]:
        try:
            return [p for pair in self._locate().values() for p in pair]
        except DataError:
            return [self._folder()]

    def check(self) -> None:
        for images, labels in self._locate().values():
            self._check_pair(images, read_idx_header(images), labels, read_idx_header(labels))

    @staticmethod
    def _check_pair(images: Path, image_head: tuple, labels: Path, label_head: tuple) -> None:
        (image_dtype, image_shape), (label_dtype, label_shape) = image_head, label_head
        if len(image_shape) != 3 or np.dtype(image_dtype) != np.uint8:
            raise DataError(
                f"{images}: expected unsigned-byte images [N, H, W] (magic 0x00000803), "
                f"got {np.dtype(image_dtype).name} of shape {image_shape}"
            )
        if len(label_shape) != 1 or np.dtype(label_dtype) != np.uint8:
            raise DataError(
                f"{labels}: expected unsigned-byte labels [N] (magic 0x00000801), "
                f"got {np.dtype(label_dtype).name} of shape {label_shape}"
            )
        if image_shape[0] != label_shape[0]:
            raise DataError(f"{labels}: {label_shape[0]} labels for {image_shape[0]} images in {images.name}")

    def _read_pair(self, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
        self._check_pair(images, read_idx_header(images), labels, read_idx_header(labels))
        return read_idx(images), read_idx(labels).astype(np.int64)

    def load(self) -> dict[str, Split]:
        found = self._locate()
        pairs = {prefix: self._read_pair(*files) for prefix, files in found.items()}
        num_classes = max((int(y.max()) + 1 for _, y in pairs.values() if len(y)), default=0)
        self.classes = [str(i) for i in range(num_classes)]
        common: dict[str, Any] = {
            "modality": self.modality,
            "options": self.options,
            "seed": self.seed,
            "source": str(self._folder()),
        }
        if len(pairs) == 2:
            return make_classification_splits(train=pairs["train"], test=pairs["t10k"], **common)
        (single,) = pairs.values()
        return make_classification_splits(single=single, **common)
