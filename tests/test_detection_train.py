"""Detection fine-tuning: resumable training, and an end-to-end run through ``clbench run``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from clbench.datasets.coco_instances import CocoDataset
from clbench.dense.checkpointing import TrainingCheckpoint, state_root
from clbench.dense.detection import Schedule, build_backbone, build_detector, lr_factor, train_detector
from clbench.encoders.timm_encoder import TimmEncoder
from clbench.options import parse_options
from clbench.tasks.detection import DetectionOptions

pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: coco128 images whose one or two objects are large (a random-init network can fit them quickly)
IMAGES = (42, 581, 636, 34)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cls: type, tmp_path=None, **options):
    return cls(parse_options(cls.Options, options), name="test", root=tmp_path, seed=0)


def coco128_subset(shared_data, tmp_path, ids=IMAGES):
    """A real coco128 annotation file cut down to ``ids`` (written under tmp_path)."""
    data = json.loads((shared_data / "coco128/annotations/instances_coco128.json").read_text())
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(data))
    return path, shared_data / "coco128/images"


def test_lr_schedule_warms_up_then_steps():
    s = Schedule(iterations=100, batch_size=2, lr=0.02, momentum=0.9, weight_decay=0, warmup_iters=10,
                 warmup_factor=0.001, lr_steps=[50, 80])  # fmt: skip
    assert lr_factor(0, s) == pytest.approx(0.001)
    assert lr_factor(5, s) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [lr_factor(i, s) for i in (10, 49, 50, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_presets_fill_unset_options_and_explicit_options_win():
    o = parse_options(DetectionOptions, {"preset": "voc07+12-c4", "iterations": 10})
    r = o.resolved()
    assert r["iterations"] == 10 and r["head"] == "c4" and r["lr_steps"] == [18000, 22000]
    assert parse_options(DetectionOptions, {}).resolved()["head"] == "fpn"
    from clbench.tasks.detection import DetectionTask

    assert DetectionTask.main_metric(o) == "bbox_AP50"
    assert DetectionTask.main_metric(parse_options(DetectionOptions, {"preset": "coco-fpn-1x"})) == "bbox_AP"
    from clbench.errors import ConfigError

    with pytest.raises(ConfigError, match="fpn head"):
        parse_options(DetectionOptions, {"preset": "voc07+12-c4", "model": "mask_rcnn"})


class _Stop(Exception):
    pass


def _train(items, ckpt, *, head="fpn", stop_at=None, iterations=6):
    torch.manual_seed(0)
    enc = make(TimmEncoder, model="resnet18")
    levels = "c4" if head == "c4" else "c2-c5"
    bb = build_backbone(enc, norm="frozen_bn", frozen_stages=1, levels=levels)
    model = build_detector(bb, 80, head=head, train_sizes=[128], max_size=160, roi_batch_size=16)
    s = Schedule(iterations=iterations, batch_size=2, lr=0.005, momentum=0.9, weight_decay=1e-4, warmup_iters=2,
                 warmup_factor=0.1, lr_steps=[4], checkpoint_every=3)  # fmt: skip

    def stop(it, loss):
        if it == stop_at:
            raise _Stop

    losses = train_detector(model, items, s, device="cpu", seed=3, checkpoint=ckpt, callback=stop)
    return model, losses


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_interrupted_training_resumes_to_the_same_weights(shared_data, tmp_path, head):
    ann, images = coco128_subset(shared_data, tmp_path, ids=IMAGES[:3])
    items = make(CocoDataset, images=str(images), annotations=str(ann)).split("train").items
    straight, straight_losses = _train(items, None, head=head)

    ckpt = TrainingCheckpoint("k" * 32, root=tmp_path / "cache", every=3)
    with pytest.raises(_Stop):
        _train(items, ckpt, head=head, stop_at=4)  # state saved after iteration 3, lost after 4
    assert ckpt.exists()
    torch.manual_seed(123)  # the resumed run must not depend on the RNG it starts with
    resumed, resumed_losses = _train(items, ckpt, head=head)
    assert resumed_losses == straight_losses
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ckpt.clear()
    assert not ckpt.exists()


def test_a_corrupt_training_state_starts_over(tmp_path):
    ckpt = TrainingCheckpoint("c" * 32, root=tmp_path, every=1)
    ckpt.path.parent.mkdir(parents=True)
    ckpt.path.write_bytes(b"truncated")
    assert ckpt.restore(model=torch.nn.Linear(2, 2)) == 0
    assert not ckpt.exists()


@pytest.mark.slow
def test_short_fine_tune_through_clbench_run(shared_data, tmp_path):
    """A random-init ResNet-18 fine-tuned on four coco128 images: the loss falls, AP50 > 0."""
    from typer.testing import CliRunner

    from clbench.cli import app
    from clbench.results.store import read_result

    ann, images = coco128_subset(shared_data, tmp_path)
    suite = tmp_path / "det.yaml"
    suite.write_text(
        "suite: det\ndevice: cpu\n"
        "encoders:\n  r18: {type: timm, model: resnet18}\n"
        f"datasets:\n  c128: {{type: coco, images: {images}, annotations: {ann}}}\n"
        "tasks:\n"
        "  - {name: det, type: detection, dataset: c128, eval_split: train, iterations: 40, batch_size: 2,\n"
        "     lr: 0.005, warmup_iters: 10, lr_steps: [32], clip_grad_norm: 1.0, train_size: [192],\n"
        "     max_size: 256, test_size: 192, norm: group_norm, frozen_stages: 0, roi_batch_size: 64,\n"
        "     num_workers: 0, checkpoint_every: 20}\n"
    )
    res = CliRunner().invoke(app, ["run", str(suite)])
    assert res.exit_code == 0, res.output
    result = read_result(tmp_path / "results/det/r18/det.json")
    assert result["status"] == "ok", result.get("error")
    assert result["main_metric"] == "bbox_AP"
    (trial,) = result["details"]["trials"]
    assert trial["loss_last"] < 0.7 * trial["loss_first"], trial["loss_curve"]
    assert result["metrics"]["bbox_AP50"] > 0
    assert set(result["metrics"]) == {f"bbox_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    # the training state is removed once the cell is done (keep_head is false)
    state = state_root(None)
    assert state.is_relative_to(os.environ["CLBENCH_CACHE_DIR"]) and not list(state.rglob("*.pt"))


def test_mask_rcnn_on_a_vit_pyramid_trains_and_predicts_masks():
    torch.manual_seed(0)
    enc = make(TimmEncoder, model="vit_tiny_patch16_224", model_kwargs={"depth": 2})
    model = build_detector(build_backbone(enc), 3, model="mask_rcnn", train_sizes=[64], max_size=96,
                           roi_batch_size=8)  # fmt: skip
    images = [torch.rand(3, 60, 80), torch.rand(3, 64, 64)]
    masks = torch.zeros(2, 1, 64, 80, dtype=torch.uint8)
    masks[0, 0, 10:40, 5:50] = 1
    masks[1, 0, 20:60, 20:60] = 1
    targets = [
        {"boxes": torch.tensor([[5.0, 10, 50, 40]]), "labels": torch.tensor([1]), "masks": masks[0, :, :60]},
        {
            "boxes": torch.tensor([[20.0, 20, 60, 60]]),
            "labels": torch.tensor([3]),
            "masks": masks[1, :, :64, :64],
        },
    ]
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(
        losses
    )
    sum(losses.values()).backward()
    assert model.backbone.body.scales["c2"][0].weight.grad is not None  # the pyramid is trained
    model.eval().roi_heads.score_thresh = 0.0
    model.roi_heads.detections_per_img = 5
    with torch.no_grad():
        out = model(images)
    assert out[0]["masks"].shape[-2:] == (60, 80) and out[1]["masks"].shape[-2:] == (64, 64)


def test_task_runs_mask_rcnn_trials_and_keeps_the_head_when_asked(shared_data, tmp_path):
    from clbench.tasks.base import TaskContext
    from clbench.tasks.detection import DetectionTask

    ann, images = coco128_subset(shared_data, tmp_path, ids=IMAGES[:2])
    ds = make(CocoDataset, images=str(images), annotations=str(ann))
    opts = parse_options(DetectionOptions, {
        "model": "mask_rcnn", "iterations": 2, "batch_size": 2, "train_size": [64], "max_size": 96,
        "test_size": 64, "roi_batch_size": 8, "num_workers": 0, "trials": 2, "keep_head": True,
        "eval_split": "train", "warmup_iters": 1,
    })  # fmt: skip
    ctx = TaskContext(
        features=None, dataset=ds, encoder=make(TimmEncoder, model="resnet18"), device="cpu", seed=5
    )
    out = DetectionTask(opts, name="det").run(ctx)
    assert out.main_metric == "bbox_AP"
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert f"bbox_{k}" in out.metrics and f"segm_{k}" in out.metrics and f"segm_{k}_std" in out.metrics
    trials = out.details["trials"]
    assert [t["seed"] for t in trials] == [5, 6]
    assert len(trials[0]["segm_stats"]) == 12
    for t in trials:  # kept heads: full detector state dicts, loadable
        state = torch.load(t["weights"], weights_only=True)
        assert any(k.startswith("roi_heads.mask_predictor") for k in state)
    assert not list(state_root(None).rglob("*[0-9a-f].pt"))  # the resumable states are gone


def test_an_interrupted_cell_resumes_from_its_saved_state(shared_data, tmp_path, monkeypatch):
    """The task keys its state by the cell: a re-run of the same cell picks the state up."""
    import clbench.dense.detection as det
    from clbench.tasks.base import TaskContext
    from clbench.tasks.detection import DetectionTask

    ann, images = coco128_subset(shared_data, tmp_path, ids=IMAGES[:2])
    opts = parse_options(DetectionOptions, {
        "iterations": 4, "batch_size": 2, "train_size": [64], "max_size": 96, "test_size": 64,
        "roi_batch_size": 8, "num_workers": 0, "eval_split": "train", "warmup_iters": 1, "checkpoint_every": 2,
    })  # fmt: skip

    def run():
        ds = make(CocoDataset, images=str(images), annotations=str(ann))
        ctx = TaskContext(
            features=None, dataset=ds, encoder=make(TimmEncoder, model="resnet18"), device="cpu"
        )
        return DetectionTask(opts, name="det").run(ctx)

    real, starts = det.train_detector, []

    def watched(*args, stop_at=None, **kw):
        starts.append(kw["checkpoint"].exists())  # whether a saved state was there to resume

        def stop(it, loss):
            if it == stop_at:
                raise _Stop

        return real(*args, **{**kw, "callback": stop})

    monkeypatch.setattr(det, "train_detector", lambda *a, **kw: watched(*a, stop_at=3, **kw))
    with pytest.raises(_Stop):
        run()
    assert len(list(state_root(None).rglob("*.pt"))) == 1  # the state after iteration 2
    monkeypatch.setattr(det, "train_detector", watched)
    resumed = run()
    assert starts == [False, True]
    assert not list(state_root(None).rglob("*.pt"))  # removed once the cell is done
    monkeypatch.setattr(det, "train_detector", real)
    straight = run()  # trains from the start
    assert resumed.details["trials"][0]["loss_curve"] == straight.details["trials"][0]["loss_curve"]
    np.testing.assert_equal(resumed.metrics, straight.metrics)  # NaN (no small objects) equals NaN
    assert resumed.details["trials"][0]["detections"] == straight.details["trials"][0]["detections"]
