"""Shared parts of the image encoders (timm, torchvision): options, preprocessing, loading, pooling.

Preprocessing is the standard evaluation protocol of the SSL literature: convert to RGB,
resize the shorter side (``resize_size``), center-crop ``image_size``, scale to [0, 1] and
normalise with ``mean``/``std`` (``normalize: false`` skips it: converted SimCLR weights expect
[0, 1] input). :class:`ImageTransform` is a frozen dataclass, so it pickles into DataLoader
workers and its ``describe()`` goes into the feature-cache fingerprint.

Importing this module does not import torch.

>>> t = ImageTransform(image_size=32, resize_size=36)
>>> t.describe()["resize_size"]
36
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..checkpoints.formats import FORMAT_NAMES
from ..errors import ConfigError, DataError
from ..options import option
from .base import Encoder, EncoderOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the SSL evaluation protocol: Resize(256), CenterCrop(224), bilinear, ImageNet mean/std
IMAGENET_DEFAULTS = {
    "image_size": 224,
    "crop_pct": 0.875,
    "interpolation": "bilinear",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}

Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]
Precision = Literal["fp32", "bf16", "fp16"]
CheckpointFormat = Literal[("auto",) + FORMAT_NAMES]  # type: ignore[valid-type]


@dataclasses.dataclass
class VisionOptions(EncoderOptions):
    """Checkpoint and preprocessing options shared by the image encoders."""

    checkpoint: str | None = option(
        None, "checkpoint file (.pth/.pt/.pth.tar/.ckpt/.safetensors), relative to the suite file"
    )
    format: CheckpointFormat = option("auto", "checkpoint layout (method); auto: detected from its keys")
    checkpoint_key: str | None = option(
        None, "checkpoint entry holding the weights (e.g. 'student'; default 'teacher')"
    )
    allow_missing: list[str] = option(
        [], "fnmatch patterns of model keys allowed to keep their initialisation"
    )
    trust_checkpoint: bool = option(
        False, "allow full unpickling of the checkpoint (can run code: trusted files only)"
    )
    image_size: int | None = option(
        None, "center-crop size fed to the model (default: the model's input size)"
    )
    resize_size: int | None = option(None, "shorter side before the crop (default: image_size / crop_pct)")
    crop_pct: float | None = option(
        None, "image_size / resize_size when resize_size is not set (default 0.875)"
    )
    interpolation: Interpolation | None = option(None, "resize interpolation (default: bilinear)")
    normalize: bool = option(True, "subtract mean and divide by std (false: [0, 1] input, e.g. SimCLR)")
    mean: list[float] | None = option(None, "per-channel mean (default: ImageNet's, or the weights')")
    std: list[float] | None = option(None, "per-channel std (default: ImageNet's, or the weights')")
    precision: Precision = option(
        "fp32", "forward pass precision: fp32, or autocast to bf16 / fp16 (features stored as float32)"
    )
    channels_last: bool = option(False, "run convolutions in channels-last memory format (faster on GPUs)")

    def validate(self) -> None:
        super().validate()
        if self.checkpoint is None:
            for name, value, unset in (
                ("format", self.format, "auto"),
                ("checkpoint_key", self.checkpoint_key, None),
                ("allow_missing", self.allow_missing, []),
            ):
                if value != unset:
                    raise ValueError(f"{name}: only used together with `checkpoint`")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError("image_size: expected a positive integer")
        if self.resize_size is not None and self.crop_pct is not None:
            raise ValueError("resize_size: set either resize_size or crop_pct, not both")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise ValueError("crop_pct: expected a number in (0, 1]")
        if (
            self.resize_size is not None
            and self.image_size is not None
            and self.resize_size < self.image_size
        ):
            raise ValueError("resize_size: must be at least image_size")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"{name}: expected 3 numbers (R, G, B), got {len(value)}")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std: expected positive numbers")


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Raw image (uint8 array HxW / HxWxC, or PIL image) -> normalised float tensor CxHxW."""

    image_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    def __call__(self, sample: Any) -> Any:
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        img = to_rgb_image(sample)
        img = F.resize(img, self.resize_size, interpolation=InterpolationMode(self.interpolation))
        img = F.center_crop(img, [self.image_size, self.image_size])
        x = F.pil_to_tensor(img).to(torch.float32).div_(255.0)
        if self.mean is not None:
            x = F.normalize(x, list(self.mean), list(self.std or (1.0, 1.0, 1.0)))
        return x

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean) if self.mean is not None else None
        d["std"] = list(self.std) if self.std is not None else None
        return d


def resolve_transform(opts: VisionOptions, defaults: dict[str, Any]) -> ImageTransform:
    """User options over the model's (or weights') defaults, over the ImageNet protocol."""
    d = {**IMAGENET_DEFAULTS, **{k: v for k, v in defaults.items() if v is not None}}
    size = opts.image_size or int(d["image_size"])
    if opts.resize_size is not None:
        resize = opts.resize_size
    elif opts.crop_pct is None and d.get("resize_size") and opts.image_size in (None, d["image_size"]):
        resize = int(d["resize_size"])
    else:
        resize = math.floor(size / (opts.crop_pct or d["crop_pct"]))
    if resize < size:
        raise ConfigError(f"resize size {resize} is smaller than image_size {size}", key="resize_size")
    mean = std = None
    if opts.normalize:
        mean = tuple(float(v) for v in (opts.mean or d["mean"]))
        std = tuple(float(v) for v in (opts.std or d["std"]))
    return ImageTransform(size, resize, opts.interpolation or d["interpolation"], mean, std)


def to_rgb_image(sample: Any) -> Any:
    """A PIL RGB image from a PIL image or an array (HxW, HxWx1/3/4, or 1/3xHxW; uint8 or [0, 1] floats)."""
    from PIL import Image

    if isinstance(sample, Image.Image):
        return sample if sample.mode == "RGB" else sample.convert("RGB")
    arr = np.asarray(sample)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CxHxW
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or arr.size == 0:
        raise DataError(f"image sample: expected HxW or HxWxC (C = 1, 3 or 4) pixels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _as_uint8(arr)
    img = Image.fromarray(np.ascontiguousarray(arr))
    return img if img.mode == "RGB" else img.convert("RGB")


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) and lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    raise DataError(
        f"image sample: expected uint8 pixels or floats in [0, 1], got {arr.dtype} in [{lo:g}, {hi:g}]"
    )


def pool_features(x: Any, pooling: str, *, num_prefix_tokens: int = 0, channels_last: bool = False) -> Any:
    """[B, D] from a feature map [B, C, H, W], tokens [B, N, D] or vectors [B, D]."""
    if x.ndim == 2:
        return x
    if x.ndim == 4:
        if pooling == "token":
            raise ConfigError(
                "token pooling needs a transformer's tokens, this layer gives a feature map", key="pooling"
            )
        x = x.flatten(1, 2) if channels_last else x.flatten(2).transpose(1, 2)  # -> [B, HW, C]
        num_prefix_tokens = 0
        pooling = "avg" if pooling == "default" else pooling
    if x.ndim != 3:
        raise ConfigError(f"cannot pool features of shape {tuple(x.shape)}", key="pooling")
    if pooling == "default":
        pooling = "token" if num_prefix_tokens else "avg"
    if pooling == "token":
        if not num_prefix_tokens:
            raise ConfigError("token pooling needs a class token; this model has none", key="pooling")
        return x[:, 0]
    patches = x[:, num_prefix_tokens:]
    if pooling == "avg":
        return patches.mean(1)
    if pooling == "max":
        return patches.amax(1)
    if pooling == "avgmax":
        return 0.5 * (patches.mean(1) + patches.amax(1))
    raise ConfigError(f"unknown pooling {pooling!r}", key="pooling")


class VisionEncoder(Encoder):
    """Base of the image encoders: a subclass builds the model and runs it, this class does the rest.

    Subclasses implement ``_build()`` -> (model with its classifier removed, fnmatch patterns of
    that classifier's checkpoint keys), ``_forward(x)`` -> [B, D], ``_preprocess_defaults()``
    and ``_weights_identity()``; they call ``_load_weights`` from ``_build`` when they have more
    to load than the checkpoint.
    """

    Options: ClassVar[type] = VisionOptions
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.model: Any = None
        self._transform: ImageTransform | None = None
        self._embed_dim: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers only need the transform: never pickle the model
        state = dict(self.__dict__)
        state["model"] = None
        return state

    # -- to implement ------------------------------------------------------------------------
    def _build(self) -> tuple[Any, list[str]]:
        raise NotImplementedError

    def _forward(self, x: Any) -> Any:
        return self.model(x)

    def _preprocess_defaults(self) -> dict[str, Any]:
        return {}

    def _weights_identity(self) -> dict[str, Any]:
        return {"weights": f"random-init seed {self.seed}"}

    # -- shared ------------------------------------------------------------------------------
    @property
    def transform(self) -> ImageTransform:
        if self._transform is None:
            self._transform = resolve_transform(self.options, self._preprocess_defaults())
        return self._transform

    def checkpoint_path(self) -> Path | None:
        return self.resolve(self.options.checkpoint) if self.options.checkpoint else None

    def check(self) -> None:
        path = self.checkpoint_path()
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: checkpoint file not found (encoder {self.name!r})", key="checkpoint")

    def checkpoint_identity(self) -> dict[str, Any]:
        from ..checkpoints.io import file_digest

        o = self.options
        ident = {"checkpoint_sha256": file_digest(self.checkpoint_path()), "format": o.format}
        if o.checkpoint_key:
            ident["checkpoint_key"] = o.checkpoint_key
        if o.allow_missing:  # keys left at their (seeded) initialisation
            ident.update(allow_missing=sorted(o.allow_missing), seed=self.seed)
        return ident

    def fingerprint(self) -> dict[str, Any]:
        weights = self.checkpoint_identity() if self.options.checkpoint else self._weights_identity()
        fp = {
            "type": type(self).__name__,
            "model": self.options.model,
            **weights,
            "preprocess": self.transform.describe(),
        }
        # reduced precision and another memory layout change the numbers: part of the cache key
        # (left out at their defaults, so fp32 entries keep their keys)
        if self.options.precision != "fp32":
            fp["precision"] = self.options.precision
        if self.options.channels_last:
            fp["channels_last"] = True
        return fp

    def _autocast(self) -> Any:
        """The autocast context of the ``precision`` option (a no-op for fp32)."""
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.options.precision)
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype, enabled=dtype is not None)

    def setup(self, device: str) -> None:
        import torch

        if self.model is not None and device == self.device:
            return
        if self.model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, head = self._build()
            path = self.checkpoint_path()
            if path is not None:
                from ..checkpoints import load_checkpoint

                o = self.options
                self.coverage = load_checkpoint(
                    model,
                    path,
                    fmt=o.format,
                    checkpoint_key=o.checkpoint_key,
                    trust=o.trust_checkpoint,
                    allow_missing=o.allow_missing,
                    head=head,
                )
            self.model = model.eval()
        self.model.to(device)
        if self.options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.device = device
        with torch.no_grad(), self._autocast():
            size = self.transform.image_size
            probe = torch.zeros(1, 3, size, size, device=device)
            try:
                self._embed_dim = int(self._forward(probe).shape[-1])
            except (AssertionError, RuntimeError) as err:  # e.g. a ViT built for another input size
                raise ConfigError(
                    f"model {self.options.model!r} cannot take {size}x{size} images ({err}); "
                    "set image_size (or the model's img_size in model_kwargs)",
                    key="image_size",
                ) from None

    def torch_module(self, device: str = "cpu") -> Any:
        """The network (classifier removed, checkpoint loaded under the coverage rules) on ``device``."""
        self.setup(device)
        return self.model

    def preprocess(self, sample: Any, modality: str) -> Any:
        return self.transform(sample)

    def encode(self, batch: Any, modality: str, role: str | None = None) -> Any:
        import torch

        if self.model is None:
            raise RuntimeError(f"encoder {self.name!r}: call setup() before encode()")
        x = torch.as_tensor(batch).to(self.device, torch.float32, non_blocking=True)
        if self.options.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self._autocast():
            return self._forward(x).float()

    @property
    def embed_dim(self) -> int | None:
        return self._embed_dim

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.options.model,
            "embed_dim": self._embed_dim,
            "preprocess": self.transform.describe(),
            "precision": self.options.precision,
            "channels_last": self.options.channels_last,
        }
        if self.coverage is not None:
            out["coverage"] = {k: self.coverage.get(k) for k in ("format", "prefix", "counts", "sha256")}
        if self.model is not None:
            out["parameters"] = sum(p.numel() for p in self.model.parameters())
        return out
