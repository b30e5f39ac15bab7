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

PRECISIONS = ["fp32", "bf16-prefilter"]


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


@pytest.mark.parametrize("precision", ["fp32", "bf16-prefilter", "auto"])
@pytest.mark.parametrize("ks", [[1, 5, 20], [3, 50], [200]])
@pytest.mark.parametrize("t", [0.07, 0.5])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 137, 1000, None])
def test_matches_numpy_reference(ks, t, chunk_size, precision):
    xtr, ytr, xte, _ = clustered()
    pred = knn_predict(
        xtr, ytr, xte, ks=ks, temperature=t, num_classes=10, chunk_size=chunk_size, precision=precision
    )
    assert sorted(pred) == sorted(ks)
    for k in ks:
        ref = reference_knn_ranked(xtr, ytr, xte, k=k, t=t, num_classes=10)
        assert pred[k].dtype == np.int64 and pred[k].shape == (137, 5)
        np.testing.assert_array_equal(pred[k], ref)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("ks", [[1, 10], [20], [100, 200]])
def test_matches_numpy_reference_on_a_larger_training_set(ks, precision):
    # large enough for the block-pruned candidate search (knn._select_candidates), ragged tail
    xtr, ytr, xte, _ = clustered(seed=5, n_train=7003, n_test=300, spread=2.0)
    pred = knn_predict(
        xtr, ytr, xte, ks=ks, temperature=0.07, num_classes=10, chunk_size=128, precision=precision
    )
    for k in ks:
        np.testing.assert_array_equal(
            pred[k], reference_knn_ranked(xtr, ytr, xte, k=k, t=0.07, num_classes=10)
        )


@pytest.mark.parametrize("shift", [0.0, -5.0])  # -5: no positive score (bf16's float fallback)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("n", [1000, 5003, 8011, 40000])
@pytest.mark.parametrize("k", [1, 20, 65, 200])
def test_candidate_selection_keeps_every_possible_neighbour(n, k, dtype, shift):
    import torch

    from clbench.metrics.knn import _select_candidates

    gen = torch.Generator().manual_seed(n + k)
    scores = torch.randn(37, n, generator=gen)
    scores[:, ::3] = torch.round(scores[:, ::3] * 4) / 4  # many exact ties
    scores[5] = -scores[5].abs()  # a row of negative scores among positive ones
    scores = (scores + shift).to(getattr(torch, dtype))
    for c, rel in [(0.0, 0.0), (0.01, 0.0), (0.003, 2.0**-8)]:
        rows, cols, o = _select_candidates(scores, k, torch.full((37,), c, dtype=torch.float64), rel)
        assert torch.equal(scores[rows, cols], o)
        pairs = set(zip(rows.tolist(), cols.tolist(), strict=True))
        assert len(pairs) == len(rows)  # no pair twice
        kth = scores.float().topk(k, dim=1).values[:, -1].double()
        # what any row whose exact score can reach the k-th largest must satisfy: up(o) >= lo(kth)
        s64 = scores.double()
        need = s64 + rel * s64.abs() + c >= (kth - rel * kth.abs() - c)[:, None]
        want = set(zip(*(t.tolist() for t in need.nonzero(as_tuple=True)), strict=True))
        assert want <= pairs
        assert (torch.bincount(rows, minlength=37) >= k).all()
        if c == 0:  # and not much more: the block-pruned bound is close to the exact k-th
            assert len(pairs) <= 2 * len(want) + 37 * k


# --------------------------------------------------------------- precisions: same neighbours, proven
def reference_neighbours(train_x, test_x):
    """All float64 similarities of the (float32) normalised features, and the full ranking with
    equal similarities by lower index (stable sort)."""
    a = train_x.astype(np.float64)
    b = test_x.astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sims = b @ a.T
    return sims, np.argsort(-sims, axis=1, kind="stable")


def assert_neighbours_match_reference(sims, idx, train_x, test_x, *, tol=1e-6):
    """Same neighbour similarities as the float64 reference, and the same indices wherever the
    reference has no near-tie (within ``tol``, below float32's resolution) at that rank; exact
    ties must go to the lower index, as in the reference."""
    k = idx.shape[1]
    ref, order = reference_neighbours(train_x, test_x)
    ref_top = np.take_along_axis(ref, order[:, : k + 1], axis=1)
    np.testing.assert_allclose(sims, ref_top[:, :k], rtol=0, atol=tol)
    np.testing.assert_allclose(np.take_along_axis(ref, idx, axis=1), ref_top[:, :k], rtol=0, atol=tol)
    gaps = -np.diff(ref_top, axis=1)  # [M, k]: gap to the next rank
    before = np.concatenate([np.full((len(idx), 1), np.inf), gaps[:, :-1]], axis=1)
    safe = np.minimum(before, gaps) > tol
    np.testing.assert_array_equal(idx[safe], order[:, :k][safe])


def ties_data(seed=0, n_train=4000, n_test=120, dim=16, ones=4):
    """0/1 vectors with the same number of ones: similarities are exact multiples of 1/ones, in
    float32 as in float64, so the top-k boundary is full of exact ties between distinct rows."""
    rng = np.random.default_rng(seed)

    def draw(n):
        x = np.zeros((n, dim), dtype=np.float32)
        for row in x:
            row[rng.choice(dim, ones, replace=False)] = 1
        return x

    return draw(n_train), draw(n_test)


def duplicates_data(seed=0, copies=4):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1000, 32)).astype(np.float32)
    train = np.repeat(base, copies, axis=0)[rng.permutation(1000 * copies)]
    test = np.concatenate([base[:60], base[60:120] + 0.3 * rng.normal(size=(60, 32)).astype(np.float32)])
    return train, test


def near_ties_data(seed=0):
    """Rows a hair apart (differences ~1e-4, inside bf16's error, far above float32's): each
    query's bf16 window holds hundreds of rows, so it is redone in float32."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(6, 64))
    y = rng.integers(0, 6, size=3100)
    x = (protos[y] + 0.01 * rng.normal(size=(3100, 64))).astype(np.float32)
    return x[:3000], x[3000:]


def gaussian_data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4000, 48)).astype(np.float32), rng.normal(size=(150, 48)).astype(np.float32)


def clustered_data(seed=0):
    xtr, _, xte, _ = clustered(seed=seed, n_train=4000, n_test=150, dim=48, spread=2.0)
    return xtr, xte


DATASETS = {
    "gaussian": gaussian_data,
    "clustered": clustered_data,
    "exact_ties": ties_data,
    "duplicates": duplicates_data,
    "near_ties": near_ties_data,
}


@pytest.mark.parametrize("k", [1, 20, 60])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_bf16_prefilter_finds_exactly_the_fp32_neighbours(name, k):
    from clbench.metrics.knn import knn_neighbours

    train, test = DATASETS[name]()
    got = {}
    for precision in PRECISIONS:
        stats = {}
        got[precision] = knn_neighbours(train, test, k, precision=precision, chunk_size=64, stats=stats)
        assert stats["precision"] == precision and stats["candidates_per_row"] >= k
        if name == "near_ties" and precision == "bf16-prefilter" and k < 60:
            assert stats["fp32_redone_rows"] == len(test)  # the fallback ran (and is counted)
        elif name in ("gaussian", "clustered"):
            assert stats["fp32_redone_rows"] == 0
    np.testing.assert_array_equal(got["bf16-prefilter"][1], got["fp32"][1])  # bit for bit
    np.testing.assert_array_equal(got["bf16-prefilter"][0], got["fp32"][0])
    sims, idx = got["fp32"]
    assert_neighbours_match_reference(sims, idx, train, test)
    if name in ("exact_ties", "duplicates"):  # exact ties: every index as the stable reference's
        np.testing.assert_array_equal(idx, reference_neighbours(train, test)[1][:, :k])
    # chunking and an unrelated larger k do not change a row's neighbours
    again = knn_neighbours(train, test, max(k, 61), precision="bf16-prefilter", chunk_size=7)
    np.testing.assert_array_equal(again[1][:, :k], idx)


def test_exact_ties_resolve_to_the_lower_train_index():
    from clbench.metrics.knn import knn_neighbours

    rng = np.random.default_rng(3)
    base = rng.normal(size=(500, 24)).astype(np.float32)
    # rows i, 500 + i, 1000 + i normalise to the same float32 vector (a power-of-two scale is exact)
    train = np.concatenate([base, base * 4, base])
    for precision in PRECISIONS:
        sims, idx = knn_neighbours(train, base[:40], 3, precision=precision)
        np.testing.assert_array_equal(idx, np.arange(40)[:, None] + np.array([0, 500, 1000]))
        np.testing.assert_allclose(sims, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian", "clustered", "exact_ties"])
def test_predictions_identical_across_precisions(name):
    train, test = DATASETS[name]()
    y = np.random.default_rng(1).integers(0, 7, size=len(train))
    preds = {
        p: knn_predict(train, y, test, ks=[1, 10, 50], temperature=0.07, precision=p) for p in PRECISIONS
    }
    for k in (1, 10, 50):
        np.testing.assert_array_equal(preds["fp32"][k], preds["bf16-prefilter"][k])
    if name != "exact_ties":  # (exactly tied class votes may round differently in float64)
        for k in (1, 10, 50):
            ref = reference_knn_ranked(train, y, test, k=k, t=0.07, num_classes=7)
            np.testing.assert_array_equal(preds["bf16-prefilter"][k], ref)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_error_bound_holds_on_every_pair_and_is_not_vacuous(precision):
    import torch

    from clbench.metrics import knn

    for name in ("gaussian", "near_ties", "exact_ties"):
        train_np, test_np = DATASETS[name]()
        train, b, tr, r_b = knn._prepare(train_np[:1500], "cpu", True)
        test, a, te, r_a = knn._prepare(test_np[:60], "cpu", True)
        ref = torch.nn.functional.normalize(torch.from_numpy(train_np[:1500]), dim=1)
        torch.testing.assert_close(train, ref, rtol=0, atol=1e-6)
        assert torch.equal(tr, train.bfloat16()) and torch.equal(te, test.bfloat16())
        assert (torch.linalg.vector_norm(train.double(), dim=1) <= b).all() and b < 1 + 1e-4
        assert (r_a >= torch.linalg.vector_norm(test.double() - te.double(), dim=1)).all()
        d = train.shape[1]
        a = torch.full((len(test),), a, dtype=torch.float64)
        if precision == "fp32":
            o = (test @ train.T).double()
            c, rel = knn._error_bounds(a, b, d)
        else:
            o = (te @ tr.T).double()
            c, rel = knn._error_bounds(a, b, d, r_a, r_b.max())
        rows, cols = (torch.ones_like(o) > 0).nonzero(as_tuple=True)
        f = knn._exact_scores(train, test, rows, cols).double().view_as(o)
        err = (f - o).abs()
        bound = c[:, None] + rel * o.abs()
        assert (err <= bound).all()
        exact = torch.from_numpy(reference_neighbours(train_np[:1500], test_np[:60])[0])
        assert ((f - exact).abs() <= 2 * c[:, None]).all()
        if precision == "bf16-prefilter" and name == "gaussian":  # (0/1 vectors are exact in bf16)
            assert float((err / bound).max()) > 0.1  # the bound is within 10x of what happens


def test_a_violated_bound_raises_instead_of_answering(monkeypatch):
    import torch

    from clbench.metrics import knn

    train, test = gaussian_data()
    monkeypatch.setattr(knn, "_error_bounds", lambda a, *args: (torch.zeros_like(a), 0.0))
    with pytest.raises(RuntimeError, match="outside its proven error bound"):
        knn.knn_neighbours(train, test, 5, precision="bf16-prefilter")


def test_scores_of_a_pair_do_not_depend_on_the_other_pairs():
    import torch

    from clbench.metrics.knn import _exact_scores

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(300, 77)).astype(np.float32))
    test = torch.from_numpy(rng.normal(size=(9, 77)).astype(np.float32))
    rows_all, cols_all = (torch.ones(9, 300) > 0).nonzero(as_tuple=True)
    full = _exact_scores(train, test, rows_all, cols_all).view(9, 300)
    for seed in range(3):
        pick = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(2700, 500, replace=False)))
        part = _exact_scores(train, test, rows_all[pick], cols_all[pick])
        assert torch.equal(part, full.view(-1)[pick])
    np.testing.assert_allclose(full.numpy(), test.numpy() @ train.numpy().T, rtol=1e-5, atol=1e-5)


def test_precision_argument_is_checked_and_auto_resolves():
    from clbench.metrics.knn import resolve_precision

    assert resolve_precision("auto", "cpu") in ("fp32", "bf16-prefilter")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    xtr, ytr, xte, _ = clustered()
    with pytest.raises(ValueError, match="precision"):
        knn_predict(xtr, ytr, xte, ks=[5], precision="half")


def test_top5_and_top1_accuracy_match_reference():
    xtr, ytr, xte, yte = clustered(seed=3, num_classes=12, spread=2.5)
    got = knn_metrics(xtr, ytr, xte, yte, ks=[10, 20], temperature=0.1, chunk_size=50)
    for k in (10, 20):
        ref = reference_knn_ranked(xtr, ytr, xte, k=k, t=0.1, num_classes=12)
        assert got[k]["top1"] == pytest.approx(float((ref[:, 0] == yte).mean()))
        assert got[k]["top5"] == pytest.approx(float((ref == yte[:, None]).any(axis=1).mean()))
        assert got[k]["top1"] < got[k]["top5"] < 1.0  # a problem where both are informative


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n_train", [500, 6000])
def test_agrees_with_sklearn_brute_force_cosine_knn(precision, n_train):
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    from clbench.metrics.knn import knn_neighbours

    xtr, ytr, xte, _ = clustered(seed=1, spread=2.0, n_train=n_train)
    t = 0.07
    clf = KNeighborsClassifier(
        n_neighbors=20, algorithm="brute", metric="cosine", weights=lambda d: np.exp((1 - d) / t)
    ).fit(xtr, ytr)
    ours = knn_predict(xtr, ytr, xte, ks=[20], temperature=t, num_classes=10, precision=precision)
    np.testing.assert_array_equal(ours[20][:, 0], clf.predict(xte))
    dist, nn = NearestNeighbors(n_neighbors=20, algorithm="brute", metric="cosine").fit(xtr).kneighbors(xte)
    sims, idx = knn_neighbours(xtr, xte, 20, precision=precision)
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)
    agree = (np.sort(idx, axis=1) == np.sort(nn, axis=1)).all(axis=1)
    assert agree.mean() > 0.99  # (sklearn's float32 distances may swap a near-tie at rank 20)


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


def test_task_records_the_similarity_pass_and_precisions_agree():
    xtr, ytr, xte, yte = clustered(n_train=3000, spread=2.5)
    outs = {p: KnnTask.evaluate(xtr, ytr, xte, yte, {"k": [10, 20], "precision": p}) for p in PRECISIONS}
    for p, out in outs.items():
        assert out.details["similarity_pass"] == p
        assert out.details["candidates_per_row"] >= 20 and out.details["fp32_redone_rows"] == 0
    assert outs["fp32"].metrics == outs["bf16-prefilter"].metrics
    auto = KnnTask.evaluate(xtr, ytr, xte, yte, {"k": [10, 20]})
    assert auto.details["similarity_pass"] in PRECISIONS and auto.metrics == outs["fp32"].metrics


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
        ({"precision": "bf16"}, "precision"),
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
