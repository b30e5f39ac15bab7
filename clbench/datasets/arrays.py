"""Precomputed feature vectors in one ``.npz`` file: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Each ``x`` is ``[N, D]`` (rows with more dimensions are flattened), each ``y`` holds ``N`` integer
labels. An optional ``classes`` array names the classes. Write one with::

    np.savez("feats.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)

and point a suite at it: ``{type: arrays, path: feats.npz}``. The modality is ``"array"``, so
encoders that take raw vectors (``identity``) serve it.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..options import option
from .base import ClassificationOptions, Dataset, Split, make_classification_splits

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class ArraysOptions(ClassificationOptions):
    path: str = option(
        help=".npz file with x_train, y_train, x_test, y_test (optional: classes)", kw_only=True
    )

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: expected an .npz file")


def _open_npz(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: .npz file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None


def _get(npz, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except KeyError:
        raise DataError(
            f"{path}: missing array {key!r} (expected {', '.join(REQUIRED_KEYS)}; found {', '.join(npz.files)})"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read array {key!r} ({err})") from None


def _labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: {key!r} must be one label per row, got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"{path}: {key!r} must hold integer class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise DataError(f"{path}: {key!r} must hold integer class labels, found non-integer values")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: {key!r} must hold non-negative class labels, found {int(y.min())}")
    return y


def _features(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim < 2:
        raise DataError(f"{path}: {key!r} must be a matrix [N, D], got shape {x.shape}")
    if len(x) == 0:
        raise DataError(f"{path}: {key!r} has no rows (the split is empty)")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: {key!r} must hold real numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: {key!r} contains NaN or infinite values")
    return x


class ArraysDataset(Dataset):
    """Feature vectors ``[N, D]`` (float32) with integer labels, read from one ``.npz`` file."""

    Options = ArraysOptions
    modality = "array"
    kind = "classification"

    def _path(self) -> Path:
        return self.resolve(self.options.path)

    def sources(self) -> list[Path]:
        return [self._path()]

    def check(self) -> None:
        path = self._path()
        with _open_npz(path) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise DataError(
                f"{path}: missing array {missing[0]!r} (expected {', '.join(REQUIRED_KEYS)}; "
                f"found {', '.join(npz.files) or 'none'})"
            )

    def load(self) -> dict[str, Split]:
        path = self._path()
        with _open_npz(path) as npz:
            raw = {key: _get(npz, path, key) for key in REQUIRED_KEYS}
            names = _get(npz, path, "classes") if "classes" in npz.files else None
        splits = {}
        for split in ("train", "test"):
            x = _features(raw[f"x_{split}"], path, f"x_{split}")
            y = _labels(raw[f"y_{split}"], path, f"y_{split}")
            if len(x) != len(y):
                raise DataError(f"{path}: x_{split} has {len(x)} rows but y_{split} has {len(y)} labels")
            splits[split] = (x, y)
        dims = {split: x.shape[1] for split, (x, _) in splits.items()}
        if dims["train"] != dims["test"]:
            raise DataError(f"{path}: x_train has {dims['train']} columns but x_test has {dims['test']}")
        num_classes = max(int(y.max()) + 1 if len(y) else 0 for _, y in splits.values())
        if names is not None:
            names = [str(n) for n in np.asarray(names).reshape(-1)]
            if len(names) < num_classes:
                raise DataError(
                    f"{path}: 'classes' names {len(names)} classes but labels go up to {num_classes - 1}"
                )
            self.classes = names
        else:
            self.classes = [str(i) for i in range(num_classes)]
        return make_classification_splits(
            modality=self.modality, options=self.options, seed=self.seed, source=str(path), **splits
        )
