"""timm image models: random init, timm's pretrained weights (local cache only), or an SSL checkpoint.

The model is created with ``num_classes=0``, so by default an embedding is the model's pooled
pre-logits features. ``layer`` picks another feature (a block index through timm's
``forward_intermediates``, or a module name) and ``pooling`` how it is reduced to a vector.

Suite example (MoCo v3 ViT-S, which uses 12 heads where timm's ViT-S has 6)::

    encoders:
      mocov3-vits:
        type: timm
        model: vit_small_patch16_224
        model_kwargs: {num_heads: 12}
        checkpoint: weights/vit-s-300ep.pth.tar
        format: mocov3

Importing this module does not import torch or timm.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..errors import CheckpointError, ConfigError
from ..options import option
from ._vision import VisionEncoder, VisionOptions, pool_features

Pooling = Literal["default", "avg", "max", "token", "avgmax"]
_RESERVED_KWARGS = ("num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay")


@dataclasses.dataclass(kw_only=True)
class TimmOptions(VisionOptions):
    model: str = option(help="timm model name, e.g. resnet50 or vit_small_patch16_224 (a .tag picks weights)")
    pretrained: bool = option(False, "timm's pretrained weights, read from the local Hugging Face cache only")
    model_kwargs: dict[str, Any] = option(
        {}, "extra arguments to timm.create_model (e.g. num_heads, img_size)"
    )
    layer: str | None = option(
        None, "feature layer: a block index for forward_intermediates (-1: last) or a module name"
    )
    pooling: Pooling = option("default", "default: the model's own pooling (token for ViTs, avg for CNNs)")

    def validate(self) -> None:
        super().validate()
        if self.pretrained and self.checkpoint:
            raise ValueError("pretrained: set either pretrained: true or a checkpoint, not both")
        for key in _RESERVED_KWARGS:
            if key in self.model_kwargs:
                raise ValueError(f"model_kwargs: {key!r} is set by the encoder")


class _Captured(Exception):
    """Raised by the layer hook once it holds the output: the rest of the forward is skipped."""


class TimmEncoder(VisionEncoder):
    """An image encoder built with ``timm.create_model``."""

    Options: ClassVar[type] = TimmOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self._index: int | None = None
        self._tokens: dict[str, Any] = {}
        self._module: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_module"] = None
        return state

    # -- validation and identity -------------------------------------------------------------
    def check(self) -> None:
        super().check()
        import timm

        name = self.options.model
        if not timm.is_model(name):
            close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"unknown timm model {name!r}{hint}", key="model")
        if self.options.pretrained:
            self._cached_weights()

    def _pretrained_cfg(self) -> dict[str, Any]:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.options.model)
        return cfg.to_dict() if cfg is not None else {}

    def _preprocess_defaults(self) -> dict[str, Any]:
        cfg = self._pretrained_cfg()
        size = self.options.model_kwargs.get("img_size") or (cfg.get("input_size") or (3, 224, 224))[-1]
        size = size[-1] if isinstance(size, (list, tuple)) else size
        if not self.options.pretrained:
            return {"image_size": int(size)}
        keys = ("crop_pct", "interpolation", "mean", "std")
        return {"image_size": int(size), **{k: cfg.get(k) for k in keys}}

    def _weights_identity(self) -> dict[str, Any]:
        if not self.options.pretrained:
            return {"weights": f"random-init seed {self.seed}"}
        cfg = self._pretrained_cfg()
        path, _ = self._cached_weights()
        return {
            "weights": f"timm pretrained {cfg.get('architecture')}.{cfg.get('tag')}",
            "weights_file": path.name,
            "weights_revision": path.parent.name,
        }

    def fingerprint(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().fingerprint(),
            "model_kwargs": dict(o.model_kwargs),
            "layer": o.layer,
            "pooling": o.pooling,
        }

    def _cached_weights(self) -> tuple[Path, bool]:
        """(local file of timm's pretrained weights, whether it is the original-URL file)."""
        cfg = self._pretrained_cfg()
        hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            names = (
                [cfg["hf_hub_filename"]]
                if cfg.get("hf_hub_filename")
                else ["model.safetensors", "pytorch_model.bin"]
            )
            for filename in names:
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str):
                    return Path(found), False
        if url:
            import torch

            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            if cached.is_file():
                return cached, True
        where = hub_id or url
        if not where:
            raise ConfigError(
                f"timm model {self.options.model!r} has no pretrained weights", key="pretrained"
            )
        raise ConfigError(
            f"pretrained weights of timm model {self.options.model!r} ({where}) are not in the local cache, "
            "and clbench never downloads: fetch them into the Hugging Face cache on a machine with "
            "internet access, or point `checkpoint` at a local file",
            key="pretrained",
        )

    # -- model -------------------------------------------------------------------------------
    def _build(self) -> tuple[Any, list[str]]:
        import timm

        o = self.options
        kwargs = dict(o.model_kwargs)
        if o.pretrained:
            path, original = self._cached_weights()
            custom = bool(self._pretrained_cfg().get("custom_load")) and original
            kwargs["pretrained_cfg_overlay"] = {"file": str(path), "custom_load": custom, "source": ""}
        try:
            model = timm.create_model(o.model, pretrained=o.pretrained, num_classes=0, **kwargs)
        except TypeError as err:
            raise ConfigError(
                f"timm model {o.model!r} rejects model_kwargs ({err})", key="model_kwargs"
            ) from None
        except RuntimeError as err:
            if not o.pretrained:
                raise
            raise CheckpointError(f"timm model {o.model!r}: pretrained weights do not load ({err})") from None
        classifier = model.pretrained_cfg.get("classifier") or ()
        head = [f"{c}.*" for c in ((classifier,) if isinstance(classifier, str) else classifier)]
        self._select_layer(model)
        return model, head

    def _select_layer(self, model: Any) -> None:
        layer = self.options.layer
        if layer is None:
            return
        if re.fullmatch(r"-?\d+", layer.strip()):
            if not hasattr(model, "forward_intermediates"):
                raise ConfigError(
                    f"timm model {self.options.model!r} has no forward_intermediates; name a module instead",
                    key="layer",
                )
            self._index = int(layer)
            params = inspect.signature(model.forward_intermediates).parameters
            if "return_prefix_tokens" in params:  # transformers: tokens, class token first
                self._tokens = {"output_fmt": "NLC", "return_prefix_tokens": True}
            return
        modules = dict(model.named_modules())
        if layer not in modules:
            close = difflib.get_close_matches(layer, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"timm model {self.options.model!r} has no module {layer!r}{hint}", key="layer")
        self._module = modules[layer]

    def _run_to_module(self, x: Any) -> Any:
        """Output of the ``layer`` module; the forward stops there (the hook lives only for this call)."""
        captured = []

        def hook(module: Any, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _Captured

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0]

    def _forward(self, x: Any) -> Any:
        import torch

        m, pooling = self.model, self.options.pooling
        npt = int(getattr(m, "num_prefix_tokens", 0) or 0)
        channels_last = False
        if self._index is not None:
            try:
                (feats,) = m.forward_intermediates(
                    x, indices=[self._index], intermediates_only=True, **self._tokens
                )
            except (IndexError, AssertionError, ValueError) as err:
                raise ConfigError(f"layer index {self._index} is out of range ({err})", key="layer") from None
            if isinstance(feats, tuple):  # (patch tokens, prefix tokens)
                feats = feats[0] if feats[1] is None else torch.cat([feats[1], feats[0]], dim=1)
        elif self._module is not None:
            feats = self._run_to_module(x)
        elif pooling == "default":
            return m(x)
        else:
            feats = m.forward_features(x)
            channels_last = getattr(m, "output_fmt", "NCHW") == "NHWC"
        return pool_features(feats, pooling, num_prefix_tokens=npt, channels_last=channels_last)

    def info(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().info(),
            "model_kwargs": dict(o.model_kwargs),
            "layer": o.layer,
            "pooling": o.pooling,
            "weights": self._weights_identity() if not o.checkpoint else {"checkpoint": o.checkpoint},
        }
