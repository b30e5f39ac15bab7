"""``segmentation``: semantic segmentation on the encoder's backbone, scored by mIoU.

Two protocols (``head``):

- ``linear`` (DINOv2's linear protocol): the backbone is frozen (eval mode, no gradients); a
  BatchNorm + 1x1 convolution is trained on its last feature map (or on several ``levels``,
  bilinearly resized to the finest of them and concatenated); the logits are upsampled
  bilinearly to the input size.
- ``fcn`` (full fine-tuning, MoCo's FCN protocol): two 3x3 convolutions (``head_channels``, BN,
  ReLU, ``head_dilation``) + dropout 0.1 + a 1x1 classifier on the last feature map, the whole
  network trained (``frozen_stages``, ``norm`` as in :mod:`clbench.dense.backbones`).
  ``output_stride: 16`` dilates a ResNet's c5 stage (stride 1, dilation 2), as MoCo and DeepLab do.

Training: ``iterations`` x ``batch_size`` random crops (shorter side scaled to ``image_size`` x
a factor drawn from ``scale_range``, a ``crop_size`` square crop padded with the ignore index,
horizontal flip), cross-entropy ignoring the dataset's ignore index, SGD with momentum or AdamW,
linear warm-up then poly (power 0.9) decay, or x0.1 steps at ``lr_steps``. Evaluation: each
image of ``eval_split`` resized to shorter side ``image_size`` (null: as it is), padded to the
backbone's stride, logits cropped and resized bilinearly to the mask's own size, argmax, one
confusion matrix over the split (:mod:`clbench.metrics.segmentation`).

Metrics: ``miou`` (headline), ``pixel_accuracy``, ``mean_accuracy`` as fractions; per-class IoU
in ``details["per_class_iou"]``. ``trials: N`` repeats the training with seeds ``seed ..
seed+N-1``: metrics are means, with ``<metric>_mean/_std/_ci_low/_ci_high`` over trials.

Every sample's crop and the data order are functions of (seed, iteration, slot), and the
training state is saved every ``checkpoint_every`` iterations (:mod:`clbench.dense.checkpointing`),
so an interrupted run resumes and ends with the weights an uninterrupted one would have. The
trained weights are discarded unless ``keep_head`` (then kept in the cache; path in details).
Presets (GPU-scale, docs/segmentation.md) fill the options left unset.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option, options_dict, stable_hash
from ._training import jsonable, loss_curve, progress_bar, task_console
from .base import Task, TaskContext, TaskOutput

_MOCO_FCN = {
    "head": "fcn", "optimizer": "sgd", "batch_size": 16, "weight_decay": 1e-4, "warmup_iters": 0,
    "image_size": None, "scale_range": [0.5, 2.0], "output_stride": 16, "head_channels": 256,
    "head_dilation": 6, "norm": "sync_bn", "frozen_stages": 0,
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    # DINOv2's linear protocol on ADE20K: 512 crops, 40k iterations x 16, AdamW 1e-3
    "ade20k-linear": {
        "head": "linear", "iterations": 40000, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3,
        "weight_decay": 1e-4, "warmup_iters": 1500, "lr_steps": [], "image_size": 512, "crop_size": 512,
        "scale_range": [0.5, 2.0],
    },
    # MoCo's FCN (output stride 16): Cityscapes 769 crops, 90k x 16, SGD 0.01, x0.1 at 70% and 90%
    "cityscapes-fcn": {**_MOCO_FCN, "iterations": 90000, "lr": 0.01, "lr_steps": [63000, 81000], "crop_size": 769},
    # ... and VOC: 513 crops, 30k x 16, SGD 0.003
    "voc-fcn": {**_MOCO_FCN, "iterations": 30000, "lr": 0.003, "lr_steps": [21000, 27000], "crop_size": 513},
}  # fmt: skip
#: without a preset (None: per head, below)
DEFAULTS: dict[str, Any] = {
    "head": "linear", "iterations": 1000, "batch_size": 8, "optimizer": None, "lr": None, "momentum": 0.9,
    "weight_decay": 1e-4, "warmup_iters": 0, "lr_steps": [], "image_size": 512, "crop_size": 512,
    "scale_range": [0.5, 2.0], "flip": True, "levels": None, "frozen_stages": None, "norm": None,
    "output_stride": 32, "head_channels": 256, "head_dilation": 1,
}  # fmt: skip
_PER_HEAD = {
    "linear": {"optimizer": "adamw", "lr": 1e-3, "frozen_stages": 5, "norm": "frozen_bn"},
    "fcn": {"optimizer": "sgd", "lr": 0.01, "frozen_stages": 0, "norm": "sync_bn"},
}


@dataclasses.dataclass
class SegmentationOptions:
    preset: Literal["ade20k-linear", "cityscapes-fcn", "voc-fcn"] | None = option(
        None, "published protocol filling the options left unset (GPU-scale)"
    )
    head: Literal["linear", "fcn"] | None = option(None, "linear: frozen backbone + BN + 1x1; fcn: fine-tuning")
    iterations: int | None = option(None, "training iterations (default 1000)")
    batch_size: int | None = option(None, "crops per iteration (default 8)")
    optimizer: Literal["sgd", "adamw"] | None = option(None, "default: adamw (linear), sgd (fcn)")
    lr: float | None = option(None, "base learning rate (default: 1e-3 linear, 0.01 fcn)")
    momentum: float | None = option(None, "SGD momentum (default 0.9)")
    weight_decay: float | None = option(None, "weight decay (default 1e-4)")
    warmup_iters: int | None = option(None, "linear warm-up iterations (default 0)")
    lr_steps: list[int] | None = option(None, "iterations where the LR is multiplied by 0.1 (default: poly decay)")
    image_size: int | None = option(None, "shorter side before scaling and for evaluation (default 512)")
    keep_size: bool = option(False, "use the images' own size (image_size: null), as MoCo's FCN protocol")
    crop_size: int | None = option(None, "square training crop (default 512)")
    scale_range: list[float] | None = option(None, "random rescaling range of the shorter side (default 0.5, 2.0)")
    flip: bool | None = option(None, "random horizontal flip (default true)")
    levels: str | None = option(
        None, "backbone levels fed to the head, e.g. c5 or c4-c5 (default: c5 ResNet, c4 = patch tokens ViT)"
    )
    frozen_stages: int | None = option(None, "fcn: 0 none .. 5 whole trunk (default 0); linear: always 5")
    norm: Literal["frozen_bn", "sync_bn", "group_norm"] | None = option(
        None, "backbone BatchNorm when fine-tuning (default sync_bn: BN in train mode)"
    )
    output_stride: Literal[16, 32] | None = option(None, "16 dilates a ResNet's c5 (default 32)")
    head_channels: int | None = option(None, "fcn: channels of the two 3x3 convolutions (default 256)")
    head_dilation: int | None = option(None, "fcn: dilation of the two 3x3 convolutions (default 1)")
    trials: int = option(1, "repeat the training with seeds seed..seed+N-1; mean and std")
    amp: bool = option(True, "mixed precision (CUDA only; ignored on CPU)")
    num_workers: int = option(2, "DataLoader workers reading and cropping images")
    keep_head: bool = option(False, "keep the trained weights in the cache (path in details)")
    train_split: str = option("train", "dataset split to train on")
    eval_split: str = option("test", "dataset split to evaluate on")
    checkpoint_every: int = option(500, "save the resumable training state every N iterations")

    def validate(self) -> None:
        for name in ("iterations", "batch_size", "image_size", "crop_size", "head_channels", "head_dilation"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v}")
        if self.warmup_iters is not None and self.warmup_iters < 0:
            raise ValueError("warmup_iters: expected 0 or more")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("lr: expected a positive number")
        if self.scale_range is not None and (
            len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]
        ):
            raise ValueError("scale_range: expected [low, high] with 0 < low <= high")
        if self.trials < 1 or self.num_workers < 0 or self.checkpoint_every < 1:
            raise ValueError("trials >= 1, num_workers >= 0 and checkpoint_every >= 1 expected")
        if self.keep_size and self.image_size is not None:
            raise ValueError("keep_size: set either keep_size or image_size, not both")
        r = self.resolved()
        if r["head"] == "linear" and r["frozen_stages"] != 5:
            raise ValueError("frozen_stages: the linear protocol freezes the whole backbone (5)")
        if r["frozen_stages"] is not None and not 0 <= r["frozen_stages"] <= 5:
            raise ValueError("frozen_stages: expected 0 to 5")
        if r["lr_steps"] and sorted(r["lr_steps"]) != list(r["lr_steps"]):
            raise ValueError("lr_steps: expected increasing iterations")

    def resolved(self) -> dict[str, Any]:
        """Every schedule option: explicit values over the preset's over the (per-head) defaults."""
        base = {**DEFAULTS, **(PRESETS[self.preset] if self.preset else {})}
        r = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in base.items()}
        for k, v in _PER_HEAD[r["head"]].items():
            if r[k] is None:
                r[k] = v
        if self.keep_size:
            r["image_size"] = None
        return r


#: options that do not change what a trial trains: a run resumes across changes to them
_NOT_IN_STATE_KEY = frozenset({"num_workers", "keep_head", "checkpoint_every", "trials", "eval_split"})


class SegmentationTask(Task):
    """Semantic segmentation: linear (frozen) or FCN (fine-tuned) head, mIoU."""

    Options = SegmentationOptions
    protocol_version = "1"
    execution_options = ("num_workers",)
    dataset_kinds = ("segmentation",)
    splits = ()  # no cached features: the task trains on the images itself
    modality = "image"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "miou"

    def run(self, ctx: TaskContext) -> TaskOutput:
        from ..metrics.segmentation import segmentation_scores

        o = self.options
        r = o.resolved()
        dataset = ctx.dataset
        train, test = dataset.split(o.train_split), dataset.split(o.eval_split)
        classes = list(dataset.classes or [])
        if not classes:
            raise DataError(f"segmentation: dataset {dataset.name!r} has no class list")
        ignore = int(getattr(dataset, "ignore_index", 255))
        cell = {
            "encoder": jsonable(ctx.encoder.fingerprint()),
            "dataset": jsonable(dataset.fingerprint()),
            "task": {k: v for k, v in options_dict(o).items() if k not in _NOT_IN_STATE_KEY},
            "protocol": self.protocol_version,
        }
        scores, per_trial, confs, states, counts = [], [], [], [], []
        t0 = time.perf_counter()
        for t in range(o.trials):
            seed = int(ctx.seed) + t
            key = stable_hash({**cell, "seed": seed}, n=32)
            info, conf, state, per_image = self._trial(
                ctx, r, train.items, test.items, len(classes), ignore, seed, key
            )
            s = segmentation_scores(conf, classes)
            info.update({k: s[k] for k in ("miou", "pixel_accuracy", "mean_accuracy")})
            scores.append(s)
            per_trial.append(info)
            confs.append(conf)
            states.append(state)
            counts.append(per_image)
        for state in states:  # kept until every trial is done, so a re-run resumes each where it was
            state.clear()
        fit_s = time.perf_counter() - t0
        names = ("miou", "pixel_accuracy", "mean_accuracy")
        metrics = {k: float(np.mean([s[k] for s in scores])) for k in names}
        if o.trials > 1:
            from ..stats.seeds import seed_metrics

            for k in names:
                metrics.update(seed_metrics(k, [s[k] for s in scores]))
        details = {
            "schedule": r,
            "classes": classes,
            "num_classes": len(classes),
            "ignore_index": ignore,
            "n_train": len(train),
            "n_eval": len(test),
            # mean over the trials where the class is defined; null: absent from target and prediction
            "per_class_iou": _per_class([s["iou"] for s in scores], classes),
            "per_class_accuracy": _per_class([s["accuracy"] for s in scores], classes),
            "trials": per_trial,
            "pixels_scored": int(np.asarray(confs[0]).sum()),
            "metric_scale": "fractions in [0, 1] (x100 for the numbers papers print)",
        }
        return TaskOutput(metrics, "miou", details, {"fit_s": fit_s}, samples=_samples(counts, confs))

    def _trial(
        self, ctx: TaskContext, r: dict[str, Any], train_items: Any, test_items: Any, num_classes: int,
        ignore: int, seed: int, key: str,
    ) -> tuple[dict[str, Any], np.ndarray, Any, np.ndarray]:
        import torch

        from ..dense.checkpointing import TrainingCheckpoint
        from ..dense.segmentation import build_model, evaluate_model, train_model
        from ..results.store import atomic_write_bytes

        o = self.options
        device = ctx.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the head's (and a ViT pyramid's) initialisation
            model = build_model(ctx.encoder, r, num_classes, device="cpu")
        model.to(device)
        ckpt = TrainingCheckpoint(key, root=ctx.cache_dir, every=o.checkpoint_every)
        bar = progress_bar(task_console(ctx))
        if bar is not None:
            bar.start()
        try:
            losses, resumed_from = train_model(
                model, train_items, r, ignore_index=ignore, device=device, seed=seed, checkpoint=ckpt,
                amp=o.amp, num_workers=o.num_workers, progress=bar,
            )  # fmt: skip
            conf, per_image = evaluate_model(
                model, test_items, num_classes, image_size=r["image_size"], ignore_index=ignore,
                device=device, amp=o.amp, num_workers=o.num_workers, progress=bar, per_image=True,
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.stop()
        tenth = max(1, len(losses) // 10)
        info: dict[str, Any] = {
            "seed": seed,
            "resumed_from": resumed_from,
            "loss_first": float(np.mean(losses[:tenth])),
            "loss_last": float(np.mean(losses[-tenth:])),
            "loss_curve": loss_curve(losses),
            "backbone": {"kind": model.backbone.kind, "strides": model.strides, "channels": model.in_channels},
        }
        if o.keep_head:
            buf = io.BytesIO()
            torch.save(model.trained_module().state_dict(), buf)
            final = ckpt.path.with_name(f"{key}.final.pt")
            atomic_write_bytes(final, buf.getvalue())
            info["weights"] = str(final)
        return info, conf, ckpt, per_image


def _samples(counts: list[np.ndarray], confs: list[np.ndarray]) -> dict[str, Any]:
    """Per-image pixel counts of every trial (``kind: pixel_counts``): the bootstrap resamples
    evaluation images and recomputes mIoU (pixel / mean accuracy) from the summed counts."""
    from ..stats.samples import task_samples

    gold = counts[0][:, 2]
    for per_image, conf in zip(counts, confs):
        if not np.array_equal(per_image[:, 2], gold) or not np.array_equal(per_image.sum(0)[0], np.diag(conf)):
            return {"unavailable": "per-image pixel counts do not add up to the confusion matrix"}
    arrays: dict[str, np.ndarray] = {"gold": gold}
    names = ["gold"]
    for t, per_image in enumerate(counts):
        suffix = f"@trial{t}" if t else ""
        arrays[f"intersection{suffix}"], arrays[f"union{suffix}"] = per_image[:, 0], per_image[:, 1]
        names += [f"intersection{suffix}", f"union{suffix}"]
    metrics = {
        "miou": ("miou", names),
        "pixel_accuracy": ("seg_pixel_accuracy", names),
        "mean_accuracy": ("seg_mean_accuracy", names),
    }
    return task_samples("pixel_counts", arrays, metrics)


# -- helpers ---------------------------------------------------------------------------------------




def _per_class(values: list[list[float]], classes: list[str]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {}
    for j, name in enumerate(classes):
        col = arr[:, j][~np.isnan(arr[:, j])]
        out[name] = float(col.mean()) if col.size else None
    return out

