"""Weighted k-NN (clbench.metrics.knn, clbench.tasks.knn) against independent implementations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clbench.errors import ConfigError, DataError
from clbench.metrics.classification import rank_classes, topk_accuracy
from clbench.metrics.knn import knn_metrics, knn_predict
from clbench.options import parse_options
from clbench.tasks.base import TaskContext
from clbench.tasks.knn import KnnOptions, KnnTask


def reference_knn_ranked(train_x, train_y, test_x, *, k, t, num_classes, topn=5):
    """The InstDisc/DINO rule in float64 NumPy: full similarity matrix, full sorts, stable ties."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = b.astype(np.float64) @ a.astype(np.float64).T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, nn, axis=1) / t)
    votes = np.zeros((len(test_x), num_classes))
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nn]), weights)
    return np.argsort(-votes, axis=1, kind="stable")[:, : min(topn, num_classes)]


def clustered(seed=0, n_train=500, n_test=137, dim=32, num_classes=10, spread=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    y = rng.integers(0, num_classes, size=n_train + n_test)
    x = (centers[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("ks", [[1, 5, 20], [3, 50], [200]])
@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 137, 1000, None])
def test_matches_numpy_reference(ks, t, chunk_size):
    xtr, ytr, xte, _ = clustered()
    pred = knn_predict(xtr, ytr, xte, ks=ks, temperature=t, num_classes=10, chunk_size=chunk_size)
    assert sorted(pred) == sorted(ks)
    for k in ks:
        ref = reference_knn_ranked(xtr, ytr, xte, k=k, t=t, num_classes=10)
        assert pred[k].dtype == np.int64 and pred[k].shape == (137, 5)
        np.testing.assert_array_equal(pred[k], ref)


@pytest.mark.parametrize("ks", [[1, 10], [20], [100, 200]])
def test_matches_numpy_reference_on_a_larger_training_set(ks):
    # large enough for the block-pruned top-k (see knn._topk_unsorted), with a ragged tail
    xtr, ytr, xte, _ = clustered(seed=5, n_train=7003, n_test=300, spread=2.0)
    pred = knn_predict(xtr, ytr, xte, ks=ks, temperature=0.07, num_classes=10, chunk_size=128)
    for k in ks:
        np.testing.assert_array_equal(
            pred[k], reference_knn_ranked(xtr, ytr, xte, k=k, t=0.07, num_classes=10)
        )


@pytest.mark.parametrize("n", [1000, 5003, 8011])
@pytest.mark.parametrize("k", [1, 20, 65, 200])
def test_block_pruned_topk_is_exact(n, k):
    import torch

    from clbench.metrics.knn import _topk_unsorted

    gen = torch.Generator().manual_seed(n + k)
    sims = torch.randn(37, n, generator=gen)
    sims[:, ::3] = torch.round(sims[:, ::3] * 4) / 4  # many exact ties
    values, cols = _topk_unsorted(sims, k)
    expected = sims.topk(k, dim=1).values
    torch.testing.assert_close(values.sort(dim=1, descending=True).values, expected, rtol=0, atol=0)
    torch.testing.assert_close(sims.gather(1, cols), values, rtol=0, atol=0)
    assert all(len(set(row.tolist())) == k for row in cols)  # distinct columns


def test_top5_and_top1_accuracy_match_reference():
    xtr, ytr, xte, yte = clustered(seed=3, num_classes=12, spread=2.5)
    got = knn_metrics(xtr, ytr, xte, yte, ks=[10, 20], temperature=0.1, chunk_size=50)
    for k in (10, 20):
        ref = reference_knn_ranked(xtr, ytr, xte, k=k, t=0.1, num_classes=12)
        assert got[k]["top1"] == pytest.approx(float((ref[:, 0] == yte).mean()))
        assert got[k]["top5"] == pytest.approx(float((ref == yte[:, None]).any(axis=1).mean()))
        assert got[k]["top1"] < got[k]["top5"] < 1.0  # a problem where both are informative


def test_agrees_with_sklearn_brute_force_cosine_knn():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, xte, _ = clustered(seed=1, spread=2.0)
    t = 0.07
    clf = KNeighborsClassifier(
        n_neighbors=20, algorithm="brute", metric="cosine", weights=lambda d: np.exp((1 - d) / t)
    ).fit(xtr, ytr)
    ours = knn_predict(xtr, ytr, xte, ks=[20], temperature=t, num_classes=10)[20][:, 0]
    np.testing.assert_array_equal(ours, clf.predict(xte))


def test_scale_invariant_and_accepts_tensors_and_read_only_arrays():
    import torch

    xtr, ytr, xte, _ = clustered(seed=2)
    base = knn_predict(xtr, ytr, xte, ks=[5], temperature=0.07)[5]
    scaled = xtr * np.random.default_rng(0).uniform(0.1, 10, size=(len(xtr), 1)).astype(np.float32)
    frozen = xte.copy()
    frozen.setflags(write=False)
    again = knn_predict(torch.from_numpy(scaled), torch.from_numpy(ytr), frozen, ks=[5], temperature=0.07)[5]
    np.testing.assert_array_equal(base, again)


def test_tiny_temperature_stays_finite_and_acts_as_one_nn():
    xtr, ytr, xte, _ = clustered(seed=4)
    got = knn_predict(xtr, ytr, xte, ks=[50], temperature=1e-4)[50][:, 0]
    one_nn = knn_predict(xtr, ytr, xte, ks=[1], temperature=0.07)[1][:, 0]
    np.testing.assert_array_equal(got, one_nn)


def test_fewer_classes_than_topn():
    xtr, ytr, xte, _ = clustered(num_classes=3)
    pred = knn_predict(xtr, ytr, xte, ks=[10], temperature=0.07, num_classes=3)[10]
    assert pred.shape == (137, 3)
    assert (np.sort(pred, axis=1) == np.arange(3)).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": [0]}, "positive"),
        ({"ks": []}, "non-empty"),
        ({"ks": [600]}, "exceeds"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_knn_predict_rejects_bad_arguments(kwargs, match):
    xtr, ytr, xte, _ = clustered()
    with pytest.raises(ValueError, match=match):
        knn_predict(xtr, ytr, xte, **{"ks": [5], "temperature": 0.07, **kwargs})


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_cuda_matches_cpu():
    xtr, ytr, xte, _ = clustered(n_train=3000, n_test=700)
    cpu = knn_predict(xtr, ytr, xte, ks=[10, 20], temperature=0.07, chunk_size=100)
    gpu = knn_predict(xtr, ytr, xte, ks=[10, 20], temperature=0.07, device="cuda")
    for k in (10, 20):
        assert (cpu[k][:, 0] == gpu[k][:, 0]).mean() > 0.995


# ------------------------------------------------------------------------------ classification metrics
def test_topk_accuracy_scores_and_ranked_agree_and_match_sklearn():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 8))
    labels = rng.integers(0, 8, size=300)
    for k in (1, 2, 5, 8):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(8))
        assert topk_accuracy(scores, labels, k) == pytest.approx(expected)
        assert topk_accuracy(rank_classes(scores, 8), labels, k) == pytest.approx(expected)


def test_topk_accuracy_breaks_ties_towards_lower_class():
    scores = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert topk_accuracy(scores, np.array([0, 2]), 1) == 0.5
    assert rank_classes(scores, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="k must be"):
        topk_accuracy(rank_classes(scores, 2), np.array([0, 2]), 3)


# ------------------------------------------------------------------------------------------- task
def test_task_metrics_and_main_metric():
    xtr, ytr, xte, yte = clustered(spread=2.5)
    out = KnnTask.evaluate(xtr, ytr, xte, yte, {"k": [10, 20, 100], "temperature": 0.1})
    assert out.main_metric == "top1@k20"
    assert set(out.metrics) == {f"top{n}@k{k}" for n in (1, 5) for k in (10, 20, 100)}
    ref = reference_knn_ranked(xtr, ytr, xte, k=20, t=0.1, num_classes=10)
    assert out.metrics["top1@k20"] == pytest.approx(float((ref[:, 0] == yte).mean()))
    assert out.timings["fit_s"] >= 0 and out.details["num_classes"] == 10
    assert KnnTask.main_metric(KnnOptions(k=[5, 50])) == "top1@k5"
    assert KnnTask.evaluate(xtr, ytr, xte, yte).main_metric == "top1@k20"  # defaults


def test_task_run_reads_features_from_context():
    xtr, ytr, xte, yte = clustered()
    feats = {"train": (xtr, ytr), "test": (xte, yte)}
    ctx = TaskContext(features=feats.__getitem__, dataset=None, encoder=None, device="cpu", seed=3)
    out = KnnTask(KnnOptions(k=[5]), name="knn").run(ctx)
    assert out.main_metric == "top1@k5"
    assert out.metrics == KnnTask.evaluate(xtr, ytr, xte, yte, KnnOptions(k=[5])).metrics


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"k": [0, 20]}, "k"),
        ({"k": []}, "at least one"),
        ({"k": [20, 20]}, "repeated"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"kk": [20]}, "did you mean 'k'"),
    ],
)
def test_options_reject_nonsense(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_options(KnnOptions, raw)
    xtr, ytr, xte, yte = clustered()
    with pytest.raises(ConfigError, match=match):
        KnnTask.evaluate(xtr, ytr, xte, yte, raw)


def test_data_errors_are_clear():
    xtr, ytr, xte, yte = clustered()
    with pytest.raises(DataError, match="never occur in the train split"):
        KnnTask.evaluate(xtr, ytr, xte, np.where(yte == 3, 11, yte), {"k": [5]})
    with pytest.raises(DataError, match="no labels"):
        KnnTask.evaluate(xtr, None, xte, yte, {"k": [5]})
    with pytest.raises(DataError, match="dimensions"):
        KnnTask.evaluate(xtr, ytr, xte[:, :5], yte, {"k": [5]})
    with pytest.raises(DataError, match="exceeds the 500 training samples"):
        KnnTask.evaluate(xtr, ytr, xte, yte, {"k": [1000]})
    with pytest.raises(DataError, match="integers"):
        KnnTask.evaluate(xtr, ytr.astype(float), xte, yte, {"k": [5]})
    bad = xte.copy()
    bad[4, 2] = np.nan
    with pytest.raises(DataError, match="row 4"):
        KnnTask.evaluate(xtr, ytr, bad, yte, {"k": [5]})


def test_task_modules_import_without_torch():
    code = "import sys, clbench.tasks.knn, clbench.tasks.linear_probe; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
