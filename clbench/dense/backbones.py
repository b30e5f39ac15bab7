"""Multi-level feature backbones for dense tasks, built from a clbench image encoder.

``build_backbone(encoder)`` takes the encoder's network exactly as feature extraction uses it
(checkpoint loaded under the coverage rules of :mod:`clbench.checkpoints`, so a checkpoint that
does not cover the backbone fails here too), copies it, and exposes feature maps fine to coarse:

- **ResNet family** (timm or torchvision: ``conv1`` ... ``layer1..layer4``): stages ``c2..c5``
  at strides 4, 8, 16, 32 (``levels`` picks a contiguous range, e.g. ``"c4"`` for a C4 head);
- **ViT** (timm ``VisionTransformer``): a simple feature pyramid as in ViTDet (Li et al. 2022)
  from the last block's patch tokens (after the final norm): two stride-2 deconvolutions (with
  a channel LayerNorm and GELU between them) for stride p/4, one for p/2, identity for p, 2x2
  max-pooling for 2p, where p is the patch size. Positional embeddings are resampled to each
  input size and inputs are padded to a multiple of p. These layers are new (randomly
  initialised from torch's RNG); ViTDet's per-level 1x1/3x3 output convolutions are left to
  the task's neck (the detection task uses torchvision's FPN).

Options:

- ``frozen_stages``: 0 trains everything; 1 freezes the stem (ResNet ``conv1``/``bn1``; ViT patch
  embedding, class/register tokens and positional embedding); k >= 2 also freezes stages c2..ck
  (ViT: the blocks split into four equal groups, c5 with the final norm). detectron2's default
  ``FREEZE_AT: 2`` is ``frozen_stages: 2``; ``5`` freezes the whole trunk (the linear protocol).
  Frozen stages get ``requires_grad = False`` and stay in eval mode when the model trains.
- ``norm``: ``frozen_bn`` (every BatchNorm2d becomes torchvision's FrozenBatchNorm2d holding the
  checkpoint's statistics and affine parameters, as detectron2 and torchvision's detection
  models do); ``sync_bn`` (``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` when a process group
  is initialised, else plain BatchNorm2d in train mode); ``group_norm`` (every BatchNorm2d
  becomes a 32-group GroupNorm with fresh affine parameters: the checkpoint's BN statistics are
  lost, so it only makes sense when the whole network trains, as in "training from scratch"
  schedules). ViTs have no BatchNorm: ``norm`` changes nothing there.

>>> bb = build_backbone(encoder, frozen_stages=2, norm="frozen_bn")   # doctest: +SKIP
>>> bb.out_channels, bb.strides                                        # doctest: +SKIP
([256, 512, 1024, 2048], [4, 8, 16, 32])
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import CapabilityError, ConfigError

Norm = Literal["frozen_bn", "sync_bn", "group_norm"]
NORMS = ("frozen_bn", "sync_bn", "group_norm")
_STAGES = ("c2", "c3", "c4", "c5")
_RESNET_STAGES = {"c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"}


def parse_levels(levels: str) -> list[str]:
    """``"c2-c5"`` -> ``["c2", "c3", "c4", "c5"]``; ``"c4"`` -> ``["c4"]``.

    >>> parse_levels("c3-c5")
    ['c3', 'c4', 'c5']
    """
    m = re.fullmatch(r"\s*c([2-5])\s*(?:-\s*c([2-5])\s*)?", str(levels))
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise ConfigError(
            f"expected a level such as 'c4' or a range such as 'c2-c5', got {levels!r}", key="levels"
        )
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    return [f"c{i}" for i in range(lo, hi + 1)]


class FeatureBackbone(nn.Module):
    """A trunk returning ``OrderedDict`` ``{"0": finest, "1": ..., }`` feature maps.

    ``out_channels`` and ``strides`` have one entry per returned level; ``mean``/``std`` are the
    encoder's input normalisation (identity when it does not normalise), ``levels`` the level
    names (``"c2"``...). ``spare_stage(level)`` hands over a ResNet stage this backbone does not
    run (e.g. ``c5`` under ``levels: c4``, for a C4 RoI head) and removes it from the backbone.
    """

    out_channels: list[int]
    strides: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self) -> None:
        super().__init__()
        self.levels: list[str] = []
        self.kind: str = ""
        self._frozen: list[nn.Module] = []
        self._spare: dict[str, nn.Module] = {}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def spare_stage(self, level: str) -> nn.Module:
        if level not in self._spare:
            raise CapabilityError(
                f"{self.kind} backbone has no unused stage {level!r} to hand over (levels {self.levels})"
            )
        return self._spare.pop(level)

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        for m in self._frozen:  # frozen stages keep their statistics (BN in eval mode)
            m.eval()
        return self

    def _freeze(self, modules: list[nn.Module], params: list[nn.Parameter] = ()) -> None:
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)
            self._frozen.append(m)
        for p in params:
            p.requires_grad_(False)


class ResNetBackbone(FeatureBackbone):
    """Stages c2..c5 of a timm or torchvision ResNet (ResNeXt, wide ResNet, ...)."""

    def __init__(self, model: nn.Module, levels: list[str], frozen_stages: int):
        super().__init__()
        self.kind, self.levels = "ResNet", levels
        names = [n for n, _ in model.named_children()]
        stem = names[: names.index("layer1")]
        self.stem = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in stem))
        last = _STAGES.index(levels[-1])
        self.stage_names = list(_STAGES[: last + 1])
        self.stages = nn.ModuleDict({s: getattr(model, _RESNET_STAGES[s]) for s in self.stage_names})
        for s in _STAGES[last + 1 :]:
            self._spare[s] = getattr(model, _RESNET_STAGES[s])
        if frozen_stages >= 1:
            self._freeze([self.stem])
        for s in self.stage_names[: max(0, frozen_stages - 1)]:
            self._freeze([self.stages[s]])

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stem(x)
        for s in self.stage_names:
            x = self.stages[s](x)
            if s in self.levels:
                out[str(len(out))] = x
        return out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ViTDet's norm in the feature pyramid)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ViTBackbone(FeatureBackbone):
    """A simple feature pyramid (ViTDet) on a timm ViT's last-block patch tokens."""

    def __init__(self, model: nn.Module, levels: list[str], frozen_stages: int):
        super().__init__()
        from timm.layers import Format

        self.kind, self.levels = "ViT", levels
        self.vit = model
        # accept any input size: resample the positional embedding, keep patches as NHWC
        model.dynamic_img_size = True
        pe = model.patch_embed
        pe.strict_img_size, pe.flatten, pe.output_fmt = False, False, Format.NHWC
        self.patch = int(pe.patch_size[0])
        dim = int(model.embed_dim)
        self.scales = nn.ModuleDict()
        channels = {"c2": dim // 4, "c3": dim // 2, "c4": dim, "c5": dim}
        for lvl in levels:
            if lvl == "c2":
                mod = nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    LayerNorm2d(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
                )
            elif lvl == "c3":
                mod = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
            elif lvl == "c4":
                mod = nn.Identity()
            else:
                mod = nn.MaxPool2d(2, 2)
            self.scales[lvl] = mod
        self.out_channels = [channels[lvl] for lvl in levels]
        factor = {"c2": 0.25, "c3": 0.5, "c4": 1.0, "c5": 2.0}
        self.strides = [max(1, round(self.patch * factor[lvl])) for lvl in levels]
        blocks = list(model.blocks)
        if frozen_stages >= 1:
            stem = [
                getattr(model, n)
                for n in ("patch_embed", "norm_pre", "patch_drop", "pos_drop")
                if hasattr(model, n)
            ]
            tokens = [getattr(model, n) for n in ("cls_token", "reg_token", "pos_embed")]
            self._freeze(stem, [t for t in tokens if isinstance(t, nn.Parameter)])
        n = len(blocks)
        for k in range(2, min(frozen_stages, 5) + 1):
            group = blocks[(k - 2) * n // 4 : (k - 1) * n // 4]
            self._freeze(group + ([model.norm] if k == 5 else []))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        h, w = x.shape[-2:]
        p = self.patch
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h))
        (feat,) = self.vit.forward_intermediates(
            x, indices=[len(self.vit.blocks) - 1], norm=True, intermediates_only=True
        )
        return OrderedDict((str(i), self.scales[lvl](feat)) for i, lvl in enumerate(self.levels))


def build_backbone(
    encoder: Any,
    *,
    device: str = "cpu",
    frozen_stages: int = 0,
    norm: str = "frozen_bn",
    levels: str = "c2-c5",
) -> FeatureBackbone:
    """A :class:`FeatureBackbone` on a copy of ``encoder``'s network (weights already loaded).

    Raises :class:`CapabilityError` for an encoder without a torch image backbone, or with an
    architecture other than a ResNet or a timm ViT; :class:`ConfigError` on bad options.
    """
    if norm not in NORMS:
        raise ConfigError(f"expected one of {', '.join(NORMS)}, got {norm!r}", key="norm")
    if not 0 <= int(frozen_stages) <= 5:
        raise ConfigError(
            f"expected 0 (nothing frozen) to 5 (whole trunk), got {frozen_stages}", key="frozen_stages"
        )
    names = parse_levels(levels)
    if "image" not in getattr(encoder, "modalities", ()):
        raise CapabilityError(f"encoder {getattr(encoder, 'name', encoder)!r} does not take images")
    module = encoder.torch_module(device)  # CapabilityError when there is no torch backbone
    kind = _architecture(module)
    if kind is None:
        raise CapabilityError(
            f"encoder {encoder.name!r}: {type(module).__name__} is neither a ResNet (conv1, layer1..layer4) "
            "nor a timm VisionTransformer; dense tasks support those two families"
        )
    # a copy: the encoder's own network keeps serving feature extraction untouched
    module = copy.deepcopy(module).cpu().float()
    was_training = module.training
    if kind == "resnet":
        module = _convert_norm(module, norm)
        bb: FeatureBackbone = ResNetBackbone(module, names, int(frozen_stages))
        with torch.no_grad():
            bb.eval()
            feats = bb(torch.zeros(1, 3, 64, 64))
        bb.out_channels = [int(f.shape[1]) for f in feats.values()]
        bb.strides = [64 // int(f.shape[-1]) for f in feats.values()]
    else:
        bb = ViTBackbone(module, names, int(frozen_stages))
    bb.train(was_training)
    bb.mean, bb.std = _normalisation(encoder)
    return bb.to(device)


def _architecture(module: nn.Module) -> str | None:
    if all(isinstance(getattr(module, f"layer{i}", None), nn.Module) for i in range(1, 5)) and hasattr(
        module, "conv1"
    ):
        return "resnet"
    if all(hasattr(module, a) for a in ("patch_embed", "blocks", "forward_intermediates", "embed_dim")):
        return "vit"
    return None


def _normalisation(encoder: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    t = getattr(encoder, "transform", None)
    mean = getattr(t, "mean", None)
    std = getattr(t, "std", None)
    if mean is None:  # the encoder feeds [0, 1] pixels (e.g. converted SimCLR weights)
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in (std or (1.0, 1.0, 1.0)))  # type: ignore[return-value]


def _convert_norm(module: nn.Module, norm: str) -> nn.Module:
    if norm == "sync_bn":
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module
    return _replace_bn(module, norm)


def _replace_bn(module: nn.Module, norm: str) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            if norm == "frozen_bn":
                new: nn.Module = FrozenBatchNorm2d(c, eps=child.eps)
                with torch.no_grad():
                    new.weight.copy_(child.weight if child.affine else torch.ones(c))
                    new.bias.copy_(child.bias if child.affine else torch.zeros(c))
                    if child.running_mean is not None:
                        new.running_mean.copy_(child.running_mean)
                        new.running_var.copy_(child.running_var)
            else:
                new = nn.GroupNorm(_groups(c), c, eps=child.eps)
            setattr(module, name, new)
        else:
            _replace_bn(child, norm)
    return module


def _groups(channels: int, wanted: int = 32) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


__all__ = ["NORMS", "FeatureBackbone", "build_backbone", "parse_levels"]
