"""Segmentation metrics against scikit-learn's confusion matrix and Jaccard score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, jaccard_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion

from clbench.metrics.segmentation import (
    confusion_matrix,
    miou,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
    segmentation_scores,
)


def _reference(target: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int | None):
    """sklearn on the flattened valid pixels: confusion, per-class IoU, accuracy, recall."""
    t, p = target.reshape(-1), pred.reshape(-1)
    if ignore is not None:
        keep = t != ignore
        t, p = t[keep], p[keep]
    labels = list(range(num_classes))
    conf = sk_confusion(t, p, labels=labels)
    iou = jaccard_score(t, p, labels=labels, average=None, zero_division=0)  # undefined entries masked below
    recall = recall_score(t, p, labels=labels, average=None, zero_division=0)  # undefined entries masked below
    present = np.isin(labels, np.union1d(t, p))  # classes in the target or the prediction
    in_target = np.isin(labels, t)
    return conf, iou, recall, present, in_target, accuracy_score(t, p)


def _cases():
    rng = np.random.default_rng(0)
    for seed in range(6):
        c = int(rng.integers(2, 9))
        shape = (int(rng.integers(1, 5)), int(rng.integers(5, 40)), int(rng.integers(5, 40)))
        target = rng.integers(0, c, size=shape)
        target[rng.random(shape) < 0.2] = 255
        # predictions right about half the time, so IoUs are spread over (0, 1)
        pred = np.where(rng.random(shape) < 0.5, np.clip(target, 0, c - 1), rng.integers(0, c, size=shape))
        yield f"random{seed}", target, pred, c
    # a class absent from both target and prediction (3), a class only predicted (2)
    target = np.array([[0, 0, 1, 1], [1, 255, 0, 4]])
    pred = np.array([[0, 2, 1, 1], [0, 2, 0, 4]])
    yield "absent-classes", target, pred, 5
    # every pixel ignored but one; ignored pixels carry predictions that must not count
    target = np.full((3, 3), 255)
    target[1, 1] = 2
    yield "mostly-ignored", target, np.full((3, 3), 1), 3
    # a perfect prediction
    target = rng.integers(0, 4, size=(16, 16))
    yield "perfect", target, target.copy(), 4


@pytest.mark.parametrize("name,target,pred,c", list(_cases()), ids=[c[0] for c in _cases()])
def test_metrics_equal_sklearn(name, target, pred, c):
    conf = confusion_matrix(target, pred, c, ignore_index=255)
    ref_conf, ref_iou, ref_recall, present, in_target, ref_acc = _reference(target, pred, c, 255)
    np.testing.assert_array_equal(conf, ref_conf)

    iou = per_class_iou(conf)
    np.testing.assert_array_equal(np.isnan(iou), ~present)  # absent classes are undefined
    np.testing.assert_allclose(iou[present], ref_iou[present], rtol=1e-12)
    assert miou(conf) == pytest.approx(float(np.mean(ref_iou[present])), rel=1e-12)
    assert pixel_accuracy(conf) == pytest.approx(ref_acc, rel=1e-12)

    acc = per_class_accuracy(conf)
    np.testing.assert_array_equal(np.isnan(acc), ~in_target)
    np.testing.assert_allclose(acc[in_target], ref_recall[in_target], rtol=1e-12)

    scores = segmentation_scores(conf, [f"c{i}" for i in range(c)])
    assert scores["miou"] == pytest.approx(float(np.mean(ref_iou[present])), rel=1e-12)
    assert scores["mean_accuracy"] == pytest.approx(float(np.mean(ref_recall[in_target])), rel=1e-12)
    assert list(scores["iou_by_class"]) == [f"c{i}" for i in range(c)]

    # the torch path counts the same
    conf_t = confusion_matrix(torch.as_tensor(target), torch.as_tensor(pred), c, ignore_index=255)
    assert isinstance(conf_t, torch.Tensor)
    np.testing.assert_array_equal(conf_t.numpy(), ref_conf)


def test_absent_class_is_excluded_but_predicted_only_class_counts():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 2])  # class 2 predicted, never true: IoU 0, counted; class 3 absent
    scores = segmentation_scores(confusion_matrix(target, pred, 4))
    assert scores["iou"][2] == 0.0 and np.isnan(scores["iou"][3])
    assert scores["miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert scores["mean_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # over classes in the target


def test_ignore_index_none_and_other_values():
    target = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2])
    np.testing.assert_array_equal(
        confusion_matrix(target, pred, 3, ignore_index=None), sk_confusion(target, pred, labels=[0, 1, 2])
    )
    # ignore_index may be a real class value (e.g. 0 as "unlabelled")
    conf = confusion_matrix(target, pred, 3, ignore_index=0)
    assert conf.sum() == 3 and conf[0].sum() == 0


def test_no_valid_pixel_gives_nan():
    conf = confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2), dtype=int), 3)
    assert conf.sum() == 0
    scores = segmentation_scores(conf)
    assert np.isnan(scores["miou"]) and np.isnan(scores["pixel_accuracy"]) and np.isnan(scores["mean_accuracy"])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_out_of_range_values_are_errors(as_tensor):
    wrap = torch.as_tensor if as_tensor else np.asarray
    with pytest.raises(ValueError, match=r"target values outside \[0, 3\) or the ignore index 255: 7"):
        confusion_matrix(wrap(np.array([0, 7, 255])), wrap(np.array([0, 1, 2])), 3)
    with pytest.raises(ValueError, match=r"prediction values outside \[0, 3\): 3"):
        confusion_matrix(wrap(np.array([0, 1])), wrap(np.array([0, 3])), 3)
    # an out-of-range prediction on an ignored pixel is not counted, so not an error
    confusion_matrix(wrap(np.array([0, 255])), wrap(np.array([0, 9])), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(wrap(np.zeros((2, 2), dtype=int)), wrap(np.zeros((2, 3), dtype=int)), 3)


def test_class_names_must_match():
    with pytest.raises(ValueError, match="2 class names for a 3-class"):
        segmentation_scores(np.eye(3), ["a", "b"])
