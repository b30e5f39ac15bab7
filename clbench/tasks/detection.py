"""``detection``: fine-tune Faster / Mask R-CNN on the encoder's backbone, score with COCOeval.

The encoder's network (checkpoint loaded under the usual coverage rules) becomes a multi-level
backbone (:mod:`clbench.dense.backbones`), torchvision's detector is built on it
(:mod:`clbench.dense.detection`: an FPN head, or a C4 head approximating detectron2's R50-C4),
trained on ``train_split`` and evaluated on ``eval_split`` with pycocotools' COCOeval. Metrics
are fractions in [0, 1] (papers print them x100): ``bbox_AP`` (AP@[.5:.95]), ``bbox_AP50``,
``bbox_AP75``, ``bbox_APs/m/l``, and ``segm_*`` for Mask R-CNN; the headline is ``bbox_AP``, or
``bbox_AP50`` under the VOC preset (as the VOC literature reports). ``trials: N`` repeats the
fine-tuning with seeds ``seed .. seed+N-1``: metrics are the means, ``<metric>_std`` the sample
standard deviations, per-trial values are in ``details``.

Presets fill the schedule (explicit options override them); they are GPU-scale (see
docs/detection.md for their cost and the published numbers they correspond to):

- ``voc07+12-c4``: C4 head, 24k iterations x 16 images, LR 0.02 (steps 18k, 22k, 100 warm-up
  iterations), train sizes 480..800, test 800, SyncBN, nothing frozen (MoCo's VOC protocol);
- ``coco-fpn-1x``: FPN head, 90k iterations x 16 images, LR 0.02 (steps 60k, 80k, 1000 warm-up),
  train sizes 640..800, test 800, SyncBN, nothing frozen (the 1x schedule).

Training state is saved every ``checkpoint_every`` iterations in the cache folder under a key
of the cell (encoder and dataset fingerprints, options, seed), so an interrupted run resumes;
it is deleted when the cell ends, unless ``keep_head`` keeps the trained detector there (its
path is in ``details``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, DataError
from ..options import option, options_dict
from ._training import jsonable, loss_curve, progress_bar, task_console
from .base import Task, TaskContext, TaskOutput

_VOC_SIZES = list(range(480, 801, 32))
_COCO_SIZES = list(range(640, 801, 32))
PRESETS: dict[str, dict[str, Any]] = {
    "voc07+12-c4": {
        "head": "c4", "iterations": 24000, "batch_size": 16, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
        "warmup_iters": 100, "warmup_factor": 0.001, "lr_steps": [18000, 22000], "train_size": _VOC_SIZES,
        "max_size": 1333, "test_size": 800, "frozen_stages": 0, "norm": "sync_bn", "roi_batch_size": 512,
    },
    "coco-fpn-1x": {
        "head": "fpn", "iterations": 90000, "batch_size": 16, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
        "warmup_iters": 1000, "warmup_factor": 0.001, "lr_steps": [60000, 80000], "train_size": _COCO_SIZES,
        "max_size": 1333, "test_size": 800, "frozen_stages": 0, "norm": "sync_bn", "roi_batch_size": 512,
    },
}  # fmt: skip
#: the schedule without a preset: a short FPN fine-tune, frozen BN and stem + c2 frozen
DEFAULTS: dict[str, Any] = {
    "head": "fpn", "iterations": 1000, "batch_size": 2, "lr": 0.0025, "momentum": 0.9, "weight_decay": 1e-4,
    "warmup_iters": 100, "warmup_factor": 0.001, "lr_steps": [], "train_size": [800], "max_size": 1333,
    "test_size": 800, "frozen_stages": 2, "norm": "frozen_bn", "roi_batch_size": 512,
}  # fmt: skip


@dataclasses.dataclass
class DetectionOptions:
    model: Literal["faster_rcnn", "mask_rcnn"] = option(
        "faster_rcnn", "detector (mask_rcnn adds segm_* metrics)"
    )
    preset: Literal["voc07+12-c4", "coco-fpn-1x"] | None = option(
        None, "published schedule filling the options left unset (GPU-scale)"
    )
    head: Literal["fpn", "c4"] | None = option(None, "fpn, or c4 (detectron2 R50-C4-like, ResNet only)")
    iterations: int | None = option(None, "training iterations (default 1000)")
    batch_size: int | None = option(None, "images per iteration (default 2)")
    lr: float | None = option(None, "base learning rate (default 0.0025)")
    momentum: float | None = option(None, "SGD momentum (default 0.9)")
    weight_decay: float | None = option(None, "SGD weight decay (default 1e-4)")
    warmup_iters: int | None = option(None, "linear warm-up iterations (default 100)")
    warmup_factor: float | None = option(None, "LR factor at iteration 0 of the warm-up (default 0.001)")
    lr_steps: list[int] | None = option(None, "iterations where the LR is multiplied by 0.1 (default none)")
    train_size: list[int] | None = option(None, "training shorter side(s); one drawn per image (default 800)")
    max_size: int | None = option(None, "cap on the longer side (default 1333)")
    test_size: int | None = option(None, "evaluation shorter side (default 800)")
    frozen_stages: int | None = option(None, "0: none, 1: stem, k: stem + c2..ck (default 2)")
    norm: Literal["frozen_bn", "sync_bn", "group_norm"] | None = option(
        None, "backbone BatchNorm (default frozen_bn)"
    )
    trials: int = option(1, "repeat the fine-tuning with seeds seed..seed+N-1; mean and std")
    amp: bool = option(True, "mixed precision (CUDA only; ignored on CPU)")
    num_workers: int = option(2, "DataLoader workers loading training images")
    keep_head: bool = option(False, "keep the trained detector in the cache (path in details)")
    train_split: str = option("train", "dataset split to fine-tune on")
    eval_split: str = option("test", "dataset split to evaluate on")
    roi_batch_size: int | None = option(None, "sampled RoIs per image for the box head (default 512)")
    clip_grad_norm: float | None = option(None, "clip the gradients' total L2 norm (default: no clipping)")
    checkpoint_every: int = option(500, "save the resumable training state every N iterations")

    def validate(self) -> None:
        for name in ("iterations", "batch_size", "warmup_iters", "max_size", "test_size", "roi_batch_size"):
            v = getattr(self, name)
            if v is not None and v < (0 if name == "warmup_iters" else 1):
                raise ValueError(f"{name}: expected a positive integer, got {v}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError("clip_grad_norm: expected a positive number")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("lr: expected a positive number")
        if self.train_size is not None and (not self.train_size or min(self.train_size) < 1):
            raise ValueError("train_size: expected positive integers")
        if self.frozen_stages is not None and not 0 <= self.frozen_stages <= 5:
            raise ValueError("frozen_stages: expected 0 to 5")
        if self.trials < 1:
            raise ValueError("trials: expected a positive integer")
        if self.num_workers < 0 or self.checkpoint_every < 1:
            raise ValueError("num_workers >= 0 and checkpoint_every >= 1 expected")
        if self.model == "mask_rcnn" and self.resolved()["head"] == "c4":
            raise ValueError("model: mask_rcnn needs the fpn head (the c4 head is box-only)")

    def resolved(self) -> dict[str, Any]:
        """Every schedule option: explicit values over the preset's over the defaults."""
        base = {**DEFAULTS, **(PRESETS[self.preset] if self.preset else {})}
        return {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in base.items()}


class DetectionTask(Task):
    """Faster / Mask R-CNN fine-tuning on the encoder's backbone, COCOeval metrics."""

    Options = DetectionOptions
    protocol_version = "1"
    execution_options = ("num_workers",)
    dataset_kinds = ("detection",)
    splits = ()  # no cached features: the task trains the network itself
    modality = "image"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "bbox_AP50" if options.preset == "voc07+12-c4" else "bbox_AP"

    def run(self, ctx: TaskContext) -> TaskOutput:
        from ..dense.coco_eval import HEADLINE, coco_evaluate
        from ..dense.detection import detect
        from ..options import stable_hash

        o = self.options
        r = o.resolved()
        dataset, encoder = ctx.dataset, ctx.encoder
        masks = o.model == "mask_rcnn"
        train_items = dataset.split(o.train_split).items
        eval_items = dataset.split(o.eval_split).items
        if not train_items or not eval_items:
            raise DataError(
                f"detection: dataset {dataset.name!r} has an empty {o.train_split!r} or {o.eval_split!r} split"
            )
        if masks and not dataset.has_masks:
            raise ConfigError(
                f"mask_rcnn needs instance masks; dataset {dataset.name!r} has none", key="model"
            )
        gt = dataset.coco_ground_truth(o.eval_split)
        iou_types = ("bbox", "segm") if masks else ("bbox",)
        cell = {
            "encoder": jsonable(encoder.fingerprint()),
            "dataset": jsonable(dataset.fingerprint()),
            "task": options_dict(o),
            "protocol": self.protocol_version,
        }
        trials: list[dict[str, float]] = []
        per_trial: list[dict[str, Any]] = []
        outcomes: list[dict[str, dict[str, Any]]] = []
        t0 = time.perf_counter()
        for t in range(o.trials):
            seed = int(ctx.seed) + t
            model, losses, kept = self._fine_tune(
                ctx, r, train_items, masks, seed, stable_hash({**cell, "seed": seed}, n=32)
            )
            dets, counts = detect(
                model, eval_items, dataset.category_ids, device=ctx.device, test_size=r["test_size"],
                batch_size=max(1, min(r["batch_size"], 8)), masks=masks, amp=o.amp,
            )  # fmt: skip
            metrics: dict[str, float] = {}
            info: dict[str, Any] = {"seed": seed}
            outcomes.append({})
            for iou in iou_types:
                extra: dict[str, Any] = {}
                outcomes[-1][iou] = {}
                stats = coco_evaluate(gt, dets, iou_type=iou, details=extra, outcomes=outcomes[-1][iou])
                metrics.update({f"{iou}_{k}": v for k, v in stats.items() if k in HEADLINE})
                info[f"{iou}_stats"] = stats
                info[f"{iou}_per_category_AP"] = extra["per_category_AP"]
            info.update(
                metrics=metrics,
                loss_first=float(np.mean(losses[: max(1, len(losses) // 10)])),
                loss_last=float(np.mean(losses[-max(1, len(losses) // 10) :])),
                loss_curve=loss_curve(losses),
                detections=len(dets),
                detections_per_image=counts if len(counts) <= 500 else None,
            )
            if kept:
                info["weights"] = kept
            trials.append(metrics)
            per_trial.append(info)
            del model
        fit_s = time.perf_counter() - t0
        out = {
            k: float(np.nanmean([m[k] for m in trials])) if _any_finite(trials, k) else float("nan")
            for k in trials[0]
        }
        if o.trials > 1:
            for k in trials[0]:
                vals = [m[k] for m in trials]
                out[f"{k}_std"] = float(np.std(vals, ddof=1)) if _any_finite(trials, k) else float("nan")
        details = {
            "schedule": r,
            "num_classes": len(dataset.category_ids),
            "n_train": len(train_items),
            "n_eval": len(eval_items),
            "trials": per_trial,
            "metric_scale": "fractions in [0, 1] (x100 for the numbers papers print)",
        }
        samples = detection_samples(outcomes, iou_types)
        return TaskOutput(out, self.main_metric(o), details, {"fit_s": fit_s}, samples=samples)

    def _fine_tune(self, ctx: TaskContext, r: dict[str, Any], items: Any, masks: bool, seed: int, key: str):
        import torch

        from ..dense.checkpointing import TrainingCheckpoint
        from ..dense.detection import Schedule, build_backbone, build_detector, train_detector

        o = self.options
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        levels = "c4" if r["head"] == "c4" else "c2-c5"
        backbone = build_backbone(
            ctx.encoder, device="cpu", frozen_stages=r["frozen_stages"], norm=r["norm"], levels=levels
        )
        model = build_detector(
            backbone, len(ctx.dataset.category_ids), model=o.model, head=r["head"],
            train_sizes=r["train_size"], max_size=r["max_size"], roi_batch_size=r["roi_batch_size"],
        )  # fmt: skip
        schedule = Schedule(
            iterations=r["iterations"], batch_size=r["batch_size"], lr=r["lr"], momentum=r["momentum"],
            weight_decay=r["weight_decay"], warmup_iters=r["warmup_iters"], warmup_factor=r["warmup_factor"],
            lr_steps=list(r["lr_steps"]), amp=o.amp, num_workers=o.num_workers, checkpoint_every=o.checkpoint_every,
            clip_grad_norm=o.clip_grad_norm,
        )  # fmt: skip
        ckpt = TrainingCheckpoint(key, root=ctx.cache_dir, every=o.checkpoint_every)
        bar = progress_bar(task_console(ctx))
        if bar is not None:
            bar.start()
        try:
            losses = train_detector(
                model,
                items,
                schedule,
                device=ctx.device,
                seed=seed,
                checkpoint=ckpt,
                masks=masks,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.stop()
        kept = None
        if o.keep_head:
            final = ckpt.path.with_name(f"{key}.final.pt")
            import io

            from ..results.store import atomic_write_bytes

            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            atomic_write_bytes(final, buf.getvalue())
            kept = str(final)
        ckpt.clear()
        return model, losses, kept


def detection_samples(outcomes: list[dict[str, Any]], iou_types: tuple[str, ...]) -> dict[str, Any]:
    """Per-image outcomes of every trial (``kind: detections``; from
    :func:`clbench.dense.coco_eval.image_outcomes`): the bootstrap resamples evaluation images and
    re-accumulates COCO AP (AP50, AP75) over them, averaged over trials like the metrics."""
    from ..stats.samples import task_samples

    gold = outcomes[0][iou_types[0]]["gold"]
    arrays: dict[str, Any] = {"gold": gold}
    names: dict[str, list[str]] = {iou: ["gold"] for iou in iou_types}
    for t, per_iou in enumerate(outcomes):
        for iou in iou_types:
            o = per_iou[iou]
            if not np.array_equal(o["gold"], gold):
                return {"unavailable": "the trials' ground-truth counts per image differ"}
            for part in ("score", "category", "match", "ignore"):
                name = f"{iou}_{part}" + (f"@trial{t}" if t else "")
                arrays[name] = o[part]
                names[iou].append(name)
    metrics = {
        f"{iou}_{metric}": (statistic, names[iou])
        for iou in iou_types
        for metric, statistic in (("AP", "coco_ap"), ("AP50", "coco_ap50"), ("AP75", "coco_ap75"))
    }
    return task_samples("detections", arrays, metrics)





def _any_finite(trials: list[dict[str, float]], key: str) -> bool:
    return any(np.isfinite(m[key]) for m in trials)
