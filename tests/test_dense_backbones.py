"""Multi-level backbones for dense tasks: channels/strides, frozen stages, norms, coverage."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from clbench.dense.backbones import build_backbone, parse_levels
from clbench.encoders.identity import IdentityEncoder
from clbench.encoders.timm_encoder import TimmEncoder
from clbench.encoders.torchvision_encoder import TorchvisionEncoder
from clbench.errors import CapabilityError, CheckpointError, ConfigError
from clbench.options import parse_options

TINY_VIT = {"model": "vit_tiny_patch16_224", "model_kwargs": {"depth": 4}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cls: type, tmp_path=None, **options):
    return cls(parse_options(cls.Options, options), name="test", root=tmp_path, seed=0)


def _x(h: int = 96, w: int = 128) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("cls", "options", "channels"),
    [
        (TimmEncoder, {"model": "resnet18"}, [64, 128, 256, 512]),
        (TorchvisionEncoder, {"model": "resnet18"}, [64, 128, 256, 512]),
        (TimmEncoder, TINY_VIT, [48, 96, 192, 192]),
    ],
    ids=["timm-resnet18", "torchvision-resnet18", "timm-vit-tiny"],
)
def test_declared_channels_and_strides_match_the_feature_maps(cls, options, channels):
    bb = build_backbone(make(cls, **options)).eval()
    assert bb.out_channels == channels
    assert bb.strides == [4, 8, 16, 32]
    with torch.no_grad():
        out = bb(_x())
    assert list(out) == ["0", "1", "2", "3"]
    for f, c, s in zip(out.values(), bb.out_channels, bb.strides):
        assert f.shape[:2] == (2, c)
        assert f.shape[-2:] == (math.ceil(96 / s), math.ceil(128 / s))
    assert bb.mean == (0.485, 0.456, 0.406) and bb.std == (0.229, 0.224, 0.225)


def test_vit_takes_sizes_that_are_not_multiples_of_the_patch():
    bb = build_backbone(make(TimmEncoder, **TINY_VIT), levels="c4").eval()
    with torch.no_grad():
        (f,) = bb(torch.zeros(1, 3, 100, 70)).values()
    assert f.shape == (1, 192, 7, 5)  # padded to 112 x 80


def test_levels_pick_a_range_and_hand_over_the_unused_stage():
    enc = make(TorchvisionEncoder, model="resnet18")
    bb = build_backbone(enc, levels="c4")
    assert bb.out_channels == [256] and bb.strides == [16]
    res5 = bb.spare_stage("c5")
    assert res5 is not enc.model.layer4  # a copy: the encoder's network is untouched
    assert all("layer4" not in k for k in bb.state_dict())
    with pytest.raises(CapabilityError):
        bb.spare_stage("c5")
    assert parse_levels("c3-c5") == ["c3", "c4", "c5"]
    for bad in ("c1-c5", "c5-c3", "p2", "c2-"):
        with pytest.raises(ConfigError):
            parse_levels(bad)


def test_frozen_stages_have_no_gradient_and_stay_in_eval_mode():
    bb = build_backbone(make(TimmEncoder, model="resnet18"), frozen_stages=2, norm="sync_bn")
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("stem.", "stages.c2.")) for n in frozen)
    assert all(p.requires_grad for n, p in bb.named_parameters() if n.startswith(("stages.c3", "stages.c5")))
    assert {n for n, _ in bb.named_parameters() if n.startswith(("stem.", "stages.c2."))} == frozen
    bb.train()
    assert not bb.stem.bn1.training and not bb.stages["c2"].training and bb.stages["c3"].training
    # not distributed: sync_bn keeps plain BatchNorm (batch statistics in training)
    assert isinstance(bb.stages["c3"][0].bn1, nn.BatchNorm2d)

    vit = build_backbone(make(TimmEncoder, **TINY_VIT), frozen_stages=2)
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight"} <= frozen
    assert any(n.startswith("vit.blocks.0.") for n in frozen)  # c2 = the first quarter of the blocks
    assert not any(n.startswith(("vit.blocks.1.", "scales.")) for n in frozen)
    with pytest.raises(ConfigError):
        build_backbone(make(TimmEncoder, model="resnet18"), frozen_stages=6)


def test_frozen_bn_keeps_the_checkpoint_statistics(tmp_path):
    ref = torchvision.models.resnet18()
    g = torch.Generator().manual_seed(1)
    for m in ref.modules():  # statistics and affine parameters far from their initial values
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    ref.fc = nn.Identity()
    torch.save(
        {"state_dict": {f"module.encoder_q.{k}": v for k, v in ref.state_dict().items()}},
        tmp_path / "moco.pth",
    )
    enc = make(TorchvisionEncoder, tmp_path, model="resnet18", checkpoint="moco.pth")
    bb = build_backbone(enc, norm="frozen_bn")
    assert enc.coverage["counts"]["missing"] == 0
    assert isinstance(bb.stem.bn1, FrozenBatchNorm2d)
    assert torch.equal(bb.stem.bn1.running_mean, ref.bn1.running_mean)
    assert torch.equal(bb.stages["c4"][1].bn2.running_var, ref.layer3[1].bn2.running_var)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    bb.train()  # frozen BN: the same output in train mode as the reference in eval mode
    ref.eval()
    x = _x(64, 64)
    with torch.no_grad():
        c5 = bb(x)["3"]
        expected = ref.layer4(
            ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))
        )
    torch.testing.assert_close(c5, expected, rtol=1e-3, atol=1e-4)  # FrozenBN folds scale and shift


def test_group_norm_replaces_batch_norm():
    bb = build_backbone(make(TimmEncoder, model="resnet18"), norm="group_norm")
    gns = [m for m in bb.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in bb.modules())
    assert all(m.num_groups == 32 for m in gns)


def test_a_checkpoint_that_does_not_cover_the_backbone_fails(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    torch.save(sd, tmp_path / "partial.pth")
    enc = make(TorchvisionEncoder, tmp_path, model="resnet18", checkpoint="partial.pth")
    with pytest.raises(CheckpointError, match="layer4"):
        build_backbone(enc)


def test_encoders_without_a_torch_image_backbone_are_incapable():
    with pytest.raises(CapabilityError):
        build_backbone(make(IdentityEncoder))
    with pytest.raises(CapabilityError, match="neither a ResNet"):
        build_backbone(make(TimmEncoder, model="convnext_atto"))
