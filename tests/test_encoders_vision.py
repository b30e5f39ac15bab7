"""Image preprocessing and the timm / torchvision encoders (options, identity, layers, local weights)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import typing

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

from clbench.checkpoints.formats import FORMAT_NAMES
from clbench.encoders._vision import ImageTransform, VisionOptions, resolve_transform, to_rgb_image
from clbench.encoders.timm_encoder import TimmEncoder
from clbench.encoders.torchvision_encoder import TorchvisionEncoder, remove_classifier
from clbench.errors import ConfigError, DataError
from clbench.options import parse_options

VIT = "vit_small_patch16_224"
VIT_KW = {"img_size": 32, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cls: type, tmp_path=None, *, seed: int = 0, **options):
    return cls(parse_options(cls.Options, options), name="test", root=tmp_path, seed=seed)


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


# -- preprocessing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sample",
    [
        np.arange(64, dtype=np.uint8).reshape(8, 8),  # 8x8 grayscale (sklearn digits size)
        np.full((28, 28), 200, dtype=np.uint8),  # MNIST
        np.zeros((28, 28, 1), dtype=np.uint8),
        np.zeros((5, 7, 3), dtype=np.uint8),  # smaller than the crop, not square
        np.zeros((3, 9, 9), dtype=np.uint8),  # channels first
        np.zeros((9, 9, 4), dtype=np.uint8),  # RGBA
        np.random.default_rng(0).random((10, 10)),  # floats in [0, 1]
        Image.new("L", (12, 20)),
    ],
    ids=["gray8", "gray28", "gray28x1", "small-rgb", "chw", "rgba", "float01", "pil-L"],
)
@pytest.mark.parametrize("size", [32, 224])
def test_any_image_becomes_a_3xSxS_float_tensor(sample, size):
    x = ImageTransform(image_size=size, resize_size=size + size // 8)(sample)
    assert x.shape == (3, size, size) and x.dtype == torch.float32


def test_grayscale_is_replicated_to_rgb():
    x = ImageTransform(image_size=8, resize_size=8, mean=None, std=None)(
        np.arange(64, dtype=np.uint8).reshape(8, 8)
    )
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    torch.testing.assert_close(x[0], torch.arange(64, dtype=torch.float32).reshape(8, 8) / 255)


def test_mean_std_normalisation_matches_a_manual_computation():
    arr = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)
    x = ImageTransform(image_size=16, resize_size=16, mean=mean, std=std)(arr)
    manual = (arr.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), manual, atol=1e-6)
    raw = ImageTransform(image_size=16, resize_size=16, mean=None, std=None)(arr)  # SimCLR: unnormalised
    np.testing.assert_allclose(raw.permute(1, 2, 0).numpy(), arr / 255.0, atol=1e-6)


def test_resize_then_center_crop():
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:, 30:50] = 255  # a bright vertical band in the middle
    x = ImageTransform(image_size=10, resize_size=20, interpolation="nearest", mean=None, std=None)(arr)
    # shorter side 40 -> 20 (so 20x40), center crop 10x10 = columns 15..25 of 40, i.e. 30..50 of 80
    assert torch.all(x == 1.0)


def test_bad_samples_raise_data_errors():
    with pytest.raises(DataError, match="float64 in"):
        to_rgb_image(np.full((4, 4), 16.0))  # sklearn digits scale (0..16) is not [0, 1]
    with pytest.raises(DataError, match=r"shape \(4, 4, 2\)"):
        to_rgb_image(np.zeros((4, 4, 2), dtype=np.uint8))


def test_transform_pickles_and_describes_itself():
    t = ImageTransform(image_size=32, resize_size=36, interpolation="bicubic")
    assert pickle.loads(pickle.dumps(t)) == t
    d = t.describe()
    assert json.loads(json.dumps(d)) == d
    assert d == {
        "image_size": 32,
        "resize_size": 36,
        "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }


def test_user_preprocessing_options_override_defaults():
    def opts(**kw):
        return parse_options(VisionOptions, kw)

    assert resolve_transform(opts(), {}).describe()["resize_size"] == 256  # 224 / 0.875
    t = resolve_transform(opts(image_size=224, crop_pct=0.9), {"interpolation": "bicubic"})
    assert (t.resize_size, t.interpolation) == (248, "bicubic")
    t = resolve_transform(opts(resize_size=40, image_size=32, normalize=False), {})
    assert (t.resize_size, t.mean, t.std) == (40, None, None)
    t = resolve_transform(
        opts(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]), {"image_size": 384, "resize_size": 400}
    )
    assert (t.image_size, t.resize_size, t.mean) == (384, 400, (0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "options, key",
    [
        ({"resize_size": 256, "crop_pct": 0.9}, "resize_size"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"image_size": 224, "resize_size": 200}, "resize_size"),
        ({"mean": [0.5]}, "mean"),
        ({"format": "moco"}, "format"),
        ({"allow_missing": ["fc.*"]}, "allow_missing"),
        ({"format": "simclr", "checkpoint": "x.pth"}, "format"),
    ],
)
def test_invalid_options_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        parse_options(TimmEncoder.Options, {"model": "resnet18", **options})


def test_format_choices_follow_the_adapters():
    hints = typing.get_type_hints(VisionOptions)
    assert typing.get_args(hints["format"]) == ("auto", *FORMAT_NAMES)


def test_encoder_modules_import_without_torch():
    code = (
        "import sys, clbench.encoders.timm_encoder, clbench.encoders.torchvision_encoder, clbench.checkpoints; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- timm encoder ------------------------------------------------------------------------------------
def test_timm_random_init_is_seeded_and_fingerprinted_without_building():
    a, b = (
        make(TimmEncoder, model="resnet18", image_size=32),
        make(TimmEncoder, model="resnet18", image_size=32),
    )
    c = make(TimmEncoder, model="resnet18", image_size=32, seed=1)
    fa = a.fingerprint()
    assert a.model is None
    assert fa["weights"] == "random-init seed 0" and fa["preprocess"]["image_size"] == 32
    assert fa == b.fingerprint() and fa != c.fingerprint()
    assert fa != make(TimmEncoder, model="resnet18", image_size=32, pooling="max").fingerprint()
    for enc in (a, b, c):
        enc.setup("cpu")
    x = images()
    assert torch.equal(a.encode(x, "image"), b.encode(x, "image"))
    assert not torch.allclose(a.encode(x, "image"), c.encode(x, "image"))
    assert a.embed_dim == 512 and a.encode(x, "image").shape == (3, 512)


def test_timm_end_to_end_from_raw_images():
    enc = make(TimmEncoder, model="resnet18", image_size=32)
    enc.setup("cpu")
    raw = [np.full((28, 28), v, dtype=np.uint8) for v in (0, 128, 255)]
    batch = enc.collate([enc.preprocess(r, "image") for r in raw], "image")
    assert batch.shape == (3, 3, 32, 32)
    with torch.no_grad():
        expected = enc.model(batch)
    torch.testing.assert_close(enc.encode(batch, "image"), expected)
    worker_copy = pickle.loads(pickle.dumps(enc))  # what a DataLoader worker receives: no model
    assert worker_copy.model is None
    torch.testing.assert_close(worker_copy.preprocess(raw[1], "image"), batch[1])


def test_timm_layer_and_pooling_on_a_cnn():
    enc = make(TimmEncoder, model="resnet18", image_size=32, layer="layer3", pooling="avgmax")
    enc.setup("cpu")
    x = images()
    with torch.no_grad():
        m = enc.model
        fmap = m.layer3(m.layer2(m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(x)))))))
    expected = 0.5 * (fmap.mean((2, 3)) + fmap.amax((2, 3)))
    torch.testing.assert_close(enc.encode(x, "image"), expected)
    assert enc.embed_dim == 256
    last = make(TimmEncoder, model="resnet18", image_size=32, layer="-1")  # forward_intermediates, avg pooled
    last.setup("cpu")
    torch.testing.assert_close(last.encode(x, "image"), enc.model(x))


def test_timm_layer_and_pooling_on_a_vit():
    kw = {"model": VIT, "model_kwargs": VIT_KW}
    by_index, by_name = make(TimmEncoder, **kw, layer="-1"), make(TimmEncoder, **kw, layer="blocks.1")
    avg = make(TimmEncoder, **kw, pooling="avg")
    for enc in (by_index, by_name, avg):
        enc.setup("cpu")
    assert by_index.transform.image_size == 32  # from model_kwargs img_size
    x = images()
    with torch.no_grad():
        tokens = by_index.model.forward_features(x)
        block = by_index.model.blocks[-1]
        captured = {}
        handle = block.register_forward_hook(lambda mod, args, out: captured.setdefault("out", out))
        by_index.model(x)
        handle.remove()
    torch.testing.assert_close(by_index.encode(x, "image"), captured["out"][:, 0])  # class token, before norm
    torch.testing.assert_close(by_name.encode(x, "image"), by_index.encode(x, "image"))
    torch.testing.assert_close(avg.encode(x, "image"), tokens[:, 1:].mean(1))
    assert avg.embed_dim == 384


def test_timm_bad_layer_pooling_and_names():
    enc = make(TimmEncoder, model="resnet18", image_size=32, layer="layer5")
    with pytest.raises(ConfigError, match=r"no module 'layer5'.*'layer\d'"):
        enc.setup("cpu")
    enc = make(TimmEncoder, model="resnet18", image_size=32, pooling="token")
    with pytest.raises(ConfigError, match="token pooling"):
        enc.setup("cpu")
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet19'.*'resnet18'"):
        make(TimmEncoder, model="resnet19").check()
    with pytest.raises(ConfigError, match="model_kwargs"):
        make(TimmEncoder, model="resnet18", model_kwargs={"not_an_arg": 1}).setup("cpu")
    with pytest.raises(ConfigError, match="model_kwargs"):
        make(TimmEncoder, model="resnet18", model_kwargs={"num_classes": 10})
    with pytest.raises(ConfigError, match=r"cannot take 64x64 images"):
        make(TimmEncoder, model=VIT, model_kwargs=VIT_KW, image_size=64).setup("cpu")


def test_timm_pretrained_reads_only_the_local_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match=r"'resnet18'.*not in the local cache.*never downloads"):
        make(TimmEncoder, model="resnet18", pretrained=True).check()

    full = timm.create_model("resnet18").eval()  # with its 1000-class head, as published
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(snapshot / "model.safetensors"))

    enc = make(TimmEncoder, model="resnet18", pretrained=True)
    enc.check()
    fp = enc.fingerprint()
    assert fp["weights"] == "timm pretrained resnet18.a1_in1k" and fp["weights_revision"] == "abc123"
    assert (
        fp["preprocess"]["interpolation"] == "bicubic" and fp["preprocess"]["resize_size"] == 235
    )  # crop 0.95
    enc.setup("cpu")
    x = images(size=64)
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
    torch.testing.assert_close(enc.encode(x, "image"), expected)


# -- torchvision encoder -----------------------------------------------------------------------------------
def test_torchvision_weights_read_only_the_local_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enc = make(TorchvisionEncoder, model="resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match=r"IMAGENET1K_V1.*resnet18-f37072fd\.pth.*never downloads"):
        enc.check()
    full = torchvision.models.resnet18().eval()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(full.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    enc = make(TorchvisionEncoder, model="resnet18", weights="DEFAULT")
    enc.check()
    fp = enc.fingerprint()
    assert fp["weights"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert (fp["preprocess"]["image_size"], fp["preprocess"]["resize_size"]) == (224, 256)
    enc.setup("cpu")
    x = images()
    full.fc = nn.Identity()
    torch.testing.assert_close(enc.encode(x, "image"), full(x))


def test_torchvision_bad_names():
    with pytest.raises(ConfigError, match=r"unknown torchvision classification model 'resnet5'.*'resnet50'"):
        make(TorchvisionEncoder, model="resnet5").check()
    with pytest.raises(ConfigError, match=r"'IMAGENET' is not a weight.*IMAGENET1K_V2"):
        make(TorchvisionEncoder, model="resnet50", weights="IMAGENET").check()
    with pytest.raises(ConfigError, match="weights"):
        make(TorchvisionEncoder, model="resnet50", weights="DEFAULT", checkpoint="x.pth")


def test_torchvision_classifier_removal_keeps_pre_logits():
    model = torchvision.models.mobilenet_v3_small().eval()
    assert remove_classifier(model) == "classifier.3"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1024)
    enc = make(TorchvisionEncoder, model="mobilenet_v3_small", image_size=32)
    enc.setup("cpu")
    assert enc.embed_dim == 1024 and "classifier.3.weight" not in enc.model.state_dict()
