"""Format adapters: from a loaded checkpoint object to a backbone state dict.

Each self-supervised method saves its weights in its own layout (see CHECKPOINTS.md in the
project's shared notes): a container key (``state_dict``, ``teacher``, ``model``), a prefix in
front of the backbone keys (``module.encoder_q.``), and heads, momentum encoders and queues that
are not part of the backbone. A :class:`Layout` records those three facts; ``extract_backbone``
applies one.

Keys that are neither under the backbone prefix nor a known head are passed through unchanged,
so that :func:`clbench.checkpoints.coverage.load_backbone` reports them as unexpected instead of
silently ignoring a wrong layout. A layout whose names differ from the model's (``simclrv2``:
Separius's SimCLR v2 conversion) renames every key and refuses a file with a key it cannot name.

>>> sd, info = extract_backbone(torch.load("moco_v2_800ep_pretrain.pth.tar"))  # doctest: +SKIP
>>> info["format"], info["prefix"]                                              # doctest: +SKIP
('moco', 'module.encoder_q.')
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CheckpointError

WRAPPER = "module."  # DistributedDataParallel / DataParallel


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    #: keys of the checkpoint dict that may hold the state dict, in order; None: the dict itself
    containers: tuple[str | None, ...]
    #: prefix of backbone keys once the ``module.`` wrapper is removed ("" = every key)
    prefix: str = ""
    #: fnmatch patterns of head keys, matched with and without the prefix
    drop: tuple[str, ...] = ()
    #: backbone-only files of the method carry no prefix
    prefix_optional: bool = False
    #: renames a backbone key (prefix removed, heads dropped) to the model's name; None: no
    #: name of that layout. A layout with ``rename`` refuses a file with any key it cannot name.
    rename: Callable[[str], str | None] | None = None
    #: other top-level entries of the checkpoint that hold heads (reported as dropped)
    head_containers: tuple[str, ...] = ()


# -- SimCLR v2 as converted by Separius/SimCLRv2-Pytorch ------------------------------------------
# ``r50_1x_sk0.pth`` = {"resnet": ResNet.state_dict(), "head": ContrastiveHead.state_dict()}. The
# ResNet is ``net`` = Sequential(stem, 4 stages) plus ``fc`` (the supervised linear head). Every
# BatchNorm sits in a Sequential(BatchNorm2d, ReLU | Identity), hence the ``.0`` after it:
#   stem (sk0):  net.0.0 = 7x7/2 conv,  net.0.1.0 = BN  (net.0.2 is the max pool)
#   block:       net.{1-4}.blocks.{i}.net.{0,2,4} = 1x1, 3x3 (stride), 1x1 convs,
#                net.{1-4}.blocks.{i}.net.{1,3,5}.0 = their BNs,
#                net.{1-4}.blocks.{i}.projection.shortcut = 1x1 shortcut conv (first block),
#                net.{1-4}.blocks.{i}.projection.bn.0 = its BN
# The stride is on the 3x3 conv, the padding symmetric and the BN eps 1e-5, as in torchvision's
# ResNet-50, and the features are the global average of the last stage: torchvision/timm names.
# Width w multiplies every width, the stem's included (64w stem, 64w..512w bottlenecks).
# Selective-kernel checkpoints (sk1) have a 3-conv stem, ``net.2.main_conv`` / ``mixing_conv``
# and an average-pool shortcut (``projection.shortcut.2``): no timm/torchvision model has them.
_SIMCLRV2_STEM = {"net.0.0": "conv1", "net.0.1.0": "bn1"}
_SIMCLRV2_BLOCK = {
    "net.0": "conv1",
    "net.1.0": "bn1",
    "net.2": "conv2",
    "net.3.0": "bn2",
    "net.4": "conv3",
    "net.5.0": "bn3",
    "projection.shortcut": "downsample.0",
    "projection.bn.0": "downsample.1",
}
_SIMCLRV2_KEY = re.compile(r"net\.([1-4])\.blocks\.(\d+)\.(.+)\.([a-z_]+)")
_SIMCLRV2_SK = ("main_conv", "mixing_conv", "projection.shortcut.2", "net.0.2.", "net.0.4.")


def simclrv2_name(key: str) -> str | None:
    """The torchvision/timm ResNet name of a Separius SimCLR v2 key (sk0); None when it has none.

    >>> simclrv2_name("net.2.blocks.0.projection.bn.0.running_var")
    'layer2.0.downsample.1.running_var'
    """
    module, _, param = key.rpartition(".")
    if module in _SIMCLRV2_STEM:
        return f"{_SIMCLRV2_STEM[module]}.{param}"
    m = _SIMCLRV2_KEY.fullmatch(key)
    if m is None or m.group(3) not in _SIMCLRV2_BLOCK:
        return None
    stage, block, inner, param = m.groups()
    return f"layer{stage}.{int(block)}.{_SIMCLRV2_BLOCK[inner]}.{param}"


def _unnamed_error(layout: Layout, unnamed: list[str]) -> CheckpointError:
    if layout.name == "simclrv2" and any(s in k for k in unnamed for s in _SIMCLRV2_SK):
        return CheckpointError(
            "this is a SimCLR v2 selective-kernel (sk1) checkpoint (keys such as "
            f"{_sample([k for k in unnamed if any(s in k for s in _SIMCLRV2_SK)], 3)}): its SK "
            "convolutions, 3-conv stem and average-pool shortcuts have no timm or torchvision "
            "model, so clbench cannot load it; use an sk0 checkpoint"
        )
    return CheckpointError(
        f"checkpoint does not fit the {layout.name!r} layout: {len(unnamed)} keys have no name in "
        f"it ({_sample(unnamed)}). Check `format`"
    )


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("plain", ("state_dict", "model", None)),
        Layout("simclrv2", ("resnet",), "", ("fc.*",), rename=simclrv2_name, head_containers=("head",)),
        Layout("moco", ("state_dict",), "encoder_q.", ("fc.*", "encoder_k.*", "queue", "queue_ptr")),
        Layout(
            "mocov3",
            ("state_dict",),
            "base_encoder.",
            ("fc.*", "head.*", "momentum_encoder.*", "predictor.*"),
        ),
        Layout("swav", ("state_dict", None), "", ("projection_head.*", "prototypes.*")),
        Layout(
            "lightning",
            ("state_dict",),
            "backbone.",
            ("projector.*", "classifier.*", "momentum_*", "predictor.*", "queue*"),
        ),
        Layout("dino", ("teacher", "student", None), "backbone.", ("head.*",), prefix_optional=True),
        Layout(
            "mugs",
            ("teacher", "student", "state_dict", None),
            "backbone.",
            ("head.*", "instance_head.*", "local_group_head.*", "group_head.*", "relation_blocks.*"),
            prefix_optional=True,
        ),
        Layout(
            "pixpro",
            ("model",),
            "encoder.",
            (
                "projector.*",
                "encoder_k.*",
                "projector_k.*",
                "value_transform.*",
                "predictor.*",
                "projector_instance*",
            ),
        ),
        Layout("barlowtwins", ("model",), "backbone.", ("projector.*", "bn.*")),
        Layout(
            "mgca",
            ("state_dict",),
            "img_encoder_q.model.",
            (
                "img_encoder_q.global_embed.*",
                "img_encoder_q.local_embed.*",
                "text_encoder_q.*",
                "patch_local_atten_layer.*",
                "word_local_atten_layer.*",
                "prototype_layer.*",
            ),
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(LAYOUTS)

_MUGS_HEADS = ("instance_head.", "local_group_head.", "group_head.")


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of string keys to tensors."""
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def _unwrap(keys: list[str]) -> list[str]:
    if keys and all(k.startswith(WRAPPER) for k in keys):
        return [k[len(WRAPPER) :] for k in keys]
    return keys


def _sample(keys: Any, n: int = 6) -> str:
    keys = [str(k) for k in keys]
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _has(keys: list[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _mugs_blocks(keys: list[str] | None) -> bool:
    return bool(keys) and any(k.startswith(("relation_blocks.", "backbone.relation_blocks.")) for k in keys)


def _container_keys(obj: Mapping, name: str | None) -> list[str] | None:
    """Unwrapped keys of the state dict at ``name`` (None: ``obj`` itself), or None."""
    sd = obj if name is None else obj.get(name)
    return _unwrap(list(sd)) if is_state_dict(sd) else None


def _matches(obj: Mapping, checkpoint_key: str | None) -> list[str]:
    """Names of the specific (non-plain) layouts whose signature ``obj`` carries."""
    found = []
    teacher = None
    for name in (checkpoint_key,) if checkpoint_key else ("teacher", "student"):
        teacher = _container_keys(obj, name) if name in obj else None
        if teacher is not None:
            break
    state = _container_keys(obj, "state_dict")
    model = _container_keys(obj, "model")
    bare = _container_keys(obj, None)
    if state and _has(state, "encoder_q."):
        found.append("moco")
    if state and _has(state, "base_encoder."):
        found.append("mocov3")
    if any(ks and _has(ks, "prototypes", "projection_head.") for ks in (state, bare)):
        found.append("swav")
    mugs_teacher = teacher is not None and (_has(teacher, *_MUGS_HEADS) or _mugs_blocks(teacher))
    mugs = mugs_teacher or _mugs_blocks(state) or _mugs_blocks(bare)
    if state and _has(state, "backbone.") and not _has(state, "encoder_q.", "base_encoder.") and not mugs:
        found.append("lightning")
    if teacher is not None and _has(teacher, "backbone.") and not mugs_teacher:
        found.append("dino")
    if mugs:
        found.append("mugs")
    if model and _has(model, "encoder.") and _has(model, "encoder_k.", "projector.", "value_transform."):
        found.append("pixpro")
    if model and _has(model, "backbone.") and _has(model, "projector.") and not _has(model, "encoder."):
        found.append("barlowtwins")  # Barlow Twins checkpoint.pth: {epoch, model, optimizer}
    if state and _has(state, "img_encoder_q.model."):
        found.append("mgca")  # MGCA Lightning .ckpt
    resnet = _container_keys(obj, "resnet")
    if resnet and _has(resnet, "net.0.") and any(".blocks." in k for k in resnet):
        found.append("simclrv2")  # Separius/SimCLRv2-Pytorch: {resnet, head}
    return found


def detect_format(obj: Any, checkpoint_key: str | None = None) -> str:
    """The layout name that fits ``obj``'s keys; ``plain`` for a bare (or wrapped) state dict.

    Raises :class:`CheckpointError` listing sample keys when no layout, or more than one, fits.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(obj).__name__}")
    found = _matches(obj, checkpoint_key)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise CheckpointError(
            f"checkpoint layout is ambiguous: it looks like {' and '.join(found)} "
            f"(keys: {_sample(_any_keys(obj))}); set `format` on this encoder"
        )
    if any(_container_keys(obj, c) is not None for c in LAYOUTS["plain"].containers) or (
        checkpoint_key and _container_keys(obj, checkpoint_key) is not None
    ):
        return "plain"
    raise CheckpointError(
        f"unrecognised checkpoint layout (keys: {_sample(_any_keys(obj))}); set `format` "
        f"(one of {', '.join(FORMAT_NAMES)}) or `checkpoint_key` on this encoder"
    )


def _any_keys(obj: Mapping) -> list[str]:
    """Top-level keys, or those of the first state dict found in a known container."""
    for name in ("state_dict", "model", "teacher", None):
        keys = _container_keys(obj, name)
        if keys is not None:
            return keys
    return [str(k) for k in obj]


def _select(obj: Mapping, layout: Layout, checkpoint_key: str | None) -> tuple[str | None, Mapping]:
    if checkpoint_key is not None:
        if checkpoint_key not in obj:
            raise CheckpointError(
                f"checkpoint has no key {checkpoint_key!r} (checkpoint_key); top-level keys: {_sample(obj)}"
            )
        if not is_state_dict(obj[checkpoint_key]):
            raise CheckpointError(f"checkpoint[{checkpoint_key!r}] is not a state dict of tensors")
        return checkpoint_key, obj[checkpoint_key]
    for name in layout.containers:
        sd = obj if name is None else obj.get(name)
        if is_state_dict(sd):
            return name, sd
    wanted = [repr(c) for c in layout.containers if c] + (
        ["a bare state dict"] if None in layout.containers else []
    )
    raise CheckpointError(
        f"checkpoint does not fit the {layout.name!r} layout: expected the weights under "
        f"{' or '.join(wanted)}; top-level keys: {_sample(obj)}. Check `format` (or set `checkpoint_key`)"
    )


def extract_backbone(
    obj: Any, fmt: str = "auto", checkpoint_key: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Backbone state dict and an info dict (format, container, prefix, dropped keys).

    ``fmt="auto"`` picks the layout with :func:`detect_format`. ``checkpoint_key`` forces the
    container (``"student"`` instead of DINO's default ``"teacher"``, ``"model_ema"``, ...).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(obj).__name__}")
    detected = fmt == "auto"
    if detected:
        fmt = detect_format(obj, checkpoint_key)
    if fmt not in LAYOUTS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r} (known: auto, {', '.join(FORMAT_NAMES)})")
    layout = LAYOUTS[fmt]
    container, sd = _select(obj, layout, checkpoint_key)

    raw_keys = list(sd)
    keys = _unwrap(raw_keys)
    wrapper = WRAPPER if keys is not raw_keys else ""
    prefix = layout.prefix
    if prefix and not _has(keys, prefix):
        if not layout.prefix_optional:
            raise CheckpointError(
                f"checkpoint does not fit the {fmt!r} layout: no key starts with {wrapper + prefix!r} "
                f"(keys: {_sample(raw_keys)}). Check `format`"
            )
        prefix = ""

    out: dict[str, Any] = {}
    dropped: list[str] = []
    unnamed: list[str] = []
    for raw, key in zip(raw_keys, keys):
        inner = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if any(fnmatch.fnmatchcase(k, p) for p in layout.drop for k in (key, inner)):
            dropped.append(raw)
            continue
        if layout.rename is not None:
            renamed = layout.rename(inner)
            if renamed is None:
                unnamed.append(raw)
                continue
            inner = renamed
        if inner in out:
            raise CheckpointError(f"checkpoint has two tensors for {inner!r} once {prefix!r} is removed")
        else:
            out[inner] = sd[raw]
    if unnamed:
        raise _unnamed_error(layout, unnamed)
    for name in layout.head_containers:
        if name != container and isinstance(obj.get(name), Mapping):
            dropped.extend(f"{name}.{k}" for k in obj[name])
    info = {
        "format": fmt,
        "detected": detected,
        "container": container,
        "prefix": wrapper + prefix,
        "dropped": dropped,
    }
    return out, info
