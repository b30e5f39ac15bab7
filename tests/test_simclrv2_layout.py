"""SimCLR v2 as converted by Separius/SimCLRv2-Pytorch: the ``simclrv2`` layout and its zoo entries.

The converted file is ``{"resnet": ResNet.state_dict(), "head": ContrastiveHead.state_dict()}``
with Separius's own module names. Two independent descriptions of those names are checked
against each other and against the adapter:

- ``SepariusResNet`` below re-creates the converter's module tree from its description (a
  ``net`` Sequential of the stem and four stages, ``blocks`` lists of bottlenecks with a ``net``
  Sequential and a ``projection`` shortcut, every BatchNorm wrapped in Sequential(BN, ReLU or
  Identity), a ``fc`` linear head), so its ``state_dict()`` *is* the file layout, and its forward
  (mean of the last stage) is the original module's embedding;
- ``STEM_AND_FIRST_BLOCK`` spells out the exact keys and shapes of the stem and the first block
  as read from the converter, literally;
- ``_to_separius`` maps a torchvision state dict to those names with its own table (the inverse
  of the adapter's map, written separately).

A wrong map (conv2 and conv3 swapped, the shortcut BN taken for bn1, ...) fails the literal key
check, the key-set equality or the embedding equality.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from torch import nn
from torchvision import transforms as T

from clbench.checkpoints.coverage import load_backbone
from clbench.checkpoints.formats import detect_format, extract_backbone
from clbench.encoders.zoo import build
from clbench.errors import CheckpointError, ConfigError
from clbench.zoo.catalogue import get_entry

IMAGE = np.random.default_rng(3).integers(0, 256, size=(290, 330, 3), dtype=np.uint8)  # not square
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# -- Separius's module tree, re-created from its description -----------------------------------
def _bn(c, relu=True):
    return nn.Sequential(nn.BatchNorm2d(c, eps=1e-5), nn.ReLU() if relu else nn.Identity())


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


class _Shortcut(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride)
        self.bn = _bn(cout, relu=False)

    def forward(self, x):
        return self.bn(self.shortcut(x))


class _Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride, first):
        super().__init__()
        self.projection = _Shortcut(cin, 4 * mid, stride) if first else nn.Identity()
        self.net = nn.Sequential(_conv(cin, mid, 1), _bn(mid), _conv(mid, mid, 3, stride), _bn(mid),
                                 _conv(mid, 4 * mid, 1), _bn(4 * mid, relu=False))

    def forward(self, x):
        return torch.relu(self.projection(x) + self.net(x))


class _Stage(nn.Module):
    def __init__(self, n, cin, mid, stride):
        super().__init__()
        self.blocks = nn.ModuleList([_Bottleneck(cin if i == 0 else 4 * mid, mid, stride if i == 0 else 1, i == 0)
                                     for i in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class SepariusResNet(nn.Module):
    """ResNet-50 with width multiplier ``w`` and no selective kernels, in Separius's names."""

    def __init__(self, w=1):
        super().__init__()
        stem = nn.Sequential(_conv(3, 64 * w, 7, 2), _bn(64 * w), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64 * w
        for n, mid, stride in ((3, 64 * w, 1), (4, 128 * w, 2), (6, 256 * w, 2), (3, 512 * w, 2)):
            stages.append(_Stage(n, cin, mid, stride))
            cin = 4 * mid
        self.net = nn.Sequential(stem, *stages)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        return self.net(x).mean(dim=[2, 3])


def _head_state(dim=2048):
    """The contrastive head's keys: layers.{0,3,6} Linear (no bias), layers.{1,4,7} BatchNorm1d."""
    sd = {}
    for i, out in ((0, dim), (3, dim), (6, 128)):
        sd[f"layers.{i}.weight"] = torch.randn(out, dim)
        sd.update({f"layers.{i + 1}.{p}": torch.ones(out) for p in ("weight", "bias", "running_var")})
        sd[f"layers.{i + 1}.running_mean"] = torch.zeros(out)
        sd[f"layers.{i + 1}.num_batches_tracked"] = torch.tensor(0)
    return sd


# the stem and the first block of stage 1 exactly as the converter names them (r50, 1x, sk0)
STEM_AND_FIRST_BLOCK = {
    "net.0.0.weight": (64, 3, 7, 7),
    **{f"net.0.1.0.{p}": (64,) for p in BN[:4]},
    "net.0.1.0.num_batches_tracked": (),
    "net.1.blocks.0.projection.shortcut.weight": (256, 64, 1, 1),
    **{f"net.1.blocks.0.projection.bn.0.{p}": (256,) for p in BN[:4]},
    "net.1.blocks.0.projection.bn.0.num_batches_tracked": (),
    "net.1.blocks.0.net.0.weight": (64, 64, 1, 1),
    **{f"net.1.blocks.0.net.1.0.{p}": (64,) for p in BN[:4]},
    "net.1.blocks.0.net.1.0.num_batches_tracked": (),
    "net.1.blocks.0.net.2.weight": (64, 64, 3, 3),
    **{f"net.1.blocks.0.net.3.0.{p}": (64,) for p in BN[:4]},
    "net.1.blocks.0.net.3.0.num_batches_tracked": (),
    "net.1.blocks.0.net.4.weight": (256, 64, 1, 1),
    **{f"net.1.blocks.0.net.5.0.{p}": (256,) for p in BN[:4]},
    "net.1.blocks.0.net.5.0.num_batches_tracked": (),
}

# torchvision -> Separius, written independently of clbench.checkpoints.formats
_TV_TO_SEPARIUS = {"conv1": "net.0", "bn1": "net.1.0", "conv2": "net.2", "bn2": "net.3.0", "conv3": "net.4",
                   "bn3": "net.5.0", "downsample.0": "projection.shortcut", "downsample.1": "projection.bn.0"}


def _to_separius(tv_state):
    out = {}
    for key, value in tv_state.items():
        if key.startswith("fc."):
            out[key] = value
            continue
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(\w+)", key)
        if m:
            out[f"net.{m[1]}.blocks.{m[2]}.{_TV_TO_SEPARIUS[m[3]]}.{m[4]}"] = value
        else:
            module, param = key.split(".")
            out[{"conv1": "net.0.0", "bn1": "net.0.1.0"}[module] + "." + param] = value
    return out


def _randomise_bn(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.num_batches_tracked.fill_(5)
    return model


@pytest.fixture(scope="module")
def original():
    """A random torchvision ResNet-50 (BN statistics too) and the same weights in Separius's module."""
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.resnet50()).eval()
    separius = SepariusResNet().eval()
    separius.load_state_dict(_to_separius(tv.state_dict()), strict=True)
    tv.fc = nn.Identity()
    return tv, separius


def _file(separius):
    return {"resnet": {k: v.clone() for k, v in separius.state_dict().items()}, "head": _head_state()}


def test_the_layout_names_are_the_converters():
    names = SepariusResNet().state_dict()
    for key, shape in STEM_AND_FIRST_BLOCK.items():
        assert tuple(names[key].shape) == shape, key
    # the rest of the stage follows the same pattern; only first blocks have a projection shortcut
    assert "net.1.blocks.1.net.5.0.running_var" in names and "net.1.blocks.1.projection.bn.0.weight" not in names
    assert tuple(names["net.4.blocks.2.net.4.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(names["net.2.blocks.0.net.2.weight"].shape) == (128, 128, 3, 3)
    assert tuple(names["fc.weight"].shape) == (1000, 2048)
    assert not any(k.startswith("net.0.2") for k in names)  # the max pool has no weights
    # the test's own torchvision -> Separius table reproduces exactly these names and shapes
    tv = torchvision.models.resnet50().state_dict()
    mapped = _to_separius(tv)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in names.items()}


def test_the_separius_module_embeds_like_torchvision(original):
    tv, separius = original
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(separius(x), tv(x), rtol=1e-5, atol=1e-5)


def test_extract_renames_every_key_and_drops_the_heads(original):
    tv, separius = original
    obj = _file(separius)
    assert detect_format(obj) == "simclrv2"
    sd, info = extract_backbone(obj)
    assert info["format"] == "simclrv2" and info["container"] == "resnet" and info["detected"] is True
    assert set(sd) == {k for k in tv.state_dict()}  # torchvision names, fc gone
    assert sd["conv1.weight"] is obj["resnet"]["net.0.0.weight"]
    assert sd["layer1.0.conv3.weight"] is obj["resnet"]["net.1.blocks.0.net.4.weight"]
    assert sd["layer3.0.downsample.1.running_var"] is obj["resnet"]["net.3.blocks.0.projection.bn.0.running_var"]
    assert sd["layer4.2.bn2.bias"] is obj["resnet"]["net.4.blocks.2.net.3.0.bias"]
    assert set(info["dropped"]) == {"fc.weight", "fc.bias"} | {f"head.{k}" for k in obj["head"]}
    report = load_backbone(torchvision.models.resnet50(num_classes=1000), sd, dropped=info["dropped"],
                           head=["fc.*"], allow_missing=["fc.*"])
    assert report["counts"]["unexpected"] == 0 and report["counts"]["mismatched"] == 0
    assert report["missing"] == ["fc.weight", "fc.bias"]


def test_a_wrong_or_incomplete_file_is_refused(original):
    _, separius = original
    obj = _file(separius)
    extra = {"resnet": {**obj["resnet"], "net.1.blocks.0.net.6.weight": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match="no name in it.*net.1.blocks.0.net.6.weight"):
        extract_backbone(extra, "simclrv2")
    sk1 = {"resnet": {**obj["resnet"], "net.1.blocks.0.net.2.main_conv.0.weight": torch.zeros(128, 64, 3, 3),
                      "net.1.blocks.0.net.2.mixing_conv.0.weight": torch.zeros(32, 64, 1, 1)}}
    with pytest.raises(CheckpointError, match=r"selective-kernel \(sk1\)"):
        extract_backbone(sk1, "simclrv2")
    with pytest.raises(CheckpointError, match="expected the weights under 'resnet'"):
        extract_backbone({"state_dict": obj["resnet"]}, "simclrv2")
    # a missing key is a coverage error when loading
    sd, info = extract_backbone({"resnet": {k: v for k, v in obj["resnet"].items() if "net.2.blocks.1.net.3" not in k}})
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    with pytest.raises(CheckpointError, match="layer2.1.bn2.weight"):
        load_backbone(model, sd, dropped=info["dropped"])


def test_zoo_entry_loads_with_full_coverage_embeds_like_the_original_unnormalised(original, tmp_path):
    tv, separius = original
    path = tmp_path / "r50_1x_sk0.pth"
    torch.save(_file(separius), path)
    enc = build("simclr-v2-r50-1x-sk0", root=tmp_path, checkpoint=str(path))
    enc.setup("cpu")
    # preprocessing: Resize(256), CenterCrop(224), [0, 1] input, no normalisation
    from PIL import Image

    ref_x = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224), T.ToTensor()])(
        Image.fromarray(IMAGE))[None]
    x = enc.preprocess(IMAGE, "image")
    torch.testing.assert_close(x[None], ref_x, rtol=0, atol=0)
    assert enc.transform.describe()["mean"] is None and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    emb = enc.encode(x[None], "image")
    with torch.no_grad():
        ref = separius(ref_x)
        torch.testing.assert_close(tv(ref_x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(emb, ref, rtol=1e-4, atol=1e-4)  # the original module's embedding
    cov = enc.coverage
    assert cov["format"] == "simclrv2" and cov["container"] == "resnet"
    assert cov["counts"]["missing"] == 0 and cov["counts"]["unexpected"] == 0 and cov["counts"]["mismatched"] == 0
    assert cov["loaded"] == cov["model_keys"] == 318  # every conv and BN tensor of the backbone
    assert {"fc.weight", "fc.bias", "head.layers.0.weight"} <= set(cov["dropped"])


def test_wide_2x_entry_covers_the_converted_layout_on_the_meta_device():
    with torch.device("meta"):
        separius = SepariusResNet(w=2)
    names = separius.state_dict()
    assert tuple(names["net.0.0.weight"].shape) == (128, 3, 7, 7)  # the stem is widened too
    assert tuple(names["net.1.blocks.0.projection.shortcut.weight"].shape) == (512, 128, 1, 1)
    obj = {"resnet": dict(names), "head": {"layers.0.weight": torch.empty(4096, 4096, device="meta")}}
    import clbench.zoo.models  # noqa: F401  (registers resnet50w2_simclrv2 in timm)

    enc = build("simclr-v2-r50-2x-sk0", checkpoint="unused.pth")
    with torch.device("meta"):
        model, head = enc._build()
    sd, info = extract_backbone(obj, get_entry("simclr-v2-r50-2x-sk0").layout)
    report = load_backbone(model, sd, dropped=info["dropped"], head=head)
    assert report["counts"]["missing"] == 0 and report["counts"]["unexpected"] == 0
    assert report["counts"]["mismatched"] == 0 and report["loaded"] == report["model_keys"] == len(names) - 2
    assert model.num_features == 4096
    assert enc.transform.describe()["mean"] is None and enc.transform.describe()["image_size"] == 224


def test_selective_kernel_entries_say_why_they_cannot_load():
    for name in ("simclr-v2-r50-1x-sk1", "simclr-v2-r152-3x-sk1"):
        entry = get_entry(name)
        assert entry.encoder is None and "selective" in entry.loadable
        with pytest.raises(ConfigError, match="cannot be loaded"):
            build(name, checkpoint="x.pth")
