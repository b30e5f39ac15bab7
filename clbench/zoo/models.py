"""Architectures some zoo entries need that timm and torchvision do not build, registered in timm.

SwAV's wide ResNet-50s (``src/resnet50.py`` with ``widen`` 2, 4, 5) multiply every width by
``widen``: the 7x7 stem and all four stages. timm's ResNet scales the stages (``channels``) but
keeps a 64-channel stem, and torchvision's ``wide_resnet50_2`` widens only the bottleneck's inner
convolutions, so neither loads these checkpoints. ``resnet50w{2,4,5}_swav`` are timm's ResNet
with the stem and the first block's inputs widened too; the key names are torchvision's (which
SwAV's are). SwAV pads with ConstantPad2d(1) before a conv1 with padding 2, which is the same
as padding 3.

SimCLR v2's wide ResNet-50 (``r50_2x_sk0``, the TF ``width_multiplier`` 2, converted by
Separius/SimCLRv2-Pytorch) widens the same way (a 64w-channel 7x7 stem, bottlenecks of 64w to
512w channels): ``resnet50w2_simclrv2`` is the same network as ``resnet50w2_swav``, registered
under its own name so that the entry says what it is; the ``simclrv2`` layout renames its keys.

Importing this module imports timm and torch: only the zoo encoder does, when it builds a model.
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn


def _swav_wide_resnet50(widen: int, name: str | None = None, **kwargs: Any) -> nn.Module:
    from timm.models.resnet import Bottleneck, ResNet

    for key in ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    w = 64 * widen
    model = ResNet(Bottleneck, (3, 4, 6, 3), channels=(w, 2 * w, 4 * w, 8 * w), **kwargs)
    model.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(w)
    first = model.layer1[0]
    first.conv1 = nn.Conv2d(w, w, kernel_size=1, bias=False)
    first.downsample[0] = nn.Conv2d(w, 4 * w, kernel_size=1, bias=False)
    for m in (model.conv1, first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    arch = name or f"resnet50w{widen}_swav"
    model.pretrained_cfg = {"architecture": arch, "classifier": "fc", "input_size": (3, 224, 224)}
    return model


@register_model
def resnet50w2_swav(**kwargs: Any) -> nn.Module:
    """SwAV ResNet-50 w2 (every width x2; 4096-d features)."""
    return _swav_wide_resnet50(2, **kwargs)


@register_model
def resnet50w4_swav(**kwargs: Any) -> nn.Module:
    """SwAV ResNet-50 w4 (every width x4; 8192-d features)."""
    return _swav_wide_resnet50(4, **kwargs)


@register_model
def resnet50w5_swav(**kwargs: Any) -> nn.Module:
    """SwAV ResNet-50 w5 (every width x5; 10240-d features)."""
    return _swav_wide_resnet50(5, **kwargs)


@register_model
def resnet50w2_simclrv2(**kwargs: Any) -> nn.Module:
    """SimCLR v2 ResNet-50 2x (sk0; every width x2, the stem's too; 4096-d features)."""
    return _swav_wide_resnet50(2, "resnet50w2_simclrv2", **kwargs)
