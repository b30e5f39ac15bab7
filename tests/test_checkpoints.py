"""Checkpoint reading, format adapters and strict loading.

Every layout is rebuilt here with random weights, real key names and the heads, momentum encoders
and queues the method saves, then loaded through an encoder: the embeddings must equal those of
the module the checkpoint was made from.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn

from clbench.checkpoints import detect_format, extract_backbone, file_digest, load_backbone, read_checkpoint
from clbench.checkpoints import io as ckpt_io
from clbench.encoders.timm_encoder import TimmEncoder
from clbench.encoders.torchvision_encoder import TorchvisionEncoder
from clbench.errors import CheckpointError, ConfigError
from clbench.options import parse_options

VIT = "vit_small_patch16_224"
VIT_KW = {"img_size": 32, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: one thread is faster, and avoids OpenMP spinning on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- small real models with random weights ---------------------------------------------------------
def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random parameters and buffers (BN statistics included), so that a bad load shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return module.eval()


def tv_resnet18(seed: int) -> nn.Module:
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    return randomize(model, seed)


def timm_resnet18(seed: int) -> nn.Module:
    return randomize(timm.create_model("resnet18", num_classes=0), seed)


def vit_small(seed: int, heads: int = 6) -> nn.Module:
    return randomize(timm.create_model(VIT, num_classes=0, num_heads=heads, **VIT_KW), seed)


def mlp(seed: int, *dims: int, bn: bool = True, bias: bool = True, last_bn: bool = False) -> nn.Module:
    """Linear(-BN)-ReLU stacks as the methods' projectors and predictors are built."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()] if bn else [nn.ReLU()]
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return randomize(nn.Sequential(*layers), seed)


def sd(module: nn.Module | dict, prefix: str = "") -> dict[str, torch.Tensor]:
    state = module.state_dict() if isinstance(module, nn.Module) else module
    return {prefix + k: v.clone() for k, v in state.items()}


def shifted(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Another copy of ``module``'s keys with other values (a momentum encoder)."""
    return {k: v + 1 if v.dtype.is_floating_point else v for k, v in sd(module, prefix).items()}


def optimizer_state() -> dict[str, Any]:
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.03, "params": [0]}]}


# -- one builder per released layout -------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    obj: Any  # what the method's training script saves
    module: nn.Module  # the backbone whose features the checkpoint must reproduce
    encoder: type
    options: dict[str, Any]
    fmt: str  # the explicit format
    detected: str  # what format "auto" finds
    filename: str = "checkpoint.pth.tar"


def tv(**kw: Any) -> dict[str, Any]:
    return {"model": "resnet18", **kw}


def moco() -> Case:
    q = tv_resnet18(1)
    state = {
        **sd(q, "module.encoder_q."),
        **sd(mlp(3, 512, 512, 128, bn=False), "module.encoder_q.fc."),  # v2 MLP: fc.0 / fc.2
        **shifted(q, "module.encoder_k."),
        **sd(mlp(4, 512, 512, 128, bn=False), "module.encoder_k.fc."),
        "module.queue": torch.randn(128, 64),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    obj = {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state()}
    return Case(obj, q, TorchvisionEncoder, tv(), "moco", "moco")


def mocov3(heads: int = 12) -> Case:
    base = vit_small(5, heads)
    proj = {"bn": True, "bias": False, "last_bn": True}
    state = {
        **sd(base, "module.base_encoder."),
        **sd(mlp(7, 384, 64, 32, **proj), "module.base_encoder.head."),
        **shifted(base, "module.momentum_encoder."),
        **sd(mlp(8, 384, 64, 32, **proj), "module.momentum_encoder.head."),
        **sd(mlp(9, 32, 64, 32, **proj), "module.predictor."),
    }
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    obj = {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": state,
        "optimizer": optimizer_state(),
        "scaler": scaler,
    }
    opts = {"model": VIT, "model_kwargs": {**VIT_KW, "num_heads": 12}}
    return Case(obj, base, TimmEncoder, opts, "mocov3", "mocov3")


def swav_state() -> tuple[dict[str, torch.Tensor], nn.Module]:
    model = tv_resnet18(10)
    heads = {
        **sd(mlp(11, 512, 64, 16), "module.projection_head."),
        "module.prototypes.weight": torch.randn(30, 16),
    }
    return {**sd(model, "module."), **heads}, model


def swav() -> Case:  # hub release: a bare state dict
    state, model = swav_state()
    return Case(state, model, TorchvisionEncoder, tv(), "swav", "swav")


def swav_training() -> Case:  # what main_swav.py saves
    state, model = swav_state()
    obj = {"epoch": 800, "state_dict": state, "optimizer": optimizer_state(), "amp": {"loss_scaler0": {}}}
    return Case(obj, model, TorchvisionEncoder, tv(), "swav", "swav")


def lightning() -> Case:  # solo-learn BYOL
    model = tv_resnet18(12)
    state = {
        **sd(model, "backbone."),
        **sd(mlp(13, 512, 64, 32), "projector."),
        **sd(nn.Linear(512, 10), "classifier."),
        **shifted(model, "momentum_backbone."),
        **sd(mlp(15, 512, 64, 32), "momentum_projector."),
        **sd(mlp(16, 32, 64, 32), "predictor."),
    }
    obj = {
        "epoch": 99,
        "global_step": 1000,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": state,
        "loops": {},
        "callbacks": {},
        "optimizer_states": [optimizer_state()],
        "lr_schedulers": [{"last_epoch": 99, "base_lrs": [1.0]}],
        "hyper_parameters": {"cfg": {"method": "byol", "backbone": {"name": "resnet18"}}},
    }
    return Case(obj, model, TorchvisionEncoder, tv(), "lightning", "lightning", "byol-ep=99.ckpt")


def dino_head(seed: int, prefix: str) -> dict[str, torch.Tensor]:
    return {
        **sd(mlp(seed, 384, 64, 16, bn=False), prefix + "mlp."),
        prefix + "last_layer.weight_g": torch.ones(100, 1),
        prefix + "last_layer.weight_v": torch.randn(100, 16),
    }


def dino_full(teacher: nn.Module, student: nn.Module, teacher_prefix: str = "") -> dict[str, Any]:
    return {
        "student": {**sd(student, "module.backbone."), **dino_head(20, "module.head.")},
        "teacher": {**sd(teacher, teacher_prefix + "backbone."), **dino_head(21, teacher_prefix + "head.")},
        "optimizer": optimizer_state(),
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=100),
        "dino_loss": {"center": torch.zeros(1, 100)},
    }


def dino() -> Case:
    teacher = vit_small(17)
    obj = dino_full(teacher, vit_small(18))
    return Case(obj, teacher, TimmEncoder, {"model": VIT, "model_kwargs": VIT_KW}, "dino", "dino")


def dino_resnet() -> Case:  # DINO's ResNet teacher is DDP-wrapped too
    teacher = timm_resnet18(19)
    obj = dino_full(teacher, timm_resnet18(22), teacher_prefix="module.")
    for key in [k for k in obj["student"] if ".head.mlp.0." in k]:  # resnet head input is 512-d
        obj["student"][key] = torch.randn(64, 512) if key.endswith("weight") else obj["student"][key]
    return Case(obj, teacher, TimmEncoder, {"model": "resnet18"}, "dino", "dino")


def dino_backbone() -> Case:  # the released backbone-only .pth: a bare timm state dict
    model = vit_small(23)
    return Case(
        sd(model), model, TimmEncoder, {"model": VIT, "model_kwargs": VIT_KW}, "dino", "plain", "dino.pth"
    )


def relation_block(seed: int, prefix: str) -> dict[str, torch.Tensor]:
    return sd(randomize(timm.models.vision_transformer.Block(384, 6, qkv_bias=True), seed), prefix)


def mugs() -> Case:
    teacher = vit_small(24)
    heads = {
        name: mlp(25 + i, 384, 64, 16)
        for i, name in enumerate(("instance_head", "local_group_head", "group_head"))
    }
    obj = {
        "teacher": {
            **sd(teacher, "backbone."),
            **relation_block(30, "backbone.relation_blocks.0."),
            **{k: v for name, m in heads.items() for k, v in sd(m, name + ".").items()},
        },
        "student": {
            **sd(vit_small(31), "module.backbone."),
            **relation_block(32, "module.backbone.relation_blocks.0."),
        },
        "student_mem": torch.randn(16, 8),
        "teacher_mem": torch.randn(16, 8),
        "optimizer": optimizer_state(),
        "epoch": 800,
        "args": argparse.Namespace(arch="vit_small"),
    }
    return Case(obj, teacher, TimmEncoder, {"model": VIT, "model_kwargs": VIT_KW}, "mugs", "mugs")


def mugs_backbone() -> Case:  # {'state_dict': un-prefixed ViT keys}, relation block included
    model = vit_small(33)
    obj = {"state_dict": {**sd(model), **relation_block(34, "relation_blocks.0.")}}
    return Case(obj, model, TimmEncoder, {"model": VIT, "model_kwargs": VIT_KW}, "mugs", "mugs", "mugs.pth")


def pixpro() -> Case:
    encoder = tv_resnet18(35)
    state = {
        **sd(encoder, "module.encoder."),
        **shifted(encoder, "module.encoder_k."),
        **sd(mlp(37, 512, 64, 32), "module.projector."),
        **sd(mlp(38, 512, 64, 32), "module.projector_k."),
        **sd(nn.Conv2d(32, 32, 1), "module.value_transform.conv."),
    }
    obj = {
        "opt": argparse.Namespace(arch="resnet18"),
        "model": state,
        "optimizer": optimizer_state(),
        "epoch": 100,
    }
    return Case(obj, encoder, TorchvisionEncoder, tv(), "pixpro", "pixpro", "pixpro_100ep.pth")


def plain() -> Case:  # a timm state dict, classifier included
    model = randomize(timm.create_model("resnet18", num_classes=10), 39)
    twin = timm.create_model("resnet18", num_classes=0)
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    return Case({"model": sd(model)}, twin.eval(), TimmEncoder, {"model": "resnet18"}, "plain", "plain")


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        plain,
        moco,
        mocov3,
        swav,
        swav_training,
        lightning,
        dino,
        dino_resnet,
        dino_backbone,
        mugs,
        mugs_backbone,
        pixpro,
    )
}


def make_encoder(cls: type, tmp_path, **options: Any):
    return cls(parse_options(cls.Options, {"image_size": 32, **options}), name="test", root=tmp_path)


def save(case: Case, tmp_path) -> str:
    path = tmp_path / case.filename
    torch.save(case.obj, path)
    return path.name  # relative: resolved against the encoder's root


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- every layout reproduces the original module's features ------------------------------------------
@pytest.mark.parametrize("explicit", [False, True], ids=["auto", "explicit"])
@pytest.mark.parametrize("name", list(CASES))
def test_layout_gives_the_original_features(tmp_path, name, explicit):
    case = CASES[name]()
    fmt = case.fmt if explicit else "auto"
    enc = make_encoder(case.encoder, tmp_path, **case.options, checkpoint=save(case, tmp_path), format=fmt)
    enc.check()
    enc.setup("cpu")
    x = images()
    with torch.no_grad():
        expected = case.module(x)
    torch.testing.assert_close(enc.encode(x, "image"), expected, atol=1e-6, rtol=0)
    cov = enc.coverage
    assert cov["format"] == (case.fmt if explicit else case.detected)
    assert cov["counts"]["missing"] == cov["counts"]["unexpected"] == cov["counts"]["mismatched"] == 0
    assert cov["loaded"] == cov["model_keys"] == len(enc.model.state_dict())


def test_heads_queues_and_momentum_encoders_are_reported_as_dropped(tmp_path):
    case = moco()
    enc = make_encoder(case.encoder, tmp_path, **case.options, checkpoint=save(case, tmp_path))
    enc.setup("cpu")
    dropped = set(enc.coverage["dropped"])
    state = case.obj["state_dict"]
    assert dropped == {k for k in state if not k.startswith("module.encoder_q.") or ".fc." in k}
    assert {"module.queue", "module.queue_ptr", "module.encoder_q.fc.0.weight"} <= dropped
    assert enc.coverage["prefix"] == "module.encoder_q."
    assert enc.coverage["sha256"] == hashlib.sha256((tmp_path / case.filename).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["dino", "mugs"])
def test_checkpoint_key_picks_the_student(tmp_path, name):
    case = CASES[name]()
    student = vit_small(18 if name == "dino" else 31)
    enc = make_encoder(
        case.encoder, tmp_path, **case.options, checkpoint=save(case, tmp_path), checkpoint_key="student"
    )
    enc.setup("cpu")
    assert enc.coverage["container"] == "student" and enc.coverage["prefix"] == "module.backbone."
    x = images()
    torch.testing.assert_close(enc.encode(x, "image"), student(x), atol=1e-6, rtol=0)


def test_mocov3_vit_small_needs_12_heads(tmp_path):
    case = mocov3()
    path = save(case, tmp_path)
    x = images()
    expected = case.module(x)
    right = make_encoder(TimmEncoder, tmp_path, **case.options, checkpoint=path)
    right.setup("cpu")
    torch.testing.assert_close(right.encode(x, "image"), expected, atol=1e-6, rtol=0)
    # timm's ViT-S default (6 heads) has the same weight shapes: it loads cleanly but computes other features
    wrong = make_encoder(TimmEncoder, tmp_path, model=VIT, model_kwargs=VIT_KW, checkpoint=path)
    wrong.setup("cpu")
    assert wrong.coverage["counts"]["missing"] == 0
    assert not torch.allclose(wrong.encode(x, "image"), expected, atol=1e-3)


# -- incomplete or wrong checkpoints fail loudly ---------------------------------------------------------
def test_missing_backbone_weight_is_an_error(tmp_path):
    case = moco()
    del case.obj["state_dict"]["module.encoder_q.layer1.0.conv1.weight"]
    path = save(case, tmp_path)
    enc = make_encoder(TorchvisionEncoder, tmp_path, **case.options, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"missing.*layer1\.0\.conv1\.weight") as err:
        enc.setup("cpu")
    assert case.filename in str(err.value)
    assert enc.model is None
    # naming the key in allow_missing keeps its (seeded) initialisation instead
    enc = make_encoder(
        TorchvisionEncoder, tmp_path, **case.options, checkpoint=path, allow_missing=["layer1.0.conv1.*"]
    )
    enc.setup("cpu")
    assert enc.coverage["missing"] == ["layer1.0.conv1.weight"]


def test_shape_mismatch_is_an_error(tmp_path):
    case = moco()
    case.obj["state_dict"]["module.encoder_q.conv1.weight"] = torch.randn(64, 3, 3, 3)
    enc = make_encoder(TorchvisionEncoder, tmp_path, **case.options, checkpoint=save(case, tmp_path))
    with pytest.raises(
        CheckpointError, match=r"conv1\.weight: checkpoint \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\)"
    ):
        enc.setup("cpu")


def test_wrong_format_is_an_error_with_a_prefix_hint(tmp_path):
    case = moco()
    path = save(case, tmp_path)
    enc = make_encoder(TorchvisionEncoder, tmp_path, **case.options, checkpoint=path, format="plain")
    with pytest.raises(CheckpointError, match=r"prefix 'encoder_q\.'"):
        enc.setup("cpu")
    enc = make_encoder(TorchvisionEncoder, tmp_path, **case.options, checkpoint=path, format="pixpro")
    with pytest.raises(CheckpointError, match=r"'pixpro' layout.*'model'.*state_dict"):
        enc.setup("cpu")


def test_unknown_checkpoint_key_lists_the_keys():
    with pytest.raises(CheckpointError, match=r"no key 'ema'.*teacher"):
        extract_backbone(dino().obj, "dino", checkpoint_key="ema")


def test_unexpected_keys_are_an_error():
    model = nn.Sequential(nn.Linear(4, 4))
    state = {**sd(model), "0.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 checkpoint keys the model does not have \(0\.extra\)"):
        load_backbone(model, state)
    report = load_backbone(model, {**sd(model), "fc.weight": torch.zeros(2, 4)}, head=["fc.*"])
    assert report["dropped"] == ["fc.weight"] and report["counts"]["loaded"] == 2


def test_detect_format_unknown_and_ambiguous():
    with pytest.raises(CheckpointError, match=r"unrecognised.*epoch, config"):
        detect_format({"epoch": 3, "config": {"lr": 1}})
    both = {"state_dict": {"module.encoder_q.w": torch.zeros(1), "module.base_encoder.w": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"ambiguous.*moco and mocov3.*encoder_q\.w"):
        detect_format(both)
    assert detect_format({"conv1.weight": torch.zeros(1)}) == "plain"
    assert detect_format({"state_dict": {"module.conv1.weight": torch.zeros(1)}}) == "plain"


def test_plain_strips_the_ddp_wrapper():
    state, info = extract_backbone({"state_dict": {"module.a": torch.zeros(1), "module.b": torch.ones(1)}})
    assert list(state) == ["a", "b"] and info["prefix"] == "module." and info["dropped"] == []


# -- reading files ---------------------------------------------------------------------------------------
class Payload:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sd(tv_resnet18(0)), "payload": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*trust_checkpoint: true"):
        read_checkpoint(path)
    enc = make_encoder(TorchvisionEncoder, tmp_path, model="resnet18", checkpoint="evil.pth")
    with pytest.raises(CheckpointError, match="trust_checkpoint"):
        enc.setup("cpu")
    assert not marker.exists()
    read_checkpoint(path, trust=True)  # the opt-in does run it: the refusal is what protected us
    assert marker.exists()


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    model = timm_resnet18(40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    enc = make_encoder(TimmEncoder, tmp_path, model="resnet18", checkpoint="model.safetensors")
    enc.setup("cpu")
    x = images()
    torch.testing.assert_close(enc.encode(x, "image"), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "bad-safetensors"])
def test_unreadable_files_name_the_file(tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": sd(nn.Linear(4, 4))}, good)
    name = "broken.safetensors" if kind == "bad-safetensors" else "broken.pth"
    content = {
        "garbage": b"this is not a checkpoint at all",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "empty": b"",
        "bad-safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    }[kind]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        read_checkpoint(tmp_path / name)


def test_missing_checkpoint_file_is_named(tmp_path):
    enc = make_encoder(TimmEncoder, tmp_path, model="resnet18", checkpoint="weights/nope.pth")
    with pytest.raises(ConfigError, match=r"weights/nope\.pth: checkpoint file not found") as err:
        enc.check()
    assert err.value.key == "checkpoint"
    with pytest.raises(CheckpointError, match=r"nope\.pth"):
        read_checkpoint(tmp_path / "weights" / "nope.pth")


def test_file_digest_is_sha256_and_memoised(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc" * 1000)
    digest = file_digest(path)
    assert digest == hashlib.sha256(b"abc" * 1000).hexdigest()

    def no_hashing(*args):
        raise AssertionError("file hashed again")

    monkeypatch.setattr(ckpt_io.hashlib, "sha256", no_hashing)
    assert file_digest(str(path)) == digest
    monkeypatch.undo()
    path.write_bytes(b"changed")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_digest(path) == hashlib.sha256(b"changed").hexdigest()


def test_fingerprint_identifies_the_weights_without_building(tmp_path):
    case = swav()
    path = save(case, tmp_path)
    enc = make_encoder(TorchvisionEncoder, tmp_path, **case.options, checkpoint=path)
    fp = enc.fingerprint()
    assert enc.model is None
    assert fp["checkpoint_sha256"] == file_digest(tmp_path / path) and fp["format"] == "auto"
    assert "seed" not in fp  # fully covered by the checkpoint: the seed changes nothing
    other = make_encoder(
        TorchvisionEncoder, tmp_path, **case.options, checkpoint=path, checkpoint_key="state_dict"
    )
    assert other.fingerprint() != fp
