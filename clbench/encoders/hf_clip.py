"""``hf-clip``: a ``transformers`` CLIP or SigLIP model as an image and text encoder.

The model is a local folder (``save_pretrained`` output) or a hub name already in the local
Hugging Face cache; nothing is downloaded. Images go through the model's own image processor
(``preprocessor_config.json``: CLIP resizes the shorter side and center-crops, SigLIP resizes
to a square), texts through its own tokenizer (SigLIP pads to the full length, as it was
trained). Embeddings are the projected image/text features, L2-normalised (``normalize``).
The model's logit scale (and SigLIP's logit bias) is reported in ``info()`` and kept in
``logit_scale``; a cosine ranking does not depend on it.

Because the encoder takes both modalities it serves zero-shot and image-text retrieval, and also
image-only tasks (k-NN, linear probe on the image embeddings) and text tasks (STS, retrieval on
the text embeddings) with no further configuration. On CUDA the forward passes run under
autocast (``amp``, float16); on CPU in float32.

Suite example::

    encoders:
      clip-b32: {type: hf-clip, model: openai/clip-vit-base-patch32}
      siglip: {type: hf-clip, model: models/siglip-base-patch16-224}

:class:`ImageTextEncoder`, the common part of ``hf-clip`` and ``open_clip``, lives here.
Importing this module does not import torch or transformers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ..errors import CheckpointError
from ..options import option
from ._vision import to_rgb_image
from .base import Encoder, EncoderOptions, _identity_options
from .hf import model_identity, resolve_model


@dataclasses.dataclass(kw_only=True)
class ImageTextOptions(EncoderOptions):
    """Options shared by the image+text encoders."""

    normalize: bool = option(True, "L2-normalise the embeddings")
    amp: bool = option(True, "on CUDA, run the forward passes under float16 autocast")


class ImageTextEncoder(Encoder):
    """Common part of the CLIP-style encoders: batching, autocast, normalisation, the text side.

    Subclasses implement ``_load(device)`` (sets ``self.model``), ``_image_transform()`` (a picklable
    sample -> CxHxW tensor callable), ``_tokenize(texts)`` -> model inputs (dict or tensor),
    ``_encode_image(x)`` and ``_encode_text(tokens)`` -> [B, D] tensors.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    similarity: ClassVar[str] = "cosine"

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.model: Any = None
        self.logit_scale: float | None = None
        self.logit_bias: float | None = None
        self._embed_dim: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers only preprocess: never pickle the model (or a tokenizer)
        state = dict(self.__dict__)
        state["model"] = None
        state.pop("tokenizer", None)
        return state

    # -- to implement ------------------------------------------------------------------------
    def _load(self, device: str) -> None:
        raise NotImplementedError

    def _image_transform(self) -> Any:
        raise NotImplementedError

    def _tokenize(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _encode_image(self, x: Any) -> Any:
        raise NotImplementedError

    def _encode_text(self, tokens: Any) -> Any:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        if self.model is None:
            self._load(device)
            self.model.eval()
            scale = getattr(self.model, "logit_scale", None)
            if scale is not None:
                self.logit_scale = float(scale.detach().float().exp().item())
            bias = getattr(self.model, "logit_bias", None)
            if bias is not None:
                self.logit_bias = float(bias.detach().float().item())
        self.model.to(device)
        self.device = device

    def preprocess(self, sample: Any, modality: str) -> Any:
        if modality == "image":
            return self._image_transform()(sample)
        return str(sample)

    def collate(self, samples: list[Any], modality: str) -> Any:
        if modality == "image":
            import torch

            return torch.stack(samples)
        return [str(s) for s in samples]

    def _autocast(self):
        import contextlib

        import torch

        if self.options.amp and str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _finish(self, emb: Any) -> Any:
        import torch

        if not isinstance(emb, torch.Tensor):  # transformers 5 returns a model output
            emb = emb.pooler_output if getattr(emb, "pooler_output", None) is not None else emb[0]
        emb = emb.float()
        if self.options.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        self._embed_dim = int(emb.shape[-1])
        return emb

    def encode(self, batch: Any, modality: str, role: str | None = None) -> Any:
        """Images: a collated [B, 3, H, W] batch. Texts: any list of strings (batched here)."""
        import torch

        if self.model is None:
            self.setup(self.device)
        with torch.inference_mode(), self._autocast():
            if modality == "image":
                x = torch.as_tensor(batch).to(self.device, torch.float32)
                return self._finish(self._encode_image(x))
            if modality != "text":
                raise ValueError(f"encoder {self.name!r} takes image or text inputs, not {modality!r}")
            texts = [str(t) for t in batch]
            bs = self.options.batch_size
            parts = [self._finish(self._encode_text(self._tokenize(texts[s : s + bs]))).cpu()
                     for s in range(0, len(texts), bs)]
            if not parts:
                return np.zeros((0, self._embed_dim or 0), dtype=np.float32)
            return torch.cat(parts)

    @property
    def embed_dim(self) -> int | None:
        return self._embed_dim

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"logit_scale": self.logit_scale, "embed_dim": self._embed_dim,
                               "amp": bool(self.options.amp and str(self.device).startswith("cuda"))}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        if self.model is not None:
            out["parameters"] = sum(p.numel() for p in self.model.parameters())
        return out


# -- hf-clip ------------------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class HFClipOptions(ImageTextOptions):
    model: str = option(help="local model folder, or a hub name already in the local Hugging Face cache")
    revision: str | None = option(None, "hub revision (branch, tag or commit) to take from the local cache")
    cache_dir: str | None = option(None, "Hugging Face hub cache folder (default: HF_HUB_CACHE / HF_HOME)")
    max_length: int | None = option(None, "truncate texts to this many tokens (default: the model's)")

    def validate(self) -> None:
        super().validate()
        if not self.model.strip():
            raise ValueError("model: expected a model folder or hub name")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError("max_length: expected a positive integer")


class _HFImageProcessor:
    """Picklable sample -> pixel tensor with the model's own image processor (loaded on first use)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._proc: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_proc": None}

    def __call__(self, sample: Any) -> Any:
        if self._proc is None:
            from transformers import AutoImageProcessor

            self._proc = AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
        return self._proc(images=to_rgb_image(sample), return_tensors="pt")["pixel_values"][0]


class HFClipEncoder(ImageTextEncoder):
    """transformers CLIPModel / SiglipModel (any model with get_image_features / get_text_features)."""

    Options = HFClipOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.tokenizer: Any = None
        self._resolved: tuple[Any, dict[str, Any]] | None = None
        self._processor: _HFImageProcessor | None = None
        self._pad = "longest"
        self._max_length = 77

    def _resolve(self) -> tuple[Any, dict[str, Any]]:
        if self._resolved is None:
            o = self.options
            self._resolved = resolve_model(
                o.model, revision=o.revision, cache_dir=str(self.resolve(o.cache_dir)) if o.cache_dir else None,
                root=self.root,
            )
        return self._resolved

    def check(self) -> None:
        self._resolve()

    def fingerprint(self) -> dict[str, Any]:
        folder, where = self._resolve()
        opts = _identity_options(self.options)
        for k in ("model", "revision", "cache_dir"):
            opts.pop(k)
        return {"type": type(self).__name__, "model": model_identity(folder, where), "options": opts}

    def _image_transform(self) -> Any:
        if self._processor is None:
            self._processor = _HFImageProcessor(str(self._resolve()[0]))
        return self._processor

    def _load(self, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = str(self._resolve()[0])
        try:
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{folder}: cannot load as a transformers CLIP/SigLIP model: {err}") from err
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise CheckpointError(f"{folder}: {type(model).__name__} has no image and text towers (CLIP/SigLIP)")
        text_cfg = getattr(model.config, "text_config", None)
        self._max_length = self.options.max_length or int(getattr(text_cfg, "max_position_embeddings", 77))
        # SigLIP was trained on texts padded to the full length; CLIP uses its EOS token, so any padding
        self._pad = "max_length" if "siglip" in str(model.config.model_type) else "longest"
        self.model, self.tokenizer = model.to(device), tokenizer

    def _tokenize(self, texts: list[str]) -> Any:
        enc = self.tokenizer(texts, padding=self._pad, truncation=True, max_length=self._max_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _encode_image(self, x: Any) -> Any:
        return self.model.get_image_features(pixel_values=x)

    def _encode_text(self, tokens: Any) -> Any:
        if self._pad == "max_length":
            tokens = {"input_ids": tokens["input_ids"]}  # SigLIP attends to its padding, as trained
        return self.model.get_text_features(**tokens)

    def info(self) -> dict[str, Any]:
        return {"model": self._resolve()[1], **super().info()}
