"""The dataset protocol: named splits of samples of one modality, with labels when they exist.

A dataset is built cheaply from its options; files are read on first use of a split. ``check()``
runs at validation time and raises :class:`clbench.errors.DataError` naming the missing or
malformed file. ``fingerprint()`` identifies the data (options + source file identities) for
the feature cache.

Classification datasets (``kind = "classification"``) provide ``train`` and ``test`` splits with
integer labels in ``[0, num_classes)``; the helper :func:`make_classification_splits` applies the
shared ``limit`` and ``test_fraction`` options.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError
from ..options import option


@dataclasses.dataclass
class Split:
    """One split: ``items[i]`` is a raw sample (image array / PIL image, text, vector)."""

    items: Sequence[Any]
    modality: str
    labels: np.ndarray | None = None
    #: "query" / "document" for retrieval corpora (encoders may prompt differently), else None
    role: str | None = None
    ids: Sequence[str] | None = None

    def __len__(self) -> int:
        return len(self.items)


class Dataset:
    """Base class of dataset plugins. Subclasses set ``Options``, ``modality`` and ``kind``."""

    Options: ClassVar[type]
    modality: ClassVar[str] = "image"
    kind: ClassVar[str] = "classification"

    def __init__(self, options: Any, *, name: str = "dataset", root: Path | None = None, seed: int = 0):
        self.options = options
        self.name = name
        self.root = Path(root) if root is not None else Path.cwd()
        self.seed = seed
        self._splits: dict[str, Split] | None = None
        self.classes: list[str] | None = None

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def sources(self) -> list[Path]:
        """Files or folders the data comes from (checked to exist, fingerprinted)."""
        return []

    def check(self) -> None:
        for src in self.sources():
            if not src.exists():
                raise DataError(f"{src}: file or folder not found (dataset {self.name!r})")

    def fingerprint(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "options": dataclasses.asdict(self.options),
            "seed": self.seed,
            "sources": [file_identity(p) for p in self.sources()],
        }

    def load(self) -> dict[str, Split]:
        """Read the data: a mapping split name -> Split. Called once, lazily."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What loading found worth recording in results (e.g. skipped files); after ``load``."""
        return {}

    def split(self, name: str) -> Split:
        if self._splits is None:
            self._splits = self.load()
        if name not in self._splits:
            raise DataError(f"dataset {self.name!r} has no split {name!r} (has: {', '.join(self._splits)})")
        return self._splits[name]

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return None


def file_identity(path: Path) -> dict[str, Any]:
    """Cheap identity of a file or folder: path, size and mtime (folders: of their files)."""
    path = Path(path)
    try:
        if path.is_dir():
            size, mtime, count = 0, 0, 0
            for dirpath, _, files in os.walk(path):
                for f in files:
                    st = os.stat(os.path.join(dirpath, f))
                    size += st.st_size
                    mtime = max(mtime, st.st_mtime_ns)
                    count += 1
            return {"path": str(path.resolve()), "files": count, "size": size, "mtime_ns": mtime}
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(path), "missing": True}


@dataclasses.dataclass
class ClassificationOptions:
    """Options shared by image-classification datasets."""

    limit: int | None = option(None, "cap samples per split (seeded, stratified)")
    test_fraction: float = option(0.2, "held-out fraction when the data has a single split (seeded, stratified)")

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction: expected a number strictly between 0 and 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn without replacement, class proportions kept (sorted, deterministic)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        keep, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded draw
        keep = np.random.default_rng(seed).choice(idx, size=n, replace=False)
    return np.sort(keep)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), stratified and seeded."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    except ValueError:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed)
    return np.sort(tr), np.sort(te)


class _Subset:
    """A lazy view of ``items`` at ``indices``."""

    def __init__(self, items: Sequence[Any], indices: np.ndarray):
        self.items = items
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.items[int(self.indices[i])]


def subset(items: Sequence[Any], indices: np.ndarray) -> Sequence[Any]:
    if isinstance(items, np.ndarray):
        return items[indices]
    return _Subset(items, indices)


def make_classification_splits(
    *,
    modality: str,
    options: ClassificationOptions,
    seed: int,
    source: str,
    train: tuple[Sequence[Any], np.ndarray] | None = None,
    test: tuple[Sequence[Any], np.ndarray] | None = None,
    single: tuple[Sequence[Any], np.ndarray] | None = None,
) -> dict[str, Split]:
    """Build train/test splits, applying ``test_fraction`` (single split only) and ``limit``.

    ``source`` names the file or folder for error messages.
    """
    if single is not None:
        items, labels = single
        labels = np.asarray(labels, dtype=np.int64)
        _check_labels(labels, source)
        tr, te = stratified_split(labels, options.test_fraction, seed)
        train = (subset(items, tr), labels[tr])
        test = (subset(items, te), labels[te])
    if train is None or test is None:
        raise DataError(f"{source}: needs a train and a test split, or one split with test_fraction")
    splits = {}
    for name, (items, labels) in (("train", train), ("test", test)):
        labels = np.asarray(labels, dtype=np.int64)
        _check_labels(labels, f"{source} ({name} split)")
        if options.limit is not None and options.limit < len(labels):
            keep = stratified_indices(labels, options.limit, seed)
            items, labels = subset(items, keep), labels[keep]
        splits[name] = Split(items=items, labels=labels, modality=modality)
    return splits


def _check_labels(labels: np.ndarray, source: str) -> None:
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) == 0:
        raise DataError(f"{source}: the split is empty")
    if labels.min() < 0:
        raise DataError(f"{source}: labels must be non-negative integers, found {labels.min()}")
