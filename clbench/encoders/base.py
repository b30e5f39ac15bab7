"""The encoder protocol: what every encoder plugin provides.

An encoder is built cheaply from its options (no model is loaded), so a suite validates without
importing torch. ``setup(device)`` then builds the model and loads weights, once, only when
features are actually missing from the cache.

Lifecycle used by the runner::

    enc = EncoderClass(options, name="moco", root=suite_folder)
    enc.check()                      # validation: files exist, options consistent
    key = enc.fingerprint()          # cache key and provenance (no model needed)
    enc.setup("cuda")                # build + load weights (coverage report in enc.coverage)
    x = enc.preprocess(sample, "image")       # per sample, in DataLoader workers (picklable)
    batch = enc.collate([x, ...], "image")
    emb = enc.encode(batch, "image")          # [B, D] tensor or array
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..options import option


@dataclasses.dataclass
class EncoderOptions:
    """Options every encoder accepts."""

    batch_size: int = option(64, "samples per forward pass during extraction")
    num_workers: int = option(-1, "DataLoader workers for extraction (-1: sized to the machine)")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: expected a positive integer")


class Encoder:
    """Base class of encoder plugins. Subclasses set ``Options`` and ``modalities``."""

    Options: ClassVar[type] = EncoderOptions
    modalities: ClassVar[frozenset[str]] = frozenset()
    #: Similarity a retrieval task should use with this encoder ("cosine" or "dot").
    similarity: ClassVar[str] = "cosine"

    #: True when ``encode`` takes whole lists of raw samples and batches internally (text models):
    #: extraction then skips the DataLoader and calls ``encode`` on chunks of ``chunk_size``.
    batches_internally: ClassVar[bool] = False
    chunk_size: ClassVar[int] = 16384

    def __init__(self, options: Any, *, name: str = "encoder", root: Path | None = None, seed: int = 0):
        self.options = options
        self.name = name
        self.root = Path(root) if root is not None else Path.cwd()
        #: seed for anything random in the encoder (random initialisation of an architecture)
        self.seed = seed
        #: checkpoint coverage report (dict) once ``setup`` loaded a checkpoint, else None
        self.coverage: dict[str, Any] | None = None
        self.device: str = "cpu"

    # -- validation and identity -------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        """A path from the suite, resolved against the suite file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def check(self) -> None:
        """Validate sources (e.g. that a checkpoint file exists) before any work starts."""

    def fingerprint(self) -> dict[str, Any]:
        """Architecture, weights identity, preprocessing and layer/pooling: the cache key."""
        return {"type": type(self).__name__, "options": _identity_options(self.options)}

    def supports(self, modality: str) -> bool:
        return modality in self.modalities

    # -- heavy part ----------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        """Build the model on ``device`` and load its weights; idempotent."""
        self.device = device

    def preprocess(self, sample: Any, modality: str) -> Any:
        """Turn one raw sample into model input (runs in DataLoader workers; must pickle)."""
        return sample

    def collate(self, samples: list[Any], modality: str) -> Any:
        if samples and isinstance(samples[0], np.ndarray):
            return np.stack(samples)
        if samples and type(samples[0]).__module__.startswith("torch"):
            import torch

            return torch.stack(samples)
        return list(samples)

    def encode(self, batch: Any, modality: str, role: str | None = None) -> Any:
        """Embed one collated batch: a [B, D] torch tensor or numpy array."""
        raise NotImplementedError

    def torch_module(self, device: str = "cpu") -> Any:
        """The encoder's network (``torch.nn.Module``) with its weights loaded, for tasks that
        fine-tune it (detection, segmentation); calls ``setup(device)``. Encoders without a
        torch backbone raise :class:`CapabilityError`, so such a cell is skipped with the reason."""
        from ..errors import CapabilityError

        raise CapabilityError(f"encoder {self.name!r} ({type(self).__name__}) has no torch backbone to fine-tune")

    @property
    def embed_dim(self) -> int | None:
        return None

    def info(self) -> dict[str, Any]:
        """Extra provenance for result files (precision, resolved model name, ...)."""
        return {}


# options that change nothing in the features and so stay out of the cache key
_NON_IDENTITY = {"batch_size", "num_workers"}


def _identity_options(options: Any) -> dict[str, Any]:
    d = dataclasses.asdict(options)
    return {k: v for k, v in d.items() if k not in _NON_IDENTITY}
