"""``identity``: inputs flattened to float32, unchanged (the raw-pixels baseline).

Also evaluates precomputed feature arrays as they are (datasets of modality ``array``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import Encoder, EncoderOptions


@dataclasses.dataclass
class IdentityOptions(EncoderOptions):
    batch_size: int = 1024


class IdentityEncoder(Encoder):
    Options = IdentityOptions
    modalities = frozenset({"image", "array"})

    def fingerprint(self) -> dict[str, Any]:
        return {"type": "identity", "preprocessing": "flatten-float32"}

    def preprocess(self, sample: Any, modality: str) -> np.ndarray:
        return np.asarray(sample, dtype=np.float32).reshape(-1)

    def collate(self, samples: list[Any], modality: str) -> np.ndarray:
        sizes = {s.shape for s in samples}
        if len(sizes) > 1:
            raise ValueError(
                f"the identity encoder needs equally sized inputs; this batch has shapes {sorted(sizes)[:3]}"
            )
        return np.stack(samples)

    def encode(self, batch: Any, modality: str, role: str | None = None) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
