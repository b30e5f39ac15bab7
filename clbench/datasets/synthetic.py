"""Deterministic generated data: a classification dataset that needs no files.

For tests, examples and plugin authors. The data depends only on the options (``seed`` among
them), never on the run's seed, so repeated runs and different suites see the same samples;
``limit`` then subsamples with the run's seed as for any dataset.

- ``kind: vectors`` (modality ``"array"``): float32 rows ``[dim]`` drawn around one Gaussian
  centre per class; ``noise`` is the per-coordinate standard deviation around centres whose
  coordinates are standard normal, so ``noise: 1`` gives overlapping but separable classes.
- ``kind: images`` (modality ``"image"``): uint8 images ``[size, size, 3]`` (``[size, size]``
  with ``channels: 1``); each class has its own coarse colour pattern, and each sample adds
  Gaussian pixel noise of ``noise * 64`` grey levels and a random shift of up to two pixels.

Classes are balanced (sizes differ by at most one). ``test_fraction`` is unused: the sizes are
``n_train`` and ``n_test``.

    >>> ds = SyntheticDataset(SyntheticOptions(n_train=40, n_test=20, num_classes=4, dim=8))
    >>> ds.split("train").items.shape, ds.modality, ds.num_classes
    ((40, 8), 'array', 4)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..options import option
from .base import ClassificationOptions, Dataset, Split, make_classification_splits


@dataclasses.dataclass
class SyntheticOptions(ClassificationOptions):
    n_train: int = option(200, "train samples")
    n_test: int = option(100, "test samples")
    num_classes: int = option(4, "number of classes")
    dim: int = option(16, "vector length (kind: vectors)")
    kind: Literal["vectors", "images"] = option("vectors", "Gaussian clusters (array) or patterned images")
    noise: float = option(1.0, "spread around each class centre (0: every sample is its class centre)")
    size: int = option(16, "image height and width (kind: images)")
    channels: Literal[1, 3] = option(3, "image channels (kind: images): 1 gives [H, W] grayscale")
    seed: int = option(0, "generator seed (the data depends only on the options)")

    def validate(self) -> None:
        super().validate()
        if self.num_classes < 1:
            raise ValueError("num_classes: expected a positive integer")
        for key in ("n_train", "n_test"):
            if getattr(self, key) < self.num_classes:
                raise ValueError(f"{key}: expected at least num_classes ({self.num_classes}) samples")
        if self.dim < 1:
            raise ValueError("dim: expected a positive integer")
        if self.size < 4:
            raise ValueError("size: expected at least 4 pixels")
        if self.noise < 0:
            raise ValueError("noise: expected a non-negative number")


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def make_vectors(
    opts: SyntheticOptions,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)): float32 class-centred Gaussian clusters."""
    rng = np.random.default_rng([opts.seed, 0])
    centres = rng.standard_normal((opts.num_classes, opts.dim))
    out = []
    for n in (opts.n_train, opts.n_test):
        y = _balanced_labels(n, opts.num_classes, rng)
        x = centres[y] + opts.noise * rng.standard_normal((n, opts.dim))
        out.append((x.astype(np.float32), y))
    return out[0], out[1]


def make_images(
    opts: SyntheticOptions,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)): uint8 images with a coarse per-class pattern."""
    rng = np.random.default_rng([opts.seed, 1])
    cells = 4  # a class pattern is a 4x4 grid of colours, upsampled to the image size
    patterns = rng.uniform(0, 255, size=(opts.num_classes, cells, cells, opts.channels))
    reps = -(-opts.size // cells)
    patterns = np.repeat(np.repeat(patterns, reps, axis=1), reps, axis=2)[:, : opts.size, : opts.size]
    out = []
    for n in (opts.n_train, opts.n_test):
        y = _balanced_labels(n, opts.num_classes, rng)
        shifts = rng.integers(-2, 3, size=(n, 2))
        x = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts)])
        x = x + opts.noise * 64.0 * rng.standard_normal(x.shape)
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        out.append((x[..., 0] if opts.channels == 1 else x, y))
    return out[0], out[1]


class SyntheticDataset(Dataset):
    """Generated classification data: vectors (modality ``"array"``) or images (``"image"``)."""

    Options = SyntheticOptions
    modality = "array"  # the default kind; instances with kind "images" say "image"
    kind = "classification"

    def __init__(self, options: Any, *, name: str = "dataset", root: Path | None = None, seed: int = 0):
        super().__init__(options, name=name, root=root, seed=seed)
        self.modality = "image" if options.kind == "images" else "array"  # type: ignore[misc]
        self.classes = [f"class_{i}" for i in range(options.num_classes)]

    def load(self) -> dict[str, Split]:
        make = make_images if self.options.kind == "images" else make_vectors
        train, test = make(self.options)
        return make_classification_splits(
            modality=self.modality,
            options=self.options,
            seed=self.seed,
            source=f"synthetic dataset {self.name!r}",
            train=train,
            test=test,
        )
