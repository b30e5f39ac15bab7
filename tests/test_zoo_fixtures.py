"""Fixture checkpoints in each zoo entry's exact layout load, embed like the original, preprocess right.

Fixtures are built from the original architecture with random weights (BatchNorm statistics
randomised too, so a wrong mapping cannot hide) and saved under the method's container, prefix
and heads. Momentum encoders are represented by a few of their keys with real names and shapes
(they are dropped like the rest; writing a second full ResNet-50 per file would only cost time).

ResNet-50 and ViT-S/16 fixtures are real tensors: the zoo encoder's embedding of an image must
equal the original module's on the same input. Large models (ViT-B, ViT-L, DINO ViT-S/8, the
SwAV w2/w4/w5 ResNets, 90M-590M parameters) are checked on PyTorch's meta device instead: a
key/shape manifest derived here from the published architecture (not from timm) is put in the
method's layout and must load into the model the zoo builds with full coverage; saving and
loading those weights for real would take minutes on two cores and prove nothing more about
key names and shapes.

The eleven ResNet-50 layouts, the Barlow Twins full checkpoint and the end-to-end run are marked
slow (about a minute together); the ViT-S layouts, the head-count trap, the preprocessing checks
and the meta-device manifests stay in the quick set.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from torchvision import transforms as T

from clbench.checkpoints.coverage import load_backbone
from clbench.checkpoints.formats import detect_format, extract_backbone
from clbench.encoders.zoo import build
from clbench.errors import CheckpointError, ConfigError
from clbench.zoo.catalogue import get_entry, weights_path

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(300, 260, 3), dtype=np.uint8)  # not square: resize + crop matter


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module")
def r50():
    """The original module: torchvision ResNet-50 (random), and its backbone embedding function."""
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet50()).eval()
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    model.fc = torch.nn.Identity()
    return model, backbone, fc


@pytest.fixture(scope="module")
def vits():
    """timm ViT-S/16 with 6 heads (DINO, Mugs) and with 12 heads (MoCo v3), random."""
    out = {}
    for heads in (6, 12):
        torch.manual_seed(heads)
        m = timm.create_model("vit_small_patch16_224", num_classes=0, num_heads=heads).eval()
        with torch.no_grad():
            m.pos_embed.normal_(0, 0.02)
            m.cls_token.normal_(0, 0.02)
        out[heads] = m
    return out


def _transform(resize, crop, interpolation, mean_std):
    steps = [T.Resize(resize, interpolation=interpolation), T.CenterCrop(crop), T.ToTensor()]
    if mean_std is not None:
        steps.append(T.Normalize(*mean_std))
    return T.Compose(steps)


def _reference_input(transform):
    from PIL import Image

    return transform(Image.fromarray(IMAGE))[None]


def _zoo(method, path, tmp_path, **overrides):
    enc = build(method, root=tmp_path, checkpoint=str(path), **overrides)
    enc.setup("cpu")
    return enc


def _embed(enc):
    x = enc.preprocess(IMAGE, "image")
    return x, enc.encode(x[None], "image")


def _save(obj, path):
    torch.save(obj, path)
    return path


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _few(sd, prefix, n=5):
    """A few keys of a momentum / key encoder with their real names and shapes."""
    return {prefix + k: torch.zeros_like(v) for k, v in list(sd.items())[:n]}


def _check_same(enc, model, ref_transform, tmp_path):
    x, emb = _embed(enc)
    ref_x = _reference_input(ref_transform)
    torch.testing.assert_close(x[None], ref_x, rtol=0, atol=0)  # the declared preprocessing
    with torch.no_grad():
        ref = model(ref_x)
    torch.testing.assert_close(emb, ref, rtol=1e-4, atol=1e-4)  # the original module's embedding
    cov = enc.coverage
    assert cov["counts"]["missing"] == 0 and cov["counts"]["unexpected"] == 0
    assert cov["loaded"] == cov["model_keys"]  # full backbone coverage
    return cov


MOCO_EVAL = _transform(256, 224, T.InterpolationMode.BILINEAR, IMAGENET)


# -- ResNet-50 layouts ---------------------------------------------------------------------------
def _moco_v1(backbone, fc):
    sd = _prefixed(backbone, "module.encoder_q.")
    sd["module.encoder_q.fc.weight"] = torch.randn(128, 2048)
    sd["module.encoder_q.fc.bias"] = torch.randn(128)
    sd.update(_few(backbone, "module.encoder_k."))
    sd["module.queue"] = torch.randn(128, 65536 // 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def _moco_v2(backbone, fc):
    obj = _moco_v1(backbone, fc)
    sd = obj["state_dict"]
    del sd["module.encoder_q.fc.weight"], sd["module.encoder_q.fc.bias"]
    sd.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias": torch.randn(2048),
               "module.encoder_q.fc.2.weight": torch.randn(128, 2048), "module.encoder_q.fc.2.bias": torch.randn(128)})
    return obj


def _mlp_bn(prefix, dims, last_affine=False):
    """MoCo v3's bias-free Linear + BN projector / predictor with real names and shapes."""
    sd = {}
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        sd[f"{prefix}{3 * i}.weight"] = torch.randn(b, a)
        last = i == len(dims) - 2
        if not last or last_affine:
            sd[f"{prefix}{3 * i + 1}.weight"] = torch.ones(b)
            sd[f"{prefix}{3 * i + 1}.bias"] = torch.zeros(b)
        sd[f"{prefix}{3 * i + 1}.running_mean"] = torch.zeros(b)
        sd[f"{prefix}{3 * i + 1}.running_var"] = torch.ones(b)
        sd[f"{prefix}{3 * i + 1}.num_batches_tracked"] = torch.tensor(0)
    return sd


def _mocov3_r50(backbone, fc):
    sd = _prefixed(backbone, "module.base_encoder.")
    sd.update(_mlp_bn("module.base_encoder.fc.", [2048, 4096, 256]))
    sd.update(_few(backbone, "module.momentum_encoder."))
    sd.update(_mlp_bn("module.predictor.", [256, 4096, 256]))
    return {"epoch": 100, "arch": "resnet50", "state_dict": sd, "optimizer": {}, "scaler": {}}


def _swav(backbone, fc):
    sd = _prefixed(backbone, "module.")
    sd.update({"module.projection_head.0.weight": torch.randn(2048, 2048), "module.projection_head.0.bias": torch.randn(2048),
               "module.projection_head.1.weight": torch.ones(2048), "module.projection_head.1.bias": torch.zeros(2048),
               "module.projection_head.1.running_mean": torch.zeros(2048), "module.projection_head.1.running_var": torch.ones(2048),
               "module.projection_head.1.num_batches_tracked": torch.tensor(0),
               "module.projection_head.3.weight": torch.randn(128, 2048), "module.projection_head.3.bias": torch.randn(128),
               "module.prototypes.weight": torch.randn(3000, 128)})
    return sd  # a bare state dict, as released


def _dino_r50(backbone, fc):
    return dict(backbone)  # torchvision state dict without fc


def _barlow_backbone(backbone, fc):
    return dict(backbone)


def _barlow_full(backbone, fc):
    sd = _prefixed(backbone, "module.backbone.")
    for i, (a, b) in enumerate([(2048, 8192), (8192, 8192), (8192, 8192)]):
        sd[f"module.projector.{3 * i}.weight"] = torch.zeros(b, a)  # sizes real, values irrelevant
        if i < 2:
            sd[f"module.projector.{3 * i + 1}.weight"] = torch.ones(b)
            sd[f"module.projector.{3 * i + 1}.bias"] = torch.zeros(b)
            sd[f"module.projector.{3 * i + 1}.running_mean"] = torch.zeros(b)
            sd[f"module.projector.{3 * i + 1}.running_var"] = torch.ones(b)
    sd.update({"module.bn.running_mean": torch.zeros(8192), "module.bn.running_var": torch.ones(8192),
               "module.bn.num_batches_tracked": torch.tensor(0)})
    return {"epoch": 1000, "model": sd, "optimizer": {}}


def _pixpro(backbone, fc):
    sd = _prefixed(backbone, "module.encoder.")
    sd.update(_few(backbone, "module.encoder_k."))
    sd.update({"module.projector.linear1.weight": torch.randn(4096, 2048, 1, 1),
               "module.projector_k.linear1.weight": torch.randn(4096, 2048, 1, 1),
               "module.value_transform.linear1.weight": torch.randn(256, 256, 1, 1)})
    return {"opt": {"arch": "resnet50"}, "model": sd, "optimizer": {}, "scheduler": {}, "epoch": 100}


def _simclr_v1(backbone, fc):
    sd = dict(backbone)
    sd["fc.weight"] = fc["fc.weight"]  # the converter never copies fc.bias
    return {"state_dict": sd}


def _mgca_r50(backbone, fc):
    sd = _prefixed(backbone, "img_encoder_q.model.")
    sd.update({"img_encoder_q.global_embed.head.0.weight": torch.randn(2048, 2048),
               "img_encoder_q.local_embed.head.0.weight": torch.randn(2048, 1024, 1),
               "text_encoder_q.model.embeddings.word_embeddings.weight": torch.randn(28996, 768),
               "patch_local_atten_layer.in_proj_weight": torch.randn(384, 128),
               "word_local_atten_layer.in_proj_weight": torch.randn(384, 128),
               "prototype_layer.weight": torch.randn(500, 128)})
    return {"epoch": 50, "global_step": 1, "state_dict": sd, "hyper_parameters": {"img_encoder": "resnet_50"}}


def _solo(backbone, fc):
    sd = _prefixed(backbone, "backbone.")
    sd.update({"projector.0.weight": torch.randn(8192, 2048), "classifier.weight": torch.randn(1000, 2048),
               "classifier.bias": torch.randn(1000)})
    sd.update(_few(backbone, "momentum_backbone."))
    return {"epoch": 99, "state_dict": sd}


SWAV_EVAL = _transform(256, 224, T.InterpolationMode.BILINEAR, ((0.485, 0.456, 0.406), (0.228, 0.224, 0.225)))
DINO_EVAL = _transform(256, 224, T.InterpolationMode.BICUBIC, IMAGENET)
MGCA_EVAL = _transform(256, 224, T.InterpolationMode.BILINEAR, ((0.5,) * 3, (0.5,) * 3))
SIMCLR_EVAL = _transform(256, 256, T.InterpolationMode.BILINEAR, None)

RESNET_CASES = {
    "mocov1-200ep": (_moco_v1, MOCO_EVAL, {}),
    "mocov2-800ep": (_moco_v2, MOCO_EVAL, {}),
    "mochi-512-1024-512-e1000": (_moco_v2, MOCO_EVAL, {}),
    "mocov3-r50-300ep": (_mocov3_r50, MOCO_EVAL, {}),
    "swav-800ep": (_swav, SWAV_EVAL, {}),
    "dino-resnet50": (_dino_r50, DINO_EVAL, {}),
    "barlowtwins-r50": (_barlow_backbone, MOCO_EVAL, {}),
    "pixpro-400ep": (_pixpro, MOCO_EVAL, {}),
    "simclr-v1-r50x1-converted": (_simclr_v1, SIMCLR_EVAL, {}),
    "mgca-resnet50": (_mgca_r50, MGCA_EVAL, {}),
    "solo-learn-byol-r50-in1k-100ep": (_solo, MOCO_EVAL, {}),
}


@pytest.mark.slow  # ~3-10 s each on 2 cores
@pytest.mark.parametrize("method", list(RESNET_CASES))
def test_resnet_entries_load_and_embed_like_the_original(method, r50, tmp_path):
    make, transform, overrides = RESNET_CASES[method]
    model, backbone, fc = r50
    obj = make(backbone, fc)
    path = _save(obj, tmp_path / "ckpt.pth")
    try:
        enc = _zoo(method, path, tmp_path, **overrides)
        cov = _check_same(enc, model, transform, tmp_path)
        assert cov["format"] == get_entry(method).layout
        if isinstance(obj, dict) and any(not torch.is_tensor(v) for v in obj.values()):
            assert detect_format(obj) == get_entry(method).layout  # auto-detection agrees
    finally:
        path.unlink()


@pytest.mark.slow  # ~3-10 s each on 2 cores
def test_barlow_twins_full_checkpoint_loads_with_its_layout(r50, tmp_path):
    model, backbone, fc = r50
    obj = _barlow_full(backbone, fc)
    assert detect_format(obj) == "barlowtwins"
    path = _save(obj, tmp_path / "checkpoint.pth")
    try:
        enc = _zoo("barlowtwins-r50", path, tmp_path, format="barlowtwins")
        cov = _check_same(enc, model, MOCO_EVAL, tmp_path)
        assert any(k.startswith("module.projector.") for k in cov["dropped"])
        assert any(k.startswith("module.bn.") for k in cov["dropped"])
    finally:
        path.unlink()


def test_swav_normalises_red_with_0228_and_simclr_not_at_all():
    swav = build("swav-800ep", checkpoint="x.pth")
    d = swav.transform.describe()
    assert d["std"] == [0.228, 0.224, 0.225] and d["interpolation"] == "bilinear"
    x_swav = swav.preprocess(IMAGE, "image")
    x_img = _reference_input(MOCO_EVAL)[0]
    # same pixels; only the red channel's std differs (0.228 vs 0.229)
    torch.testing.assert_close(x_swav[0], x_img[0] * 0.229 / 0.228, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_swav[1:], x_img[1:])
    simclr = build("simclr-v1-r50x1-converted", checkpoint="x.pth")
    x = simclr.preprocess(IMAGE, "image")
    assert simclr.transform.describe()["mean"] is None and x.shape == (3, 256, 256)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert build("dino-vits16").transform.describe()["interpolation"] == "bicubic"
    assert build("mugs-vitb16-400ep").transform.describe()["interpolation"] == "bicubic"


# -- ViT-S/16 layouts ----------------------------------------------------------------------------
def _sd(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _dino_head(prefix):
    return {f"{prefix}mlp.0.weight": torch.randn(2048, 384), f"{prefix}mlp.0.bias": torch.randn(2048),
            f"{prefix}mlp.4.weight": torch.randn(256, 2048), f"{prefix}last_layer.weight_g": torch.ones(65536, 1),
            f"{prefix}last_layer.weight_v": torch.randn(65536, 256)}


def _block_keys(sd):
    return {k.replace("blocks.11.", "relation_blocks.0."): v.clone() for k, v in sd.items() if k.startswith("blocks.11.")}


def test_mocov3_vits_12_heads_loads_and_6_heads_is_rejected(vits, tmp_path):
    sd = _sd(vits[12])
    ckpt = _prefixed(sd, "module.base_encoder.")
    ckpt.update(_mlp_bn("module.base_encoder.head.", [384, 4096, 4096, 256]))
    ckpt.update(_few(sd, "module.momentum_encoder."))
    ckpt.update(_mlp_bn("module.predictor.", [256, 4096, 256]))
    path = _save({"epoch": 300, "arch": "vit_small", "state_dict": ckpt, "optimizer": {}, "scaler": {}}, tmp_path / "v.pth")
    try:
        enc = _zoo("mocov3-vit-s", path, tmp_path)
        assert enc.model.blocks[0].attn.num_heads == 12
        _check_same(enc, vits[12], MOCO_EVAL, tmp_path)
        # the trap: timm's default 6-head ViT-S takes the same file without any error ...
        from clbench.encoders.timm_encoder import TimmEncoder, TimmOptions

        plain = TimmEncoder(TimmOptions(model="vit_small_patch16_224", checkpoint=str(path), format="mocov3"))
        plain.setup("cpu")
        _, wrong = _embed(plain)
        _, right = _embed(enc)
        assert not torch.allclose(wrong, right, atol=1e-3)  # ... and gives other features
        # ... so the zoo refuses any other head count, before and after building
        with pytest.raises(ConfigError, match="12 attention heads"):
            build("mocov3-vit-s", checkpoint=str(path), model_kwargs={"num_heads": 6})
        with pytest.raises(CheckpointError, match="6 attention heads"):
            _zoo("mocov3-vit-s", path, tmp_path, model_kwargs={})
    finally:
        path.unlink()


@pytest.mark.parametrize("form", ["backbone", "full"])
def test_dino_vits16_backbone_file_and_full_checkpoint(form, vits, tmp_path):
    sd = _sd(vits[6])
    if form == "backbone":
        obj = sd
    else:
        teacher = {**_prefixed(sd, "backbone."), **_dino_head("head.")}
        student = {**_prefixed(sd, "module.backbone."), **_dino_head("module.head.")}
        obj = {"student": student, "teacher": teacher, "optimizer": {}, "epoch": 100, "dino_loss": {"center": torch.zeros(1, 65536)}}
    path = _save(obj, tmp_path / "dino.pth")
    try:
        enc = _zoo("dino-vits16", path, tmp_path)
        assert enc.model.blocks[0].attn.num_heads == 6
        cov = _check_same(enc, vits[6], DINO_EVAL, tmp_path)
        if form == "full":
            assert cov["container"] == "teacher"
    finally:
        path.unlink()


@pytest.mark.parametrize("form", ["backbone", "full"])
def test_mugs_vits16_drops_the_relation_block(form, vits, tmp_path):
    sd = _sd(vits[6])
    rel = _block_keys(sd)
    if form == "backbone":
        obj = {"state_dict": {**sd, **rel}}
    else:
        teacher = {**_prefixed(sd, "backbone."), **_prefixed(rel, "backbone."),
                   "instance_head.mlp.0.weight": torch.randn(2048, 384), "local_group_head.mlp.0.weight": torch.randn(2048, 384),
                   "group_head.mlp.0.weight": torch.randn(2048, 384)}
        obj = {"teacher": teacher, "student": dict(teacher), "epoch": 800, "args": {}}
    path = _save(obj, tmp_path / "mugs.pth")
    try:
        enc = _zoo("mugs-vits16-800ep", path, tmp_path)
        cov = _check_same(enc, vits[6], DINO_EVAL, tmp_path)
        assert any("relation_blocks.0." in k for k in cov["dropped"])
    finally:
        path.unlink()


# -- large models: key/shape manifests on the meta device ---------------------------------------
def _vit_manifest(dim, depth, patch, img=224):
    """ViT key names and shapes as DINO / MoCo v3 / Mugs / MGCA save them (timm names)."""
    n = (img // patch) ** 2
    m = {"cls_token": (1, 1, dim), "pos_embed": (1, n + 1, dim), "patch_embed.proj.weight": (dim, 3, patch, patch),
         "patch_embed.proj.bias": (dim,), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        m.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                  b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                  b + "norm2.weight": (dim,), b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                  b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    return m


def _swav_wide_manifest(widen):
    """SwAV src/resnet50.py with `widen`: every width (stem and stages) times widen."""
    w = 64 * widen
    m = {"conv1.weight": (w, 3, 7, 7)}
    for name in ("bn1",):
        m.update({f"{name}.weight": (w,), f"{name}.bias": (w,), f"{name}.running_mean": (w,), f"{name}.running_var": (w,),
                  f"{name}.num_batches_tracked": ()})
    inplanes = w
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = w * 2**stage
        for i in range(blocks):
            p = f"layer{stage + 1}.{i}."
            shapes = {"conv1": (planes, inplanes, 1, 1), "conv2": (planes, planes, 3, 3), "conv3": (4 * planes, planes, 1, 1)}
            if i == 0:
                shapes["downsample.0"] = (4 * planes, inplanes, 1, 1)
            for conv, shape in shapes.items():
                m[p + conv + ".weight"] = shape
                bn = p + ("downsample.1" if conv == "downsample.0" else conv.replace("conv", "bn"))
                c = shape[0]
                m.update({bn + ".weight": (c,), bn + ".bias": (c,), bn + ".running_mean": (c,), bn + ".running_var": (c,),
                          bn + ".num_batches_tracked": ()})
            inplanes = 4 * planes
    return m


def _meta(manifest, prefix=""):
    return {prefix + k: torch.empty(shape, device="meta") for k, shape in manifest.items()}


def _layout_object(method, manifest):
    layout = get_entry(method).layout
    if layout == "dino":
        return {"teacher": {**_meta(manifest, "backbone."), "head.last_layer.weight_v": torch.empty(65536, 256, device="meta")}}
    if layout == "mugs":
        d = int(manifest["norm.weight"][0])
        rel = {k.replace("blocks.0.", "relation_blocks.0."): v for k, v in _meta(manifest).items() if k.startswith("blocks.0.")}
        return {"state_dict": {**_meta(manifest), **rel, "group_head.mlp.0.weight": torch.empty(2048, d, device="meta")}}
    if layout == "mocov3":
        return {"state_dict": {**_meta(manifest, "module.base_encoder."),
                               "module.base_encoder.head.0.weight": torch.empty(4096, 768, device="meta"),
                               "module.predictor.0.weight": torch.empty(4096, 256, device="meta")}}
    if layout == "mgca":
        return {"state_dict": {**_meta(manifest, "img_encoder_q.model."),
                               "img_encoder_q.global_embed.head.0.weight": torch.empty(2048, 768, device="meta"),
                               "prototype_layer.weight": torch.empty(500, 128, device="meta")}}
    if layout == "swav":
        return {**_meta(manifest, "module."), "module.prototypes.weight": torch.empty(3000, 128, device="meta")}
    raise AssertionError(layout)


META_CASES = {
    "dino-vits8": (_vit_manifest(384, 12, 8), 6, 384),
    "dino-vitb16": (_vit_manifest(768, 12, 16), 12, 768),
    "dino-vitb8": (_vit_manifest(768, 12, 8), 12, 768),
    "mocov3-vit-b": (_vit_manifest(768, 12, 16), 12, 768),
    "mugs-vitb16-400ep": (_vit_manifest(768, 12, 16), 12, 768),
    "mugs-vitl16-250ep": (_vit_manifest(1024, 24, 16), 16, 1024),
    "mgca-vitb16": (_vit_manifest(768, 12, 16), 12, 768),
    "swav-rn50w2": (_swav_wide_manifest(2), None, 4096),
    "swav-rn50w4": (_swav_wide_manifest(4), None, 8192),
    "swav-rn50w5": (_swav_wide_manifest(5), None, 10240),
}


@pytest.mark.parametrize("method", list(META_CASES))
def test_large_entries_cover_their_manifest_on_the_meta_device(method):
    manifest, heads, dim = META_CASES[method]
    enc = build(method, checkpoint="unused.pth")
    with torch.device("meta"):
        model, head = enc._build()
    obj = _layout_object(method, manifest)
    sd, info = extract_backbone(obj, get_entry(method).layout)
    report = load_backbone(model, sd, dropped=info["dropped"], head=head)
    assert report["counts"]["missing"] == 0 and report["counts"]["unexpected"] == 0
    assert report["counts"]["mismatched"] == 0 and report["loaded"] == len(manifest) == report["model_keys"]
    assert report["dropped"]  # heads, prototypes or relation blocks were recognised and dropped
    assert model.num_features == dim
    if heads is not None:
        assert model.blocks[0].attn.num_heads == heads


# -- through the cache path (no `checkpoint` override) ---------------------------------------------
def test_entry_weights_in_the_cache_are_used_and_published_checksum_enforced(r50, tmp_path, monkeypatch):
    model, backbone, fc = r50
    # MoCo v3 publishes no checksum: a file placed in the cache is recorded on first use
    entry = get_entry("mocov3-r50-100ep")
    dest = weights_path(entry)
    dest.parent.mkdir(parents=True)
    _save(_mocov3_r50(backbone, fc), dest)
    enc = build("mocov3-r50-100ep", root=tmp_path)
    enc.check()
    fp = enc.fingerprint()
    assert fp["zoo"] == "mocov3-r50-100ep"
    enc.setup("cpu")
    _check_same(enc, model, MOCO_EVAL, tmp_path)
    info = enc.info()["zoo"]
    assert info["entry"] == "mocov3-r50-100ep" and info["weights"] == entry.weights.url
    dest.unlink()
    # MoCo v2 publishes an md5 prefix: a file with other bytes is refused before loading
    bad = weights_path(get_entry("mocov2-800ep"))
    bad.parent.mkdir(parents=True)
    _save(_moco_v2(backbone, fc), bad)
    with pytest.raises(CheckpointError, match="checksum mismatch.*md5-prefix:a04e12f8"):
        build("mocov2-800ep", root=tmp_path).setup("cpu")
    bad.unlink()


@pytest.mark.slow  # ~3-10 s each on 2 cores
def test_runner_records_zoo_provenance_and_published_number(r50, tmp_path):
    """End to end: a zoo encoder's k-NN result (k=20, T=0.07) on a dataset named imagenet carries both."""
    import json

    from PIL import Image

    from clbench.runner import Runner
    from clbench.suite import load_suite

    _, backbone, fc = r50
    dest = weights_path(get_entry("dino-resnet50"))
    dest.parent.mkdir(parents=True)
    _save(_dino_r50(backbone, fc), dest)
    rng = np.random.default_rng(1)
    for split, n in (("train", 11), ("val", 2)):  # k=20 needs at least 20 training images
        for c in ("a", "b"):
            folder = tmp_path / "imagenet" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "s.yaml").write_text(
        "suite: s\nencoders:\n  m: {type: zoo, method: dino-resnet50, batch_size: 13, num_workers: 0}\n"
        f"datasets:\n  imagenet: {{type: imagefolder, path: {tmp_path / 'imagenet'}}}\n"
        "tasks:\n  - {name: knn20, type: knn, dataset: imagenet, k: [5, 20], temperature: 0.07}\n"
        "  - {name: knn-t1, type: knn, dataset: imagenet, k: [20], temperature: 0.1}\n"
    )
    summary = Runner(load_suite(tmp_path / "s.yaml"), device="cpu", progress=False).run()
    assert summary.ok, summary.cells
    result = json.loads((tmp_path / "results" / "s" / "m" / "knn20.json").read_text())
    assert result["zoo"]["entry"] == "dino-resnet50" and result["zoo"]["weights"].endswith("dino_resnet50_pretrain.pth")
    assert result["details"]["encoder_info"]["zoo"]["entry"] == "dino-resnet50"
    pub = result["published"]
    assert (pub["value"], pub["protocol"], pub["k"], pub["temperature"]) == (67.5, "knn", 20, 0.07)
    assert pub["diff"] == pytest.approx(result["metrics"]["top1@k20"] * 100 - 67.5)
    assert pub["within_tolerance"] is (abs(pub["diff"]) <= 0.5)
    other = json.loads((tmp_path / "results" / "s" / "m" / "knn-t1.json").read_text())
    assert "published" not in other and other["zoo"]["entry"] == "dino-resnet50"  # T differs: no match
    dest.unlink()


# -- text: SimCSE pooling ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sat", "on", "the", "mat", "runs"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(str(folder))
    tok = transformers.BertTokenizer.from_pretrained(str(folder))
    return folder, model, tok


@pytest.mark.parametrize("method,output", [
    ("simcse-unsup-bert-base", "cls_before_pooler"),
    ("simcse-sup-bert-base", "pooler_output"),
    ("simcse-unsup-roberta-large", "cls_before_pooler"),
    ("simcse-sup-roberta-large", "pooler_output"),
])
def test_simcse_pooling_matches_the_model_output(method, output, tiny_bert, tmp_path):
    folder, model, tok = tiny_bert
    enc = build(method, root=tmp_path, model=str(folder))
    enc.setup("cpu")
    texts = ["a cat sat on the mat", "the dog runs"]
    emb = np.asarray(enc.encode(texts, "text"))
    with torch.no_grad():
        out = model(**tok(texts, padding=True, return_tensors="pt"))
    ref = out.last_hidden_state[:, 0] if output == "cls_before_pooler" else out.pooler_output
    np.testing.assert_allclose(emb, ref.numpy(), rtol=1e-4, atol=1e-5)
