"""``open_clip``: an OpenCLIP model (architecture + pretrained tag, or a local checkpoint file).

- ``model``: an open_clip architecture name (``ViT-B-32``, ``ViT-L-14``, ``RN50``, ...), or the
  name of a custom architecture given as a JSON config file in ``model_config`` (open_clip's
  config layout: ``embed_dim``, ``vision_cfg``, ``text_cfg``; the file's stem must equal ``model``);
- ``pretrained``: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...) resolved by
  open_clip itself (it downloads into ``cache_dir`` when the weights are not there yet: give a
  ``checkpoint`` file to stay offline);
- ``checkpoint``: a local checkpoint file (open_clip's ``state_dict`` layout), relative to the
  suite file. Neither: random initialisation (seeded), for tests.

Preprocessing and tokenizer are the model's own: for the usual ``shortest`` resize mode the
image transform is clbench's :class:`~clbench.encoders._vision.ImageTransform` with the model's
size, interpolation, mean and std (resize the shorter side to the crop size, center crop, as
open_clip's evaluation transform); other resize modes use open_clip's transform. Texts go
through ``open_clip.get_tokenizer(model)``. Autocast float16 on CUDA (``amp``).

Suite example::

    encoders:
      vit-b-32: {type: open_clip, model: ViT-B-32, pretrained: laion2b_s34b_b79k}
      mine: {type: open_clip, model: ViT-B-16, checkpoint: runs/epoch_32.pt}

Importing this module does not import torch or open_clip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..options import option
from ._vision import ImageTransform, to_rgb_image
from .base import _identity_options
from .hf import _file_digest
from .hf_clip import ImageTextEncoder, ImageTextOptions


@dataclasses.dataclass(kw_only=True)
class OpenClipOptions(ImageTextOptions):
    model: str = option(help="open_clip architecture name (e.g. ViT-B-32)")
    pretrained: str | None = option(None, "open_clip pretrained tag (e.g. openai, laion2b_s34b_b79k)")
    checkpoint: str | None = option(None, "local checkpoint file (open_clip state dict), relative to the suite")
    model_config: str | None = option(None, "JSON config file of a custom architecture named `model`")
    cache_dir: str | None = option(None, "where open_clip keeps downloaded pretrained weights")

    def validate(self) -> None:
        super().validate()
        if not self.model.strip():
            raise ValueError("model: expected an open_clip architecture name")
        if self.pretrained and self.checkpoint:
            raise ValueError("pretrained: set either a pretrained tag or a checkpoint file, not both")


class _OpenClipTransform:
    """open_clip's own evaluation transform for non-``shortest`` resize modes (picklable)."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self._t: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "_t": None}

    def __call__(self, sample: Any) -> Any:
        if self._t is None:
            import open_clip

            c = self.cfg
            self._t = open_clip.image_transform(
                c["size"], is_train=False, mean=c.get("mean"), std=c.get("std"),
                resize_mode=c.get("resize_mode"), interpolation=c.get("interpolation"),
                fill_color=c.get("fill_color", 0),
            )
        return self._t(to_rgb_image(sample))


class OpenClipEncoder(ImageTextEncoder):
    """An OpenCLIP model as an image and text encoder."""

    Options = OpenClipOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.tokenizer: Any = None
        self._transform: Any = None

    def _checkpoint(self) -> Path | None:
        return self.resolve(self.options.checkpoint) if self.options.checkpoint else None

    def _config(self) -> Path | None:
        return self.resolve(self.options.model_config) if self.options.model_config else None

    def check(self) -> None:
        ckpt, cfg = self._checkpoint(), self._config()
        if ckpt is not None and not ckpt.is_file():
            raise ConfigError(f"{ckpt}: checkpoint file not found (encoder {self.name!r})", key="checkpoint")
        if cfg is not None:
            if not cfg.is_file():
                raise ConfigError(f"{cfg}: model config file not found", key="model_config")
            if cfg.stem != self.options.model:
                raise ConfigError(
                    f"{cfg}: open_clip names a config by its file name; rename it {self.options.model}.json "
                    f"or set model: {cfg.stem}", key="model_config",
                )

    def fingerprint(self) -> dict[str, Any]:
        o = self.options
        ckpt, cfg = self._checkpoint(), self._config()
        if ckpt is not None:
            weights: dict[str, Any] = {"checkpoint_digest": _file_digest(ckpt)}
        elif o.pretrained:
            weights = {"pretrained": o.pretrained}
        else:
            weights = {"weights": f"random-init seed {self.seed}"}
        opts = _identity_options(o)
        for k in ("model", "pretrained", "checkpoint", "model_config", "cache_dir"):
            opts.pop(k)
        fp = {"type": type(self).__name__, "model": o.model, **weights, "options": opts}
        if cfg is not None:
            fp["model_config_digest"] = _file_digest(cfg)
        return fp

    def _load(self, device: str) -> None:
        import open_clip
        import torch

        o = self.options
        cfg = self._config()
        if cfg is not None:
            open_clip.add_model_config(cfg)
        ckpt = self._checkpoint()
        pretrained = str(ckpt) if ckpt is not None else o.pretrained
        cache_dir = str(self.resolve(o.cache_dir)) if o.cache_dir else None
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    o.model, pretrained=pretrained, cache_dir=cache_dir
                )
            tokenizer = open_clip.get_tokenizer(o.model, cache_dir=cache_dir)
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"open_clip model {o.model!r} ({pretrained or 'random init'}): {err}") from err
        self.model, self.tokenizer = model.to(device), tokenizer
        self._transform = self._make_transform(model, preprocess)

    @staticmethod
    def _make_transform(model: Any, preprocess: Any) -> Any:
        pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = pcfg.get("size", getattr(model.visual, "image_size", 224))
        size = size if isinstance(size, int) else tuple(size)
        square = isinstance(size, int) or size[0] == size[1]
        if pcfg.get("resize_mode", "shortest") == "shortest" and square:
            s = size if isinstance(size, int) else size[0]
            return ImageTransform(
                image_size=s, resize_size=s, interpolation=pcfg.get("interpolation", "bicubic"),
                mean=tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                std=tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
            )
        pcfg["size"] = size
        return _OpenClipTransform(pcfg)

    def _image_transform(self) -> Any:
        if self._transform is None:  # preprocessing needs the model's config: build it on the CPU
            self.setup(self.device)
        return self._transform

    def _tokenize(self, texts: list[str]) -> Any:
        return self.tokenizer(texts).to(self.device)

    def _encode_image(self, x: Any) -> Any:
        return self.model.encode_image(x)

    def _encode_text(self, tokens: Any) -> Any:
        return self.model.encode_text(tokens)

    def info(self) -> dict[str, Any]:
        out = {"model": self.options.model, "pretrained": self.options.pretrained, **super().info()}
        if isinstance(self._transform, ImageTransform):
            out["preprocess"] = self._transform.describe()
        return out
