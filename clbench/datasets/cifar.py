"""CIFAR-10 / CIFAR-100 in their "python version" layout (pickled batches).

``path`` is the extracted folder (``cifar-10-batches-py`` with ``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``; or ``cifar-100-python`` with ``train``, ``test``, ``meta``) or
the folder that contains one of them. ``variant: auto`` tells them apart by their files.

The batches are pickles, and unpickling can run code. They are read with an unpickler that
resolves only the few builtins and NumPy constructors these files need, so a hostile file fails
with a :class:`DataError` instead of executing anything.

Suite example::

    datasets:
      cifar10: {type: cifar, path: data/cifar-10-batches-py}
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option
from .base import ClassificationOptions, Dataset, Split, make_classification_splits

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

_CONTAINERS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "bytes",
    "bytearray",
    "str",
    "int",
    "float",
    "bool",
)
#: the globals a CIFAR pickle may reference: containers, and how NumPy rebuilds an array
_ALLOWED_GLOBALS = frozenset(
    [(m, n) for m in ("builtins", "__builtin__") for n in _CONTAINERS]
    + [("_codecs", "encode")]  # bytes pickled by Python 3 with protocol < 3
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"{pkg}.multiarray", n) for pkg in ("numpy.core", "numpy._core") for n in ("_reconstruct", "scalar")]
    + [(f"{pkg}.numeric", "_frombuffer") for pkg in ("numpy.core", "numpy._core")]
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core is numpy._core in NumPy 2
            return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """Unpickle a trusted-format file (``encoding="bytes"``, so keys are ``bytes``), safely."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err})") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: not a valid CIFAR pickle ({err})") from None
    except Exception as err:
        raise DataError(f"{path}: not a valid CIFAR pickle ({type(err).__name__}: {err})") from None


@dataclasses.dataclass
class CifarOptions(ClassificationOptions):
    path: str = option(
        help="cifar-10-batches-py or cifar-100-python folder (or the folder that holds it)", kw_only=True
    )
    variant: Literal["auto", "10", "100"] = option(
        "auto", "CIFAR-10 or CIFAR-100; auto: by the files present"
    )
    labels: Literal["fine", "coarse"] = option("fine", "CIFAR-100 label set: 100 fine or 20 coarse classes")

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: expected the extracted CIFAR folder")


def _get(batch: Any, path: Path, key: str) -> Any:
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    for k in (key.encode(), key):  # keys are bytes (Python 2 pickles); accept str too
        if k in batch:
            return batch[k]
    found = ", ".join(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise DataError(f"{path}: missing key {key!r} (found: {found})")


def _names(values: Any, path: Path, key: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{path}: {key!r} should be a list of class names")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 32, 32, 3] uint8, labels [N]) from one batch file."""
    batch = load_pickle(path)
    data = np.asarray(_get(batch, path, "data"))
    try:
        labels = np.asarray(_get(batch, path, label_key), dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {label_key!r} should be a list of integer labels") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {label_key!r} has {labels.size} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: {label_key!r} out of range [0, {num_classes}) (found {labels.min()}..{labels.max()})"
        )
    # rows are 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


class CifarDataset(Dataset):
    """CIFAR-10/100 ("python version" pickles): RGB uint8 images ``[32, 32, 3]``, integer labels."""

    Options = CifarOptions
    modality = "image"
    kind = "classification"

    def _layout(self) -> tuple[str, Path]:
        """("10" or "100", the folder holding the batches)."""
        root = self.resolve(self.options.path)
        if not root.is_dir():
            raise DataError(
                f"{root}: folder not found (expected the extracted {CIFAR10_FOLDER} or {CIFAR100_FOLDER}; "
                f"dataset {self.name!r})"
            )
        candidates = [
            ("10", folder)
            for folder in (root, root / CIFAR10_FOLDER)
            if (folder / "data_batch_1").is_file() or (folder / "batches.meta").is_file()
        ] + [
            ("100", folder)
            for folder in (root, root / CIFAR100_FOLDER)
            if (folder / "train").is_file() or (folder / "meta").is_file()
        ]
        wanted = self.options.variant
        matching = [c for c in candidates if wanted in ("auto", c[0])]
        if not matching:
            if wanted == "10":
                expected = f"{CIFAR10_FOLDER} files ({', '.join(CIFAR10_TRAIN)}, test_batch, batches.meta)"
            elif wanted == "100":
                expected = f"{CIFAR100_FOLDER} files (train, test, meta)"
            else:
                expected = f"the files of {CIFAR10_FOLDER} (data_batch_1 ...) or {CIFAR100_FOLDER} (train, test, meta)"
            raise DataError(f"{root}: no CIFAR data found (expected {expected})")
        if len({v for v, _ in matching}) > 1:
            raise DataError(f"{root}: holds both CIFAR-10 and CIFAR-100; set variant: '10' or '100'")
        return matching[0]

    def _files(self) -> tuple[str, Path, list[Path], Path, Path]:
        """(variant, meta file, train files, test file, folder), checked to exist."""
        variant, folder = self._layout()
        if variant == "10":
            meta, train, test = (
                folder / "batches.meta",
                [folder / n for n in CIFAR10_TRAIN],
                folder / "test_batch",
            )
        else:
            meta, train, test = folder / "meta", [folder / "train"], folder / "test"
        for f in (meta, *train, test):
            if not f.is_file():
                raise DataError(f"{f}: file not found (CIFAR-{variant} needs it)")
        return variant, meta, train, test, folder

    def sources(self) -> list[Path]:
        try:
            _, meta, train, test, _ = self._files()
        except DataError:
            return [self.resolve(self.options.path)]
        return [meta, *train, test]

    def check(self) -> None:
        self._files()

    def load(self) -> dict[str, Split]:
        variant, meta_path, train_files, test_file, folder = self._files()
        meta = load_pickle(meta_path)
        if variant == "10":
            self.classes, label_key = (
                _names(_get(meta, meta_path, "label_names"), meta_path, "label_names"),
                "labels",
            )
        else:
            key = f"{self.options.labels}_label_names"
            self.classes, label_key = (
                _names(_get(meta, meta_path, key), meta_path, key),
                f"{self.options.labels}_labels",
            )
        train_parts = [_read_batch(f, label_key, len(self.classes)) for f in train_files]
        train = (np.concatenate([x for x, _ in train_parts]), np.concatenate([y for _, y in train_parts]))
        test = _read_batch(test_file, label_key, len(self.classes))
        return make_classification_splits(
            modality=self.modality,
            options=self.options,
            seed=self.seed,
            source=str(folder),
            train=train,
            test=test,
        )
