"""Faster / Mask R-CNN on a clbench backbone: model building, a resumable training loop, inference.

Two heads:

- ``fpn``: the backbone's levels (c2..c5 for a ResNet, the simple feature pyramid for a ViT)
  through torchvision's ``FeaturePyramidNetwork`` (256 channels, plus a max-pooled level),
  anchors 8x each level's stride with ratios 0.5/1/2, ``MultiScaleRoIAlign`` 7x7 (14x14 for
  masks), torchvision's two-FC box head and four-conv mask head: torchvision's
  ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` on another backbone.
- ``c4``: an approximation of detectron2's R50-C4 (ResNet only): RPN on c4 (stride 16, anchors
  32..512 x ratios 0.5/1/2, pre-NMS top 12000/6000), RoIAlign 14x14 with ``aligned=True`` on c4,
  the checkpoint's own ``res5`` stage + global average pooling as the box head, and a linear
  class-specific box predictor. What differs from detectron2 is listed in docs/detection.md.

The loop is plain SGD with momentum and weight decay, linear warm-up, step decay at
``lr_steps``; images are drawn by a seeded permutation per epoch (stateless: iteration ``i``
always sees the same images), flipped horizontally by a seeded coin. Its state is saved every
``checkpoint_every`` iterations by :class:`~clbench.dense.checkpointing.TrainingCheckpoint`, and a
restarted run resumes from it with the same RNG states, so it ends with the same weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .backbones import FeatureBackbone, build_backbone
from .checkpointing import TrainingCheckpoint, optimizer_step


@dataclasses.dataclass
class Schedule:
    """What the training loop needs (a task's options, resolved against its preset)."""

    iterations: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iters: int
    warmup_factor: float
    lr_steps: list[int]
    amp: bool = False
    num_workers: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    clip_grad_norm: float | None = None


# -- model ---------------------------------------------------------------------------------------


class _WithFPN(nn.Module):
    def __init__(self, body: FeatureBackbone):
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, 256, extra_blocks=LastLevelMaxPool())
        self.out_channels = 256

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


class _C4Body(nn.Module):
    def __init__(self, body: FeatureBackbone):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.body(x)


def _aligned_roi_pool(output_size: int, stride: int) -> nn.Module:
    """RoIAlign of one feature map with ``aligned=True`` (detectron2's ROIAlignV2); a
    MultiScaleRoIAlign subclass because torchvision's FasterRCNN accepts no other pooler type."""
    from torchvision.ops import MultiScaleRoIAlign, roi_align

    class AlignedRoIPool(MultiScaleRoIAlign):
        def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: Any) -> Tensor:
            return roi_align(x["0"], boxes, output_size, 1.0 / stride, sampling_ratio=0, aligned=True)

    return AlignedRoIPool(["0"], output_size, 0)


class _Res5Head(nn.Module):
    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


def build_detector(
    backbone: FeatureBackbone,
    num_classes: int,
    *,
    model: str = "faster_rcnn",
    head: str = "fpn",
    train_sizes: Sequence[int] = (800,),
    max_size: int = 1333,
    roi_batch_size: int = 512,
) -> nn.Module:
    """A torchvision Faster / Mask R-CNN on ``backbone`` for ``num_classes`` object classes."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    common: dict[str, Any] = {
        "num_classes": num_classes + 1,  # torchvision counts the background
        "min_size": tuple(train_sizes),
        "max_size": max_size,
        "image_mean": list(backbone.mean),
        "image_std": list(backbone.std),
        "box_batch_size_per_image": roi_batch_size,
    }
    if head == "c4":
        if model == "mask_rcnn":
            raise ConfigError(
                "the C4 head supports faster_rcnn only; use the FPN head for masks", key="model"
            )
        res5 = backbone.spare_stage("c5")
        res5_channels = _channels_of(res5, backbone.out_channels[0])
        body = _C4Body(backbone)
        common["num_classes"] = None  # the predictor below fixes it
        anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        return FasterRCNN(
            body,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=12000,
            rpn_pre_nms_top_n_test=6000,
            rpn_post_nms_top_n_train=2000,
            rpn_post_nms_top_n_test=1000,
            box_roi_pool=_aligned_roi_pool(14, backbone.strides[0]),
            box_head=_Res5Head(res5),
            box_predictor=FastRCNNPredictor(res5_channels, num_classes + 1),
            **common,
        )
    body = _WithFPN(backbone)
    names = [str(i) for i in range(len(backbone.strides))]
    sizes = tuple((8 * s,) for s in backbone.strides) + ((16 * backbone.strides[-1],),)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    kw = dict(rpn_anchor_generator=anchors, box_roi_pool=MultiScaleRoIAlign(names, 7, 2), **common)
    if model == "mask_rcnn":
        return MaskRCNN(body, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2), **kw)
    return FasterRCNN(body, **kw)


def _channels_of(stage: nn.Module, in_channels: int) -> int:
    with torch.no_grad():
        was = stage.training
        stage.eval()
        out = stage(torch.zeros(1, in_channels, 8, 8, device=next(stage.parameters()).device))
        stage.train(was)
    return int(out.shape[1])


# -- data ----------------------------------------------------------------------------------------


def image_tensor(item: Any) -> Tensor:
    """An item's image as float [0, 1] CxHxW (the detector normalises and resizes it)."""
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(item.load_image()).float().div_(255.0)


def train_target(item: Any, *, masks: bool) -> dict[str, Tensor]:
    """torchvision's training target: non-crowd boxes with positive size, labels 1..C."""
    keep = ~np.asarray(item.iscrowd, dtype=bool)
    boxes = item.boxes_xyxy
    keep &= (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    target = {
        "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(np.asarray(item.labels)[keep] + 1, dtype=torch.int64),
    }
    if masks:
        from pycocotools import mask as mask_utils

        if item.segmentations is None and keep.any():
            raise DataError(f"{item.path}: mask_rcnn needs a segmentation for every object of this image")
        rles = []
        for j in np.flatnonzero(keep):
            seg = item.segmentations[j]
            if isinstance(seg, list):
                rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, item.height, item.width)))
            elif isinstance(seg.get("counts"), list):
                rles.append(mask_utils.frPyObjects(seg, item.height, item.width))
            else:
                rles.append(seg)
        m = np.stack([mask_utils.decode(r) for r in rles]) if rles else np.zeros((0, item.height, item.width))
        target["masks"] = torch.as_tensor(m, dtype=torch.uint8)
    return target


class _TrainImages(torch.utils.data.Dataset):
    """(image, target) for (index, flip) pairs; picklable for DataLoader workers."""

    def __init__(self, items: Sequence[Any], masks: bool):
        self.items, self.masks = items, masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Tensor, dict[str, Tensor]]:
        index, flip = key
        item = self.items[index]
        img, target = image_tensor(item), train_target(item, masks=self.masks)
        if flip:
            w = img.shape[-1]
            img = img.flip(-1)
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return img, target


class _BatchPlan(torch.utils.data.Sampler):
    """Batches of (index, flip) from iteration ``start`` on: epoch ``e`` is a permutation seeded
    by (seed, e), the flip of sample ``k`` a coin seeded by (seed, k); no state to save."""

    def __init__(self, n: int, batch_size: int, start: int, stop: int, seed: int):
        self.n, self.batch_size, self.start, self.stop, self.seed = n, batch_size, start, stop, seed

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        perms: dict[int, np.ndarray] = {}
        for it in range(self.start, self.stop):
            batch = []
            for k in range(it * self.batch_size, (it + 1) * self.batch_size):
                epoch, pos = divmod(k, self.n)
                if epoch not in perms:
                    perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
                flip = bool(np.random.default_rng([self.seed, 1_000_003, k]).integers(2))
                batch.append((int(perms[epoch][pos]), flip))
            yield batch


def _collate(batch: list[Any]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return [b[0] for b in batch], [b[1] for b in batch]


# -- training ------------------------------------------------------------------------------------


def lr_factor(it: int, s: Schedule) -> float:
    """Multiplier of the base LR at iteration ``it``: linear warm-up, then x0.1 at each step."""
    f = 0.1 ** sum(it >= step for step in s.lr_steps)
    if it < s.warmup_iters:
        alpha = it / s.warmup_iters
        f *= s.warmup_factor * (1 - alpha) + alpha
    return f


def train_detector(
    model: nn.Module,
    items: Sequence[Any],
    schedule: Schedule,
    *,
    device: str,
    seed: int,
    checkpoint: TrainingCheckpoint | None = None,
    masks: bool = False,
    progress: Any = None,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``items``; the loss of every iteration (resumed runs included).

    ``callback(iteration, loss)`` runs after each iteration and after the state of that
    iteration is saved (tests interrupt training from it). ``progress`` is a rich Progress or None.
    """
    s = schedule
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, s))
    use_amp = bool(s.amp) and str(device).startswith("cuda")
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    losses: list[float] = []
    start = 0
    if checkpoint is not None:
        start = checkpoint.restore(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        losses = list(checkpoint.extra.get("losses", []))[:start] if start else []
    task = (
        progress.add_task("detection", total=s.iterations, completed=start, loss=float("nan"))
        if progress
        else None
    )
    loader = torch.utils.data.DataLoader(
        _TrainImages(items, masks),
        batch_sampler=_BatchPlan(len(items), s.batch_size, start, s.iterations, seed),
        collate_fn=_collate,
        num_workers=s.num_workers,
        # its own generator: creating the iterator must not draw from the global RNG, which the
        # checkpoint restores (a resumed run creates its iterator at another point of the sequence)
        generator=torch.Generator().manual_seed(seed),
    )
    it = start
    for images, targets in loader:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast("cuda", enabled=use_amp) if use_amp else contextlib.nullcontext():
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
        value = optimizer_step(
            loss, optimizer, scaler, params=params, clip_grad_norm=s.clip_grad_norm, what="detection", iteration=it
        )
        scheduler.step()
        it += 1
        losses.append(value)
        if checkpoint is not None:
            checkpoint.maybe_save(
                it,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                extra={"losses": losses},
            )
        if task is not None:
            progress.update(task, completed=it, loss=float(np.mean(losses[-s.log_every :])))
        if callback is not None:
            callback(it, value)
    return losses


# -- inference -----------------------------------------------------------------------------------


@torch.no_grad()
def detect(
    model: nn.Module,
    items: Sequence[Any],
    category_ids: Sequence[int],
    *,
    device: str,
    test_size: int,
    batch_size: int = 2,
    masks: bool = False,
    amp: bool = False,
) -> tuple[list[dict[str, Any]], list[int]]:
    """(COCO result entries of every image, detections per image) at shorter side ``test_size``."""
    from .coco_eval import predictions_to_coco

    model.to(device).eval()
    model.transform.min_size = (int(test_size),)
    use_amp = bool(amp) and str(device).startswith("cuda")
    results: list[dict[str, Any]] = []
    counts: list[int] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        images = [image_tensor(it).to(device) for it in chunk]
        with torch.autocast("cuda", enabled=use_amp) if use_amp else contextlib.nullcontext():
            outputs = model(images)
        for it, out in zip(chunk, outputs):
            dets = predictions_to_coco(
                it.image_id,
                boxes=out["boxes"].float(),
                scores=out["scores"].float(),
                labels=out["labels"] - 1,
                category_ids=category_ids,
                masks=out["masks"].float() if masks else None,
            )
            results.extend(dets)
            counts.append(len(dets))
    return results, counts



__all__ = [
    "Schedule",
    "build_backbone",
    "build_detector",
    "detect",
    "lr_factor",
    "train_detector",
]
