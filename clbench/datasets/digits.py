"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes, no download.

Pixel values 0..16 are scaled to uint8 0..255 (``round(v * 255 / 16)``), so the images look like
any other grayscale image to an encoder. There is one split, held out by ``test_fraction``
(default 0.2, as for every single-split dataset), seeded and stratified.

Suite example::

    datasets:
      digits: {type: sklearn-digits}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import ClassificationOptions, Dataset, Split, make_classification_splits


@dataclasses.dataclass
class DigitsOptions(ClassificationOptions):
    """Only the shared options: ``limit`` and ``test_fraction``."""


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] uint8, labels [1797]) from scikit-learn's copy of the data."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    return images, digits.target.astype(np.int64)


class DigitsDataset(Dataset):
    """8x8 grayscale uint8 digit images ``[8, 8]`` with labels 0..9."""

    Options = DigitsOptions
    modality = "image"
    kind = "classification"

    def fingerprint(self) -> dict[str, Any]:
        import sklearn

        # the data ships inside scikit-learn: its version stands in for the source file
        return {**super().fingerprint(), "sklearn": sklearn.__version__}

    def load(self) -> dict[str, Split]:
        images, labels = digits_images()
        self.classes = [str(i) for i in range(10)]
        return make_classification_splits(
            modality=self.modality,
            options=self.options,
            seed=self.seed,
            source="sklearn.datasets.load_digits",
            single=(images, labels),
        )
