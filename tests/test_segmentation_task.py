"""The ``segmentation`` task: options, data pipeline alignment, model shapes, end-to-end runs
through ``clbench run`` (synthetic colour regions and real COCO images), and exact resume."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clbench.api import run_suite
from clbench.cli import app
from clbench.errors import ConfigError
from clbench.options import parse_options
from clbench.registry import TASKS
from clbench.results.store import read_result
from clbench.tasks.segmentation import PRESETS, SegmentationOptions, SegmentationTask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])


def colour_regions(root: Path, n: int, size: int = 64, cell: int = 16, seed: int = 0) -> None:
    """Images whose class is the colour of a random 16-pixel cell (plus noise), as index PNGs."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for i in range(n):
            cls = rng.integers(0, 3, size=(size // cell, size // cell))
            labels = np.kron(cls, np.ones((cell, cell), dtype=np.int64))
            image = np.clip(COLOURS[labels] + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
            for sub, arr in (("img", image), ("ann", labels.astype(np.uint8))):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / sub / f"{i:03d}.png")


COLOUR_DATASET = """
  colours:
    type: mask-folder
    train_images: data/train/img
    train_masks: data/train/ann
    test_images: data/test/img
    test_masks: data/test/ann
    classes: [red, green, blue]
"""


def write_suite(root: Path, tasks: str, datasets: str = COLOUR_DATASET, name: str = "seg") -> Path:
    text = f"""
suite: {name}
output: results
seed: 0
device: cpu
encoders:
  r18: {{type: timm, model: resnet18, pretrained: false}}
datasets:
{textwrap.indent(textwrap.dedent(datasets).strip(), "  ")}
tasks:
{textwrap.indent(textwrap.dedent(tasks).strip(), "  ")}
"""
    path = root / "suite.yaml"
    path.write_text(text)
    return path


# -- options -----------------------------------------------------------------------------------------


def test_registered_and_options():
    assert TASKS.get("segmentation") is SegmentationTask
    assert SegmentationTask.dataset_kinds == ("segmentation",) and SegmentationTask.splits == ()
    linear = parse_options(SegmentationOptions, {}).resolved()
    assert linear["head"] == "linear" and linear["frozen_stages"] == 5 and linear["optimizer"] == "adamw"
    fcn = parse_options(SegmentationOptions, {"head": "fcn", "lr": 0.02}).resolved()
    assert fcn["frozen_stages"] == 0 and fcn["optimizer"] == "sgd" and fcn["lr"] == 0.02 and fcn["norm"] == "sync_bn"
    city = parse_options(SegmentationOptions, {"preset": "cityscapes-fcn", "iterations": 10}).resolved()
    assert city["iterations"] == 10 and city["crop_size"] == 769 and city["output_stride"] == 16
    assert city["image_size"] is None  # MoCo: the images' own size
    assert parse_options(SegmentationOptions, {"preset": "ade20k-linear"}).resolved()["iterations"] == 40000
    assert set(PRESETS) == {"ade20k-linear", "cityscapes-fcn", "voc-fcn"}
    assert SegmentationTask.main_metric(parse_options(SegmentationOptions, {})) == "miou"
    for bad, match in (
        ({"frozen_stages": 2}, "linear protocol freezes the whole backbone"),
        ({"scale_range": [2.0, 1.0]}, "scale_range"),
        ({"keep_size": True, "image_size": 256}, "keep_size"),
        ({"lr_steps": [20, 10]}, "lr_steps"),
        ({"head": "conv"}, "head"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_options(SegmentationOptions, bad)


def test_lr_factor_by_hand():
    from clbench.dense.segmentation import lr_factor

    r = {"warmup_iters": 4, "lr_steps": [], "iterations": 10}
    assert lr_factor(0, r) == pytest.approx(0.25 * 1.0)
    assert lr_factor(5, r) == pytest.approx(0.5**0.9)
    r = {"warmup_iters": 0, "lr_steps": [6, 8], "iterations": 10}
    assert [round(lr_factor(i, r), 6) for i in (0, 5, 6, 7, 8, 9)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]


# -- data pipeline -------------------------------------------------------------------------------------


def test_batch_plan_is_resumable_and_covers_each_epoch():
    from clbench.dense.segmentation import BatchPlan

    full = list(BatchPlan(10, 3, 0, 8, seed=1))
    assert list(BatchPlan(10, 3, 5, 8, seed=1)) == full[5:]  # resuming replays the same batches
    flat = [k[0] for batch in full for k in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    other = [k[0] for batch in BatchPlan(10, 3, 0, 8, seed=2) for k in batch]
    assert other[:10] != flat[:10]  # another seed, another order
    assert full[2][1][1:] == (2, 1)  # keys carry (iteration, slot)


def test_crops_keep_image_and_mask_aligned():
    """Labels are a function of the pixel colour: after scaling, cropping, padding and flipping,
    the crop's mask must still be that function of the crop's pixels."""
    from clbench.dense.segmentation import TrainCrops

    rng = np.random.default_rng(0)
    items = []
    for _ in range(3):
        labels = np.kron(rng.integers(0, 2, size=(6, 8)), np.ones((8, 8), dtype=np.int64))  # 48 x 64
        items.append(((labels[..., None] * 255).repeat(3, -1).astype(np.uint8), labels))
    r = {"image_size": 48, "crop_size": 40, "scale_range": [1.0, 1.0], "flip": True}
    crops = TrainCrops(items, r, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ignore_index=255, seed=0)
    flipped = 0
    for key in [(i % 3, i, 0) for i in range(12)]:
        x, y = crops[key]
        assert x.shape == (3, 40, 40) and y.shape == (40, 40)
        np.testing.assert_array_equal((x[0] > 0.5).long().numpy(), y.numpy())  # exact: no resizing
        x2, y2 = crops[key]
        assert torch.equal(x, x2) and torch.equal(y, y2)  # a function of the key
        flipped += int(not torch.equal(y, torch.from_numpy(items[key[0]][1][:40, :40])))
    assert flipped > 0
    # scaled up 2x, and padded with the ignore index when the crop exceeds the image
    r = {"image_size": 96, "crop_size": 200, "scale_range": [1.0, 1.0], "flip": False}
    x, y = TrainCrops(items, r, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 255, 0)[(0, 0, 0)]
    assert (y == 255).sum() == 200 * 200 - 96 * 128
    valid = y != 255
    agree = ((x[0] > 0.5).long() == y)[valid].float().mean()
    assert agree > 0.97  # only pixels on region borders may differ (bilinear vs nearest)


# -- model -------------------------------------------------------------------------------------------


def _encoder(model: str = "resnet18", **kw):
    from clbench.encoders.timm_encoder import TimmEncoder

    return TimmEncoder(parse_options(TimmEncoder.Options, {"model": model, **kw}), name="enc")


def _r(**kw):
    return parse_options(SegmentationOptions, kw).resolved()


def test_model_logits_cover_any_input_size():
    from clbench.dense.segmentation import build_model

    torch.manual_seed(0)
    for enc, r in (
        (_encoder(), _r(head="linear")),
        (_encoder(), _r(head="fcn", levels="c4-c5", head_channels=16)),
        (_encoder("vit_tiny_patch16_224", model_kwargs={"img_size": 64}), _r(head="linear")),
    ):
        model = build_model(enc, r, num_classes=5).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 70, 50))
        assert out.shape == (2, 5, 70, 50)
    assert model.backbone.kind == "ViT" and model.strides == [16]  # ViT default: patch tokens (c4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)  # linear: only the head trains


def test_output_stride_16_dilates_c5():
    from clbench.dense.segmentation import build_model

    model = build_model(_encoder(), _r(head="fcn", output_stride=16, head_channels=8), num_classes=3).eval()
    assert model.strides == [16]
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert feats["0"].shape[-2:] == (4, 4)  # 64 / 16, not 64 / 32
    with pytest.raises(ConfigError, match="output_stride"):
        build_model(_encoder("vit_tiny_patch16_224", model_kwargs={"img_size": 64}), _r(head="fcn", output_stride=16), 3)


# -- end to end ----------------------------------------------------------------------------------------

cli = CliRunner()


def test_linear_head_learns_colour_regions(tmp_path):
    """A frozen random ResNet's early features know colours: the linear head must reach a high
    mIoU, which fails if the labels, the crops or the upsampled logits were misaligned."""
    colour_regions(tmp_path / "data", n=12)
    path = write_suite(tmp_path, """
        - {name: lin, type: segmentation, dataset: colours, head: linear, levels: c2-c3, iterations: 50,
           batch_size: 4, image_size: 64, crop_size: 48, lr: 0.01, num_workers: 0, trials: 2}
    """)  # fmt: skip
    res = cli.invoke(app, ["run", str(path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    result = read_result(tmp_path / "results" / "seg" / "r18" / "lin.json")
    assert result["status"] == "ok" and result["main_metric"] == "miou"
    assert result["metrics"]["miou"] > 0.85, result["metrics"]
    assert result["metrics"]["pixel_accuracy"] > 0.9
    d = result["details"]
    assert set(d["per_class_iou"]) == {"red", "green", "blue"} and d["n_eval"] == 12
    assert [t["seed"] for t in d["trials"]] == [0, 1]
    for trial in d["trials"]:
        assert trial["miou"] > 0.85 and trial["loss_last"] < 0.5 * trial["loss_first"]
    assert d["trials"][0]["loss_curve"] != d["trials"][1]["loss_curve"]  # another seed, another run
    m = result["metrics"]
    assert m["miou"] == pytest.approx(np.mean([t["miou"] for t in d["trials"]]))
    assert m["miou_std"] == pytest.approx(np.std([t["miou"] for t in d["trials"]]))
    assert d["pixels_scored"] == 12 * 64 * 64
    # the trained weights were not kept, and no training state is left behind
    assert "weights" not in d["trials"][0]
    assert not list((Path(os.environ["CLBENCH_CACHE_DIR"]) / "dense-state").rglob("*.pt"))


@pytest.mark.slow
def test_coco128_linear_and_fcn_end_to_end(tmp_path, shared_data):
    root = shared_data / "coco128"
    path = write_suite(tmp_path, """
        - {name: lin, type: segmentation, dataset: coco, head: linear, iterations: 20, batch_size: 4,
           image_size: 128, crop_size: 128, num_workers: 0}
        - {name: fcn, type: segmentation, dataset: coco, head: fcn, iterations: 12, batch_size: 2,
           image_size: 128, crop_size: 128, head_channels: 64, lr: 0.01, num_workers: 0}
    """, datasets=f"""
        coco: {{type: coco-semantic, images: {root / "images"}, annotations: {root / "annotations/instances_coco128.json"},
               limit: 12}}
    """)  # fmt: skip
    res = cli.invoke(app, ["run", str(path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for task in ("lin", "fcn"):
        result = read_result(tmp_path / "results" / "seg" / "r18" / f"{task}.json")
        assert result["status"] == "ok", result.get("reason")
        m = result["metrics"]
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            assert 0.0 < m[key] <= 1.0, (task, m)
        d = result["details"]
        assert d["num_classes"] == 81 and len(d["per_class_iou"]) == 81 and d["n_train"] == d["n_eval"] == 12
        for trial in d["trials"]:
            assert trial["loss_last"] < trial["loss_first"], (task, trial["loss_curve"])
        json.dumps(result, allow_nan=False)  # strict JSON: undefined per-class IoUs are null


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    import clbench.dense.segmentation as seg

    colour_regions(tmp_path / "data", n=4, size=32, cell=8)
    path = write_suite(tmp_path, """
        - {name: fcn, type: segmentation, dataset: colours, head: fcn, iterations: 9, batch_size: 2,
           image_size: 32, crop_size: 32, head_channels: 8, checkpoint_every: 3, keep_head: true, num_workers: 0}
    """)  # fmt: skip
    result_file = tmp_path / "results" / "seg" / "r18" / "fcn.json"

    # uninterrupted, in its own cache
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache-a"))
    run_suite(path)
    straight = read_result(result_file)["details"]["trials"][0]
    assert straight["resumed_from"] == 0

    # interrupted after iteration 7 (the state of iteration 6 saved), then run again
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache-b"))
    original = seg.train_model

    def interrupted(*args, **kw):
        def stop(it, loss):
            if it == 7:
                raise KeyboardInterrupt

        return original(*args, callback=stop, **kw)

    monkeypatch.setattr(seg, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(path, force=True)
    monkeypatch.setattr(seg, "train_model", original)
    run_suite(path, force=True)
    resumed = read_result(result_file)["details"]["trials"][0]
    assert resumed["resumed_from"] == 6

    a = torch.load(straight["weights"], weights_only=True)
    b = torch.load(resumed["weights"], weights_only=True)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert resumed["miou"] == straight["miou"]


def test_finished_trials_are_not_retrained_after_an_interruption(tmp_path, monkeypatch):
    import clbench.dense.segmentation as seg

    colour_regions(tmp_path / "data", n=2, size=16, cell=8)
    path = write_suite(tmp_path, """
        - {name: lin, type: segmentation, dataset: colours, iterations: 5, batch_size: 2, image_size: 16,
           crop_size: 16, checkpoint_every: 2, trials: 2, num_workers: 0}
    """)  # fmt: skip
    original, calls = seg.train_model, []

    def interrupted(*args, **kw):
        calls.append(kw["seed"])

        def stop(it, loss):
            if kw["seed"] == 1 and it == 3:  # the second trial, after its state at 2 was saved
                raise KeyboardInterrupt

        return original(*args, callback=stop, **kw)

    monkeypatch.setattr(seg, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(path)
    monkeypatch.setattr(seg, "train_model", original)
    run_suite(path)
    trials = read_result(tmp_path / "results" / "seg" / "r18" / "lin.json")["details"]["trials"]
    assert calls == [0, 1]
    assert [t["resumed_from"] for t in trials] == [5, 2]  # trial 0 was finished, trial 1 half-way
    assert all(len(t["loss_curve"]) == 5 for t in trials)
    assert not list((Path(os.environ["CLBENCH_CACHE_DIR"]) / "dense-state").rglob("*.pt"))  # cleared


def test_encoder_without_backbone_is_skipped_and_kinds_are_checked(tmp_path):
    colour_regions(tmp_path / "data", n=2, size=16, cell=8)
    path = write_suite(tmp_path, """
        - {name: lin, type: segmentation, dataset: colours, iterations: 1, batch_size: 1, image_size: 16,
           crop_size: 16, num_workers: 0}
    """)  # fmt: skip
    text = path.read_text().replace("r18: {type: timm, model: resnet18, pretrained: false}", "m: {type: mock}")
    path.write_text(text)
    summary = run_suite(path)
    (cell,) = summary.cells
    assert cell.status == "skipped" and "backbone" in cell.reason
    bad = text.replace("dataset: colours", "dataset: digits").replace(
        "datasets:\n", "datasets:\n  digits: {type: sklearn-digits}\n"
    )
    path.write_text(bad)
    res = cli.invoke(app, ["validate", str(path)])
    assert res.exit_code != 0 and "segmentation" in res.output
