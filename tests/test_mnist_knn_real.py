"""Raw MNIST pixels with a weighted cosine k-NN reach the accuracy the literature expects.

An end-to-end check of the MNIST reader on the real shared test set (split 80/20 inside the
dataset): if images and labels were misaligned, transposed or mis-scaled, accuracy would fall
far below 0.9. The k-NN (DINO's weighted vote: weights ``exp(cos / T)``) is written out here so
the check does not depend on clbench's own k-NN task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clbench.datasets.mnist import MnistDataset, MnistOptions

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO / ".." / "shared" / "data" / "mnist"


def weighted_knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, k: int = 20, t: float = 0.07
) -> np.ndarray:
    """Class with the largest sum of ``exp(cosine / t)`` over the ``k`` nearest training rows."""
    num_classes = int(train_y.max()) + 1
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = b @ a.T  # [n_test, n_train]
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    weights = np.exp(top_sims / t)
    votes = np.zeros((len(test_x), num_classes))
    np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[top]), weights)
    return votes.argmax(1)


def test_weighted_knn_on_a_toy_problem():
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = np.array([0, 0, 1, 1])
    pred = weighted_knn_predict(train_x, train_y, np.array([[1.0, 0.05], [0.05, 1.0]]), k=3)
    assert pred.tolist() == [0, 1]


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_raw_pixel_knn_on_real_mnist():
    ds = MnistDataset(MnistOptions(path="../shared/data/mnist", test_fraction=0.2), root=REPO, seed=0)
    train, test = ds.split("train"), ds.split("test")
    assert (len(train), len(test)) == (8000, 2000)
    x_train = train.items.reshape(len(train), -1).astype(np.float32)
    x_test = test.items.reshape(len(test), -1).astype(np.float32)
    pred = weighted_knn_predict(x_train, train.labels, x_test, k=20, t=0.07)
    accuracy = float((pred == test.labels).mean())
    assert accuracy > 0.9, accuracy


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_mnist_suite_raw_pixels_knn_above_0_9(tmp_path):
    """The same check through a suite file and the runner: the product's own k-NN task."""
    from clbench.api import run_suite
    from clbench.results.store import read_result

    suite = tmp_path / "mnist.yaml"
    suite.write_text(
        "suite: mnist\n"
        "device: cpu\n"
        "encoders:\n  pixels: {type: identity}\n"
        f"datasets:\n  mnist: {{type: mnist, path: {SHARED_MNIST.resolve()}, test_fraction: 0.2}}\n"
        "tasks:\n  - {name: mnist-knn, type: knn, dataset: mnist}\n"
    )
    summary = run_suite(suite)
    assert summary.ok
    result = read_result(tmp_path / "results/mnist/pixels/mnist-knn.json")
    assert result["main_metric"] == "top1@k20"
    assert result["main_value"] > 0.9
    # the reference rule written out above gives the same accuracy on the same split
    ds = MnistDataset(MnistOptions(path=str(SHARED_MNIST.resolve()), test_fraction=0.2), root=REPO, seed=0)
    train, test = ds.split("train"), ds.split("test")
    pred = weighted_knn_predict(
        train.items.reshape(len(train), -1).astype(np.float32), train.labels,
        test.items.reshape(len(test), -1).astype(np.float32),
    )
    assert result["main_value"] == pytest.approx(float(np.mean(pred == test.labels)), abs=1e-9)
