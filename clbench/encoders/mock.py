"""``mock``: a deterministic, dependency-free encoder for tests and plugin authors.

Images and arrays go through a fixed random projection (seeded) followed by tanh; texts are
hashed into bag-of-token vectors. ``calls`` counts forward passes across all instances, so a test
can assert that a cached re-run does none. ``fail: true`` makes ``setup`` raise, to exercise
failure isolation and resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from ..options import option
from .base import Encoder, EncoderOptions


@dataclasses.dataclass
class MockOptions(EncoderOptions):
    dim: int = option(32, "embedding dimension")
    fail: bool = option(False, "raise during setup (to test failure handling)")
    modalities: list[str] = option(["image", "array", "text"], "modalities this mock accepts")

    def validate(self) -> None:
        super().validate()
        if self.dim < 1:
            raise ValueError("dim: expected a positive integer")


class MockEncoder(Encoder):
    Options = MockOptions
    calls = 0  # forward passes, all instances

    @property
    def modalities(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.options.modalities)

    def setup(self, device: str) -> None:
        if self.options.fail:
            raise RuntimeError("mock encoder asked to fail (fail: true)")
        super().setup(device)

    def preprocess(self, sample: Any, modality: str) -> Any:
        if modality == "text":
            return sample
        return np.asarray(sample, dtype=np.float32).reshape(-1)

    def _projection(self, d_in: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, d_in, self.options.dim])
        return rng.standard_normal((d_in, self.options.dim)).astype(np.float32) / np.sqrt(d_in)

    def encode(self, batch: Any, modality: str, role: str | None = None) -> np.ndarray:
        type(self).calls += 1
        if modality == "text":
            out = np.zeros((len(batch), self.options.dim), dtype=np.float32)
            for i, text in enumerate(batch):
                for tok in str(text).lower().split():
                    h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=4).digest(), "little")
                    out[i, h % self.options.dim] += 1.0
            return out
        x = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        scale = np.linalg.norm(x, axis=1, keepdims=True) + 1e-6  # per sample: batch-independent
        return np.tanh(3.0 * (x @ self._projection(x.shape[1])) / scale)

    @property
    def embed_dim(self) -> int:
        return self.options.dim
