"""torchvision classification models as image encoders.

The last linear layer of the classifier (``fc``, ``classifier``, ``heads``, ``head``) is replaced
by an identity before any weights load, so an embedding is the model's pre-logits features and
every remaining model key belongs to the backbone. Weights come from torchvision's weight enums
(read from the local torch hub cache only) or from a checkpoint in one of the SSL layouts.

Suite example (SwAV's released ResNet-50)::

    encoders:
      swav:
        type: torchvision
        model: resnet50
        checkpoint: weights/swav_800ep_pretrain.pth.tar
        std: [0.228, 0.224, 0.225]

Importing this module does not import torch or torchvision.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..options import option
from ._vision import VisionEncoder, VisionOptions

#: attributes that hold a torchvision classifier, in the order they are looked for
_HEADS = ("fc", "classifier", "heads", "head")


@dataclasses.dataclass(kw_only=True)
class TorchvisionOptions(VisionOptions):
    model: str = option(help="torchvision classification model name, e.g. resnet50")
    weights: str | None = option(
        None, "torchvision weights, e.g. IMAGENET1K_V2 or DEFAULT, read from the local torch hub cache only"
    )

    def validate(self) -> None:
        super().validate()
        if self.weights and self.checkpoint:
            raise ValueError("weights: set either weights or a checkpoint, not both")


class TorchvisionEncoder(VisionEncoder):
    """An image encoder built with ``torchvision.models.get_model``."""

    Options: ClassVar[type] = TorchvisionOptions

    def check(self) -> None:
        super().check()
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        if self.options.model not in names:
            close = difflib.get_close_matches(self.options.model, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown torchvision classification model {self.options.model!r}{hint}", key="model"
            )
        if self.options.weights:
            self._cached_weights()

    def _weights_enum(self) -> Any:
        from torchvision.models import get_model_weights

        name, wanted = self.options.model, self.options.weights
        try:
            enum = get_model_weights(name)
        except (ValueError, KeyError):
            raise ConfigError(f"unknown torchvision classification model {name!r}", key="model") from None
        member = wanted.rsplit(".", 1)[-1]
        if member in enum.__members__:
            return enum[member]
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ConfigError(
            f"{wanted!r} is not a weight of torchvision {name!r} (choices: {choices})", key="weights"
        )

    def _cached_weights(self) -> Path:
        import torch

        weights = self._weights_enum()
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url.split("?")[0]).name
        if not path.is_file():
            raise ConfigError(
                f"torchvision weights {weights} for {self.options.model!r} are not in the local torch hub "
                f"cache ({path}), and clbench never downloads: copy the file there, or point `checkpoint` "
                "at a local file",
                key="weights",
            )
        return path

    def _preprocess_defaults(self) -> dict[str, Any]:
        if not self.options.weights:
            return {}
        t = self._weights_enum().transforms()
        return {
            "image_size": t.crop_size[0],
            "resize_size": t.resize_size[0],
            "interpolation": t.interpolation.value,
            "mean": tuple(t.mean),
            "std": tuple(t.std),
        }

    def _weights_identity(self) -> dict[str, Any]:
        if not self.options.weights:
            return super()._weights_identity()
        return {"weights": f"torchvision {self._weights_enum()}", "weights_file": self._cached_weights().name}

    def _build(self) -> tuple[Any, list[str]]:
        from torchvision.models import get_model

        weights = None
        if self.options.weights:
            self._cached_weights()
            weights = self._weights_enum()
        model = get_model(self.options.model, weights=weights)
        return model, [f"{remove_classifier(model, self.options.model)}.*"]

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "weights": self._weights_identity() if not self.options.checkpoint else None,
        }


def remove_classifier(model: Any, name: str = "model") -> str:
    """Replace the classifier's last linear layer by an identity; return its module path."""
    from torch import nn

    for attr in _HEADS:
        module = getattr(model, attr, None)
        if not isinstance(module, nn.Module):
            continue
        linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        path = f"{attr}.{linears[-1]}" if linears[-1] else attr
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        return path
    raise ConfigError(
        f"cannot find the linear classifier of torchvision model {name!r} to remove", key="model"
    )
