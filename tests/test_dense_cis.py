"""Bootstrap CIs of the dense tasks and why diagnostics has none.

Segmentation: mIoU (pixel / mean accuracy) recomputed from per-image pixel counts equals the
metric of the summed confusion matrix exactly, and the CI equals scipy.stats.bootstrap's with a
statistic that sums the resampled images' confusion matrices. Detection: AP re-accumulated from
per-image outcomes equals COCOeval.accumulate + summarize exactly on the original images, equals
COCOeval run on each resampled image list, and the CI equals scipy's with COCOeval itself as the
statistic.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import textwrap

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")
pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clbench.dense.coco_eval import coco_evaluate, image_outcomes, predictions_to_coco
from clbench.metrics.segmentation import confusion_matrix, segmentation_scores
from clbench.stats import bootstrap_ci, cell_cis, make_samples, read_sidecar, write_sidecar
from clbench.stats.bootstrap import bootstrap_distributions, evaluate_statistic
from clbench.stats.paired import paired_difference
from clbench.tasks.detection import detection_samples
from clbench.tasks.diagnostics import DiagnosticsTask
from clbench.tasks.segmentation import _samples as segmentation_samples


def scipy_ci(data, statistic, *, seed, n_resamples, level=0.95, **kw):
    return scipy_stats.bootstrap(
        data, statistic, method="percentile", rng=np.random.default_rng(seed), n_resamples=n_resamples,
        confidence_level=level, **kw,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ segmentation
def _confusions(seed: int, n: int = 30, classes: int = 6, trial: int = 0) -> list[np.ndarray]:
    """Per-image confusion matrices of noisy predictions (``trial``: other predictions, same
    targets); class 5 never occurs in any target, is predicted in a few images (IoU 0, counted);
    class 4 occurs in few images."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng([seed, trial])
    out = []
    for i in range(n):
        target = rng.integers(0, 4 if i % 5 else 5, size=(12, 10))
        target[rng.random(target.shape) < 0.1] = 255  # ignored pixels
        pred = np.where(noise.random(target.shape) < 0.7, target, noise.integers(0, 5, size=target.shape))
        pred[pred == 255] = 0
        if i % 7 == 0:
            pred[0, :3] = 5
        out.append(confusion_matrix(target, pred, classes))
    return out


def _counts(confs: list[np.ndarray]) -> np.ndarray:
    """[n, 3, C] as evaluate_model(per_image=True) returns: intersection, union, target pixels."""
    rows = []
    for c in confs:
        tp, target = np.diag(c), c.sum(1)
        rows.append(np.stack([tp, target + c.sum(0) - tp, target]))
    return np.stack(rows).astype(np.int64)


def test_segmentation_counts_reproduce_the_metrics_exactly():
    trials = [_confusions(0), _confusions(0, trial=1)]
    totals = [np.sum(c, axis=0) for c in trials]
    samples = segmentation_samples([_counts(c) for c in trials], totals)
    assert samples["kind"] == "pixel_counts" and samples["arrays"]["gold"].shape == (30, 6)
    per_trial = [segmentation_scores(t) for t in totals]
    assert np.isnan(per_trial[0]["iou"]).sum() == 0 and per_trial[0]["iou"][5] == 0.0  # predicted, absent
    for metric in ("miou", "pixel_accuracy", "mean_accuracy"):
        want = float(np.mean([s[metric] for s in per_trial]))  # as the task averages trials
        assert evaluate_statistic(samples["arrays"], samples["metrics"][metric]) == want, metric
    # one trial, and a class absent from target and prediction (NaN, left out of the mean)
    confs = [c[:5, :5] for c in _confusions(2)]
    one = segmentation_samples([_counts(confs)], [np.sum(confs, axis=0)])
    scores = segmentation_scores(np.sum(confs, axis=0))
    assert evaluate_statistic(one["arrays"], one["metrics"]["miou"]) == scores["miou"]


def test_segmentation_counts_that_do_not_add_up_are_not_recorded():
    confs = _confusions(0)
    wrong = np.sum(confs, axis=0) + np.eye(6, dtype=np.int64)
    assert "unavailable" in segmentation_samples([_counts(confs)], [wrong])


@pytest.mark.parametrize("seed", [0, 3])
def test_segmentation_ci_equals_scipy_summing_resampled_confusions(seed):
    confs = np.stack(_confusions(seed + 10, n=40))
    samples = segmentation_samples([_counts(list(confs))], [confs.sum(0)])
    ours = bootstrap_ci(samples["arrays"], samples["metrics"]["miou"], seed=seed, n_resamples=1000)
    ref = scipy_ci((np.arange(len(confs)),), lambda idx: segmentation_scores(confs[idx].sum(0))["miou"],
                   seed=seed, n_resamples=1000, vectorized=False)  # fmt: skip
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.std_error == pytest.approx(ref.standard_error, rel=1e-9)
    assert ours.estimate == segmentation_scores(confs.sum(0))["miou"]
    assert ours.low < ours.estimate < ours.high


def test_segmentation_cell_cis_and_sidecar_round_trip(tmp_path):
    trials = [_confusions(4), _confusions(4, trial=1)]
    samples = segmentation_samples([_counts(c) for c in trials], [np.sum(c, axis=0) for c in trials])
    spec = write_sidecar(tmp_path / "seg.json", samples)
    assert spec["kind"] == "pixel_counts" and spec["n"] == 30
    loaded = read_sidecar(tmp_path / "seg.json", spec)
    assert loaded.arrays["intersection@trial1"].shape == (30, 6)
    main, others, why = cell_cis(samples, "miou", seed=1)
    assert why is None and set(others) == {"pixel_accuracy", "mean_accuracy"}
    again = bootstrap_ci(loaded.arrays, loaded.spec("miou"), seed=1)
    assert main == again.to_dict()
    assert main["low"] < main["estimate"] < main["high"] and main["n"] == 30


# --------------------------------------------------------------------------------------- detection
def _synthetic(seed: int = 0, n: int = 40, categories: int = 4, decimals: int | None = None):
    """A COCO ground truth (some crowd objects) and detections: jittered objects, wrong classes,
    random boxes, uniform scores (rounded to ``decimals`` to make ties)."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 3 * i, "width": 200, "height": 150} for i in range(n)]
    cats = [{"id": 7 + 2 * k, "name": f"c{k}"} for k in range(categories)]
    anns, dets = [], []

    def det(image_id, k, box):
        s = float(rng.random())
        dets.append({"image_id": image_id, "category_id": cats[k]["id"], "bbox": [float(v) for v in box],
                     "score": round(s, decimals) if decimals is not None else s})  # fmt: skip

    for im in images:
        for _ in range(int(rng.integers(0, 5))):
            k = int(rng.integers(categories))
            w, h = rng.uniform(8, 80, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 150 - h)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cats[k]["id"],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.08)})  # fmt: skip
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(scale=0.08, size=4) * [w, h, w, h]
                kk = k if rng.random() < 0.85 else int(rng.integers(categories))
                det(im["id"], kk, [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])])
        for _ in range(int(rng.integers(0, 3))):
            w, h = rng.uniform(5, 60, 2)
            det(im["id"], int(rng.integers(categories)), [rng.uniform(0, 140), rng.uniform(0, 90), w, h])
    return {"images": images, "categories": cats, "annotations": anns}, dets


def _evaluated(gt: dict, dets: list[dict], iou_type: str = "bbox") -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iouType=iou_type)
        ev.evaluate()
    return ev


def _cocoeval_on(ev: COCOeval, idx) -> np.ndarray:
    """pycocotools' own accumulate + summarize over the image list ``idx`` (repeats allowed, in
    this order): its per-image evaluations rearranged, image ids renamed 0..len-1."""
    r = copy.copy(ev)
    p, pe = copy.deepcopy(ev.params), copy.deepcopy(ev._paramsEval)
    n, n_area, n_cat = len(p.imgIds), len(p.areaRng), len(p.catIds)
    r.evalImgs = [
        ev.evalImgs[(k * n_area + a) * n + int(i)] for k in range(n_cat) for a in range(n_area) for i in idx
    ]
    p.imgIds = pe.imgIds = list(range(len(idx)))
    r.params, r._paramsEval = p, pe
    with contextlib.redirect_stdout(io.StringIO()):
        r.accumulate()
        r.summarize()
    return np.asarray(r.stats)


def _arrays(o: dict) -> dict:
    return {
        "gold": o["gold"],
        "score": o["score"],
        "category": o["category"],
        "match": o["match"],
        "ignore": o["ignore"],
    }


SPEC = {
    "AP": ("coco_ap", ["gold", "score", "category", "match", "ignore"]),
    "AP50": ("coco_ap50", ["gold", "score", "category", "match", "ignore"]),
    "AP75": ("coco_ap75", ["gold", "score", "category", "match", "ignore"]),
}


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct-scores", "tied-scores"])
def test_detection_ap_from_image_outcomes_equals_cocoeval_exactly(decimals):
    gt, dets = _synthetic(0, decimals=decimals)
    outcomes: dict = {}
    stats = coco_evaluate(gt, dets, outcomes=outcomes)
    assert 0.1 < stats["AP"] < 0.9 and outcomes["gold"].sum() > 40 and outcomes["ignore"].any()
    arrays = _arrays(outcomes)
    for metric, spec in SPEC.items():
        assert evaluate_statistic(arrays, spec) == stats[metric], metric
    ev = _evaluated(gt, dets)
    assert outcomes["image_ids"] == ev.params.imgIds
    whole = _cocoeval_on(ev, range(len(ev.params.imgIds)))  # the reference helper is COCOeval itself
    np.testing.assert_array_equal(np.where(whole < 0, np.nan, whole), [stats[k] for k in (
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")])  # fmt: skip


def test_detection_resamples_equal_cocoeval_on_the_resampled_images():
    gt, dets = _synthetic(1)
    ev = _evaluated(gt, dets)
    arrays = _arrays(image_outcomes(ev))
    n = len(ev.params.imgIds)
    idx = np.random.default_rng(2).integers(0, n, (25, n))
    c = np.zeros((25, n))
    np.add.at(c, (np.arange(25)[:, None], idx), 1)
    from clbench.stats.dense import coco_ap, coco_ap50, coco_ap75

    parts = [arrays[k] for k in ("score", "category", "match", "ignore")]
    want = np.array([_cocoeval_on(ev, i)[:3] for i in idx])
    np.testing.assert_array_equal(coco_ap(c, arrays["gold"], *parts), want[:, 0])
    np.testing.assert_array_equal(coco_ap50(c, arrays["gold"], *parts), want[:, 1])
    np.testing.assert_array_equal(coco_ap75(c, arrays["gold"], *parts), want[:, 2])


def test_detection_ci_equals_scipy_with_cocoeval_as_the_statistic():
    gt, dets = _synthetic(3, n=30)
    ev = _evaluated(gt, dets)
    arrays = _arrays(image_outcomes(ev))
    ours = bootstrap_ci(arrays, SPEC["AP"], seed=5, n_resamples=200)
    ref = scipy_ci((np.arange(30),), lambda idx: _cocoeval_on(ev, idx)[0], seed=5, n_resamples=200,
                   vectorized=False)  # fmt: skip
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.low < ours.estimate < ours.high and ours.n_resamples == 200


def test_detection_samples_of_trials_cell_cis_and_paired_difference(tmp_path):
    gt, _ = _synthetic(4)
    trials, stats = [], []
    for t in range(2):  # two "trials": other detections on the same images
        _, dets = _synthetic(4 + 10 * t)
        per_iou = {"bbox": {}}
        stats.append(coco_evaluate(gt, [d for d in dets if d["image_id"] in {i["id"] for i in gt["images"]}],
                                   outcomes=per_iou["bbox"]))  # fmt: skip
        trials.append(per_iou)
    samples = detection_samples(trials, ("bbox",))
    assert samples["kind"] == "detections" and set(samples["metrics"]) == {
        "bbox_AP",
        "bbox_AP50",
        "bbox_AP75",
    }
    spec = write_sidecar(tmp_path / "det.json", samples)
    loaded = read_sidecar(tmp_path / "det.json", spec)
    for metric in ("AP", "AP50"):
        want = float(np.nanmean([s[metric] for s in stats]))  # the task's mean over trials
        assert evaluate_statistic(loaded.arrays, loaded.spec(f"bbox_{metric}")) == want
    main, others, why = cell_cis(samples, "bbox_AP", seed=0, n_resamples=300)
    assert why is None and others == {}  # AP50/AP75 are not cheap: main metric only
    assert main["estimate"] == float(np.mean([s["AP"] for s in stats]))
    assert main["low"] < main["estimate"] < main["high"] and main["n_resamples"] == 300
    # the images are resampled jointly for two cells over the same images (clbench compare)
    parts = ("score", "category", "match", "ignore")
    a = {"gold": loaded.arrays["gold"], **{p: loaded.arrays[f"bbox_{p}"] for p in parts}}
    b = {"gold": loaded.arrays["gold"], **{p: loaded.arrays[f"bbox_{p}@trial1"] for p in parts}}
    d = paired_difference(a, b, ("coco_ap", list(SPEC["AP"][1])), n_resamples=200)
    assert d.delta == pytest.approx(stats[1]["AP"] - stats[0]["AP"], abs=1e-15)
    dist = bootstrap_distributions(a, {"a": SPEC["AP"]}, n_resamples=200)["a"]
    assert np.isfinite(dist).all() and dist.std() > 0


@pytest.fixture
def coco_mini(shared_data):
    from clbench.datasets.coco_instances import CocoDataset
    from clbench.options import parse_options

    root = shared_data / "coco-mini"
    ann = root / "annotations" / "instances_val2017.json"
    opts = parse_options(CocoDataset.Options, {"images": str(root / "val2017"), "annotations": str(ann)})
    return CocoDataset(opts, name="test", root=None, seed=0), ann


def test_coco_mini_perturbed_predictions_ap_exact_and_resamples(coco_mini):
    """Real COCO ground truth (crowd objects, 80 categories) and perturbed objects as detections."""
    ds, ann_file = coco_mini
    coco = COCO(str(ann_file))
    rng = np.random.default_rng(0)
    dets = []
    for item in ds.split("train").items:
        anns = [a for a in coco.imgToAnns[item.image_id] if not a["iscrowd"]]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = np.array([ds.category_ids.index(a["category_id"]) for a in anns], dtype=np.int64)
        keep = rng.random(len(anns)) > 0.2
        boxes, labels = boxes[keep], labels[keep]
        wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        boxes = boxes + rng.normal(scale=0.1, size=boxes.shape) * wh
        extra = int(rng.integers(0, 4))
        x1, y1 = rng.uniform(0, item.width * 0.7, extra), rng.uniform(0, item.height * 0.7, extra)
        fb = np.stack([x1, y1, x1 + rng.uniform(5, item.width * 0.3, extra),
                       y1 + rng.uniform(5, item.height * 0.3, extra)], 1)  # fmt: skip
        boxes = np.concatenate([boxes, fb])
        labels = np.concatenate([labels, rng.integers(0, len(ds.category_ids), extra)])
        dets += predictions_to_coco(item.image_id, boxes=boxes, scores=rng.random(len(boxes)), labels=labels,
                                    category_ids=ds.category_ids)  # fmt: skip
    gt = ds.coco_ground_truth("train")
    outcomes: dict = {}
    stats = coco_evaluate(gt, dets, outcomes=outcomes)
    arrays = _arrays(outcomes)
    assert 0.05 < stats["AP"] < 0.95
    for metric, spec in SPEC.items():
        assert evaluate_statistic(arrays, spec) == stats[metric], metric
    ev = _evaluated(gt, dets)
    n = len(ev.params.imgIds)
    idx = np.random.default_rng(1).integers(0, n, (5, n))
    c = np.zeros((5, n))
    np.add.at(c, (np.arange(5)[:, None], idx), 1)
    from clbench.stats.dense import coco_ap

    parts = [arrays[k] for k in ("score", "category", "match", "ignore")]
    np.testing.assert_array_equal(coco_ap(c, arrays["gold"], *parts), [_cocoeval_on(ev, i)[0] for i in idx])


# ------------------------------------------------------------------------------------- diagnostics
def test_diagnostics_records_why_it_has_no_ci(tmp_path):
    out = DiagnosticsTask.evaluate(np.random.default_rng(0).normal(size=(50, 6)), None, {"k": 3})
    assert set(out.samples) == {"unavailable"} and "rankme" in out.samples["unavailable"]
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""
        suite: diag
        device: cpu
        encoders:
          pixels: {type: identity}
        datasets:
          syn: {type: synthetic, kind: vectors, n_train: 20, n_test: 30, num_classes: 3, dim: 5}
        tasks:
          - {name: syn-diag, type: diagnostics, dataset: syn, max_samples: 30}
    """))  # fmt: skip
    from clbench.api import run_suite

    assert run_suite(tmp_path / "suite.yaml").ok
    r = json.loads((tmp_path / "results/diag/pixels/syn-diag.json").read_text())
    assert r["ci"] is None and r["samples"] is None and "rankme" in r["ci_reason"]


def test_two_dimensional_sample_rows_are_validated():
    with pytest.raises(ValueError, match="different lengths"):
        make_samples("pixel_counts", {"a": np.ones((3, 2)), "b": np.ones((4, 2))}, {})
    s = make_samples("pixel_counts", {"gold": np.ones((3, 2), np.int64)}, {})
    assert s["arrays"]["gold"].shape == (3, 2)


# --------------------------------------------------------------------------- segmentation, end to end
def test_segmentation_run_writes_per_image_counts_that_reproduce_miou(tmp_path):
    """A tiny ``clbench run``: the sidecar's per-image counts (from evaluate_model) give the
    stored mIoU exactly, and the stored CI is recomputable from the sidecar."""
    from PIL import Image

    from clbench.api import run_suite
    from clbench.results.store import read_result
    from clbench.stats import load_samples

    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    for split in ("train", "test"):
        for i in range(5):
            labels = np.kron(rng.integers(0, 3, size=(2, 2)), np.ones((16, 16), dtype=np.int64))
            image = np.clip(colours[labels] + rng.normal(0, 20, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            for sub, arr in (("img", image), ("ann", labels.astype(np.uint8))):
                (tmp_path / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(tmp_path / split / sub / f"{i:03d}.png")
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""
        suite: seg
        device: cpu
        encoders:
          r18: {type: timm, model: resnet18, pretrained: false}
        datasets:
          colours: {type: mask-folder, train_images: train/img, train_masks: train/ann, test_images: test/img,
                    test_masks: test/ann, classes: [red, green, blue]}
        tasks:
          - {name: lin, type: segmentation, dataset: colours, head: linear, levels: c2, iterations: 2,
             batch_size: 2, image_size: 32, crop_size: 32, num_workers: 0, trials: 2}
    """))  # fmt: skip
    assert run_suite(tmp_path / "suite.yaml").ok
    path = tmp_path / "results/seg/r18/lin.json"
    result = read_result(path)
    s = load_samples(result, path)
    assert s.kind == "pixel_counts" and s.n == 5 and s.arrays["gold"].shape == (5, 3)
    assert s.arrays["gold"].sum() == result["details"]["pixels_scored"] == 5 * 32 * 32
    assert evaluate_statistic(s.arrays, s.spec("miou")) == result["metrics"]["miou"]
    assert [t["miou"] for t in result["details"]["trials"]] == [
        evaluate_statistic(s.arrays, ("miou", ["gold", *names])) for names in
        (["intersection", "union"], ["intersection@trial1", "union@trial1"])
    ]  # fmt: skip
    main = result["ci"]["main"]
    assert main["estimate"] == result["metrics"]["miou"] and main["low"] <= main["estimate"] <= main["high"]
    again = bootstrap_ci(s.arrays, s.spec("miou"), seed=main["seed"], n_resamples=main["n_resamples"])
    assert (again.low, again.high) == (main["low"], main["high"])
    assert set(result["metrics_ci"]) == {"pixel_accuracy", "mean_accuracy"}


# ------------------------------------------------------------------------------ detection, end to end
def test_detection_task_samples_reproduce_its_metrics(shared_data, tmp_path):
    """The detection task (two tiny Mask R-CNN trials on two coco128 images, as in
    test_detection_train): its per-image outcomes give bbox_AP / segm_AP exactly."""
    import torch

    from clbench.datasets.coco_instances import CocoDataset
    from clbench.encoders.timm_encoder import TimmEncoder
    from clbench.options import parse_options
    from clbench.tasks.base import TaskContext
    from clbench.tasks.detection import DetectionOptions, DetectionTask

    data = json.loads((shared_data / "coco128/annotations/instances_coco128.json").read_text())
    data["images"] = [im for im in data["images"] if im["id"] in (42, 581)]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (42, 581)]
    (tmp_path / "subset.json").write_text(json.dumps(data))
    ds = CocoDataset(
        parse_options(CocoDataset.Options, {"images": str(shared_data / "coco128/images"),
                                            "annotations": str(tmp_path / "subset.json")}),
        name="c", root=None, seed=0,
    )  # fmt: skip
    opts = parse_options(DetectionOptions, {
        "model": "mask_rcnn", "iterations": 2, "batch_size": 2, "train_size": [64], "max_size": 96,
        "test_size": 64, "roi_batch_size": 8, "num_workers": 0, "trials": 2, "eval_split": "train",
        "warmup_iters": 1,
    })  # fmt: skip
    encoder = TimmEncoder(parse_options(TimmEncoder.Options, {"model": "resnet18"}), name="enc")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = DetectionTask(opts, name="det").run(
            TaskContext(features=None, dataset=ds, encoder=encoder, device="cpu", seed=5)
        )
    finally:
        torch.set_num_threads(threads)
    s = out.samples
    assert s["kind"] == "detections" and s["arrays"]["gold"].shape[0] == 2
    assert "segm_match@trial1" in s["arrays"]
    for metric in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75"):
        got = evaluate_statistic(s["arrays"], s["metrics"][metric])
        assert got == out.metrics[metric] or (np.isnan(got) and np.isnan(out.metrics[metric])), metric
    main, _, why = cell_cis(s, out.main_metric, n_resamples=50)
    assert why is None and main["n_resamples"] == 50
