"""Semantic segmentation on a :class:`~clbench.dense.backbones.FeatureBackbone`: heads, data, training.

- :class:`SegmentationModel`: backbone -> chosen levels resized (bilinear) to the finest of them
  and concatenated -> head -> logits upsampled (bilinear, ``align_corners=False``) to the input.
  The ``linear`` head is DINOv2's BNHead (BatchNorm + 1x1 convolution; the backbone frozen, in
  eval mode, run without gradients); the ``fcn`` head is MoCo's FCN head (two 3x3 conv-BN-ReLU,
  dropout 0.1, 1x1 classifier). Inputs are padded to the coarsest stride and the logits cropped
  back, so the feature grid covers the image exactly whatever its size.
- :class:`TrainCrops` / :class:`BatchPlan`: random-scale, crop and flip training samples, each a
  function of (seed, iteration, slot) only, in a seeded per-epoch order.
- :func:`train_model` (resumable through :class:`~clbench.dense.checkpointing.TrainingCheckpoint`)
  and :func:`evaluate_model` (one confusion matrix over a split, at each mask's own size).

Imported only by the ``segmentation`` task's ``run`` (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, DataError
from .checkpointing import optimizer_step

# -- the model -------------------------------------------------------------------------------------


class SegmentationModel(nn.Module):
    """Backbone + ``linear`` (frozen backbone) or ``fcn`` (fine-tuned) head; logits at input size."""

    def __init__(
        self, backbone: Any, num_classes: int, *, linear: bool, head_channels: int = 256, head_dilation: int = 1
    ):
        super().__init__()
        self.backbone = backbone
        self.linear = linear
        self.in_channels = int(sum(backbone.out_channels))
        self.strides = [int(s) for s in backbone.strides]
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        c = self.in_channels
        if linear:
            self.head = nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, num_classes, 1))
            for p in backbone.parameters():
                p.requires_grad_(False)
        else:
            h, d = head_channels, head_dilation
            self.head = nn.Sequential(
                nn.Conv2d(c, h, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                nn.Conv2d(h, h, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True),
                nn.Dropout2d(0.1), nn.Conv2d(h, num_classes, 1),
            )  # fmt: skip

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.linear:
            self.backbone.eval()  # frozen: its BatchNorm statistics stay those of the checkpoint
        return self

    def trained_module(self) -> nn.Module:
        """What training changes: the head (linear) or the whole model (fcn)."""
        return self.head if self.linear else self

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] -> logits [B, C, H, W]."""
        h, w = x.shape[-2:]
        m = max(self.strides)
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear):
            feats = list(self.backbone(x).values())
        size = feats[0].shape[-2:]
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in feats]  # fmt: skip
        logits = self.head(torch.cat(feats, 1) if len(feats) > 1 else feats[0])
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


def build_model(encoder: Any, r: dict[str, Any], num_classes: int, *, device: str = "cpu") -> SegmentationModel:
    """The backbone of ``encoder`` + the head, per the task's resolved options ``r``."""
    from .backbones import build_backbone

    linear = r["head"] == "linear"
    levels = r["levels"] or default_levels(encoder, device)
    backbone = build_backbone(
        encoder, device=device, frozen_stages=5 if linear else r["frozen_stages"], norm=r["norm"], levels=levels
    )
    if r["output_stride"] == 16:
        dilate_c5(backbone)
    return SegmentationModel(
        backbone, num_classes, linear=linear, head_channels=r["head_channels"], head_dilation=r["head_dilation"]
    )


def default_levels(encoder: Any, device: str = "cpu") -> str:
    """``c5`` for a ResNet; ``c4`` for a ViT (its patch tokens at the patch stride, no new layer)."""
    return "c5" if hasattr(encoder.torch_module(device), "layer4") else "c4"


def dilate_c5(backbone: Any) -> None:
    """A ResNet backbone's c5 at stride 1 with dilation 2 (output stride 16, DeepLab / MoCo FCN)."""
    if getattr(backbone, "kind", "") != "ResNet" or "c5" not in getattr(backbone, "levels", []):
        raise ConfigError("output_stride: 16 needs a ResNet backbone whose levels include c5", key="output_stride")
    stage = backbone.stages["c5"]
    for name, m in list(stage.named_modules()):
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation, m.padding = (2, 2), (2, 2)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) and m.stride in (2, (2, 2)):  # ResNet-D shortcut
            parent, _, leaf = name.rpartition(".")
            setattr(stage.get_submodule(parent) if parent else stage, leaf, nn.Identity())
    i = backbone.levels.index("c5")
    backbone.strides = [*backbone.strides[:i], backbone.strides[i] // 2, *backbone.strides[i + 1 :]]


# -- data ------------------------------------------------------------------------------------------


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 [H, W, 3] -> float [3, H, W], scaled to [0, 1] then normalised."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)  # a copy
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def resize(x: Tensor, size: tuple[int, int], *, mask: bool = False) -> Tensor:
    """An image [3, H, W] (bilinear, antialiased) or a mask [H, W] (nearest) at ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mask:
        return F.interpolate(x[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def short_side(h: int, w: int, short: float) -> tuple[int, int]:
    scale = short / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class TrainCrops:
    """``crops[(index, iteration, slot)]`` -> (normalised crop [3, c, c], mask [c, c]).

    The shorter side becomes ``image_size`` (or stays, when None) times a factor drawn from
    ``scale_range``; a ``crop_size`` square is cut at random (padded with zeros, i.e. the mean
    colour, and the ignore index when the image is smaller) and flipped with probability 0.5.
    The draws come from a generator seeded by (seed, iteration, slot): a sample never depends on
    the number of workers or on where a run was resumed. Picklable for DataLoader workers."""

    def __init__(self, items: Sequence, r: dict[str, Any], mean, std, ignore_index: int, seed: int):
        self.items, self.mean, self.std, self.ignore, self.seed = items, list(mean), list(std), ignore_index, seed
        self.image_size, self.crop = r["image_size"], r["crop_size"]
        self.scales, self.flip = tuple(r["scale_range"]), bool(r["flip"])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
        index, it, slot = key
        rng = np.random.default_rng([self.seed, it, slot])
        image, mask = self.items[index]
        x, y = normalise(image, self.mean, self.std), torch.from_numpy(np.asarray(mask, dtype=np.int64))
        h, w = y.shape
        size = short_side(h, w, (self.image_size or min(h, w)) * rng.uniform(*self.scales))
        x, y = resize(x, size), resize(y, size, mask=True)
        c = self.crop
        ph, pw = max(0, c - size[0]), max(0, c - size[1])
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
            y = F.pad(y, (0, pw, 0, ph), value=self.ignore)
        top = int(rng.integers(0, y.shape[0] - c + 1))
        left = int(rng.integers(0, y.shape[1] - c + 1))
        x, y = x[:, top : top + c, left : left + c], y[top : top + c, left : left + c]
        if self.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class BatchPlan:
    """Batches of ``(index, iteration, slot)`` keys for iterations ``start .. iterations - 1``;
    the images are taken in a seeded permutation per epoch (``iterations x batch_size`` draws)."""

    def __init__(self, n: int, batch_size: int, start: int, iterations: int, seed: int):
        self.n, self.b, self.start, self.iterations, self.seed = n, batch_size, start, iterations, seed

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)

    def __iter__(self):
        epoch, perm = -1, np.arange(self.n)
        for it in range(self.start, self.iterations):
            batch = []
            for slot in range(self.b):
                k = it * self.b + slot
                if k // self.n != epoch:
                    epoch = k // self.n
                    perm = np.random.default_rng([self.seed, 7, epoch]).permutation(self.n)
                batch.append((int(perm[k % self.n]), it, slot))
            yield batch


class EvalImages:
    """``images[i]`` -> (normalised image at shorter side ``image_size``, mask at its own size)."""

    def __init__(self, items: Sequence, image_size: int | None, mean, std):
        self.items, self.image_size, self.mean, self.std = items, image_size, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, mask = self.items[i]
        x = normalise(image, self.mean, self.std)
        if self.image_size is not None:
            x = resize(x, short_side(x.shape[1], x.shape[2], self.image_size))
        return x, torch.from_numpy(np.asarray(mask, dtype=np.int64))


# -- training and evaluation -----------------------------------------------------------------------


def lr_factor(it: int, r: dict[str, Any]) -> float:
    """Linear warm-up from 0 over ``warmup_iters``, times x0.1 at each of ``lr_steps`` or, with no
    steps, poly decay ``(1 - it / iterations) ** 0.9``."""
    warm = min(1.0, (it + 1) / r["warmup_iters"]) if r["warmup_iters"] else 1.0
    if r["lr_steps"]:
        return warm * 0.1 ** sum(it >= s for s in r["lr_steps"])
    return warm * (1.0 - min(it, r["iterations"]) / r["iterations"]) ** 0.9


def train_model(
    model: SegmentationModel,
    items: Sequence,
    r: dict[str, Any],
    *,
    ignore_index: int,
    device: str,
    seed: int,
    checkpoint: Any = None,
    amp: bool = True,
    num_workers: int = 0,
    progress: Any = None,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[list[float], int]:
    """Train ``model`` per the resolved options ``r``; (loss of every iteration, iteration it
    resumed from). ``callback(iteration, loss)`` runs after each iteration, once its state is
    saved (tests interrupt training from it)."""
    trained = model.trained_module()
    params = [p for p in trained.parameters() if p.requires_grad]
    if r["optimizer"] == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=r["lr"], weight_decay=r["weight_decay"])
    else:
        optimizer = torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, r))
    use_amp = bool(amp) and str(device).startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    start, losses = 0, []
    if checkpoint is not None:
        start = checkpoint.restore(model=trained, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        losses = list(checkpoint.extra.get("losses", []))[:start] if start else []
    model.train()
    bar = progress.add_task("segmentation", total=r["iterations"], completed=start, loss=float("nan")) if progress else None
    loader = torch.utils.data.DataLoader(
        TrainCrops(items, r, model.mean.flatten().tolist(), model.std.flatten().tolist(), ignore_index, seed),
        batch_sampler=BatchPlan(len(items), r["batch_size"], start, r["iterations"], seed),
        num_workers=num_workers,
        pin_memory=str(device).startswith("cuda"),
    )
    it = start
    for x, y in loader:
        torch.manual_seed(seed * 1_000_003 + it)  # dropout: a function of the iteration (resumable)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, ignore_index=ignore_index)
        value = optimizer_step(loss, optimizer, scaler, what="segmentation", iteration=it)
        scheduler.step()
        it += 1
        losses.append(value)
        if checkpoint is not None:
            checkpoint.maybe_save(
                it, model=trained, optimizer=optimizer, scheduler=scheduler, scaler=scaler, extra={"losses": losses}
            )
        if bar is not None:
            progress.update(bar, completed=it, loss=float(np.mean(losses[-20:])))
        if callback is not None:
            callback(it, value)
    if checkpoint is not None and it > start and it % checkpoint.every:
        # the finished state too: a later failure in the cell (another trial) does not retrain this one
        checkpoint.save(it, model=trained, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        extra={"losses": losses})  # fmt: skip
    if bar is not None:
        progress.remove_task(bar)
    return losses, start


@torch.inference_mode()
def evaluate_model(
    model: SegmentationModel,
    items: Sequence,
    num_classes: int,
    *,
    image_size: int | None,
    ignore_index: int,
    device: str,
    amp: bool = True,
    num_workers: int = 0,
    progress: Any = None,
    per_image: bool = False,
) -> Any:
    """The ``[C, C]`` confusion matrix of ``model`` over ``items``, each scored at its mask's size.

    With ``per_image``, ``(confusion, counts)``: ``counts`` int64 ``[n, 3, C]`` holds each image's
    per-class intersection (TP), union (TP + FP + FN) and target pixels, whose sums over the
    images give the confusion matrix's (the bootstrap of mIoU resamples them).
    """
    from ..metrics.segmentation import confusion_matrix

    model.eval()
    use_amp = bool(amp) and str(device).startswith("cuda")
    loader = torch.utils.data.DataLoader(
        EvalImages(items, image_size, model.mean.flatten().tolist(), model.std.flatten().tolist()),
        batch_size=None,
        num_workers=num_workers,
    )
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    rows: list[Tensor] = []
    bar = progress.add_task("evaluation", total=len(items), loss=float("nan")) if progress else None
    for i, (x, y) in enumerate(loader):
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            logits = model(x[None].to(device))
        y = y.to(device)
        logits = F.interpolate(logits.float(), size=tuple(y.shape), mode="bilinear", align_corners=False)
        try:
            one = confusion_matrix(y, logits.argmax(1)[0], num_classes, ignore_index=ignore_index)
        except ValueError as err:
            raise DataError(f"segmentation: evaluation image {i}: {err}") from None
        conf += one
        if per_image:
            tp, target = torch.diagonal(one), one.sum(1)
            rows.append(torch.stack([tp, target + one.sum(0) - tp, target]))
        if bar is not None:
            progress.update(bar, completed=i + 1)
    if bar is not None:
        progress.remove_task(bar)
    if per_image:
        counts = torch.stack(rows) if rows else torch.zeros(0, 3, num_classes, dtype=torch.int64)
        return conf.cpu().numpy(), counts.cpu().numpy()
    return conf.cpu().numpy()


__all__ = [
    "BatchPlan",
    "EvalImages",
    "SegmentationModel",
    "TrainCrops",
    "build_model",
    "default_levels",
    "dilate_c5",
    "evaluate_model",
    "lr_factor",
    "train_model",
]
