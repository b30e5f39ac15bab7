"""Per-sample sidecars: round trip, stale/mismatch detection, and an end-to-end ``clbench run``
whose sidecars reproduce each main metric exactly and whose results carry bootstrap CIs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clbench.api import run_suite
from clbench.metrics.sts import pearson, spearman
from clbench.results.store import read_result
from clbench.stats import SamplesError, load_samples, make_samples, read_sidecar, sidecar_path, write_sidecar
from clbench.stats.bootstrap import bootstrap_ci


def _samples():
    rng = np.random.default_rng(0)
    c = rng.random(50) < 0.6
    return make_samples("correct", {"top1": c, "top5": c | (rng.random(50) < 0.5)},
                        {"top1": ("mean", ["top1"]), "top5": ("mean", ["top5"])})


def test_round_trip_and_spec(tmp_path):
    result_path = tmp_path / "enc" / "knn.json"
    samples = _samples()
    spec = write_sidecar(result_path, samples)
    assert sidecar_path(result_path) == tmp_path / "enc" / "knn.samples.npz"
    assert spec["file"] == "knn.samples.npz" and spec["kind"] == "correct" and spec["n"] == 50
    assert spec["metrics"] == {"top1": {"statistic": "mean", "arrays": ["top1"]},
                               "top5": {"statistic": "mean", "arrays": ["top5"]}}
    json.dumps(spec)  # goes into the result JSON as is
    loaded = read_sidecar(result_path, spec)
    for name, arr in samples["arrays"].items():
        np.testing.assert_array_equal(loaded.arrays[name], arr)
        assert loaded.arrays[name].dtype == arr.dtype
    # a plain npz without pickles
    with np.load(sidecar_path(result_path), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["a0", "a1"]


def test_stale_missing_and_mismatched_sidecars_are_detected(tmp_path):
    result_path = tmp_path / "knn.json"
    spec = write_sidecar(result_path, _samples())
    write_sidecar(tmp_path / "other.json", make_samples("correct", {"top1": np.ones(50, bool)},
                                                       {"top1": ("mean", ["top1"])}))
    (tmp_path / "other.samples.npz").replace(sidecar_path(result_path))  # a later run's sidecar
    with pytest.raises(SamplesError, match="stale"):
        read_sidecar(result_path, spec)
    sidecar_path(result_path).unlink()
    with pytest.raises(SamplesError, match="missing"):
        read_sidecar(result_path, spec)
    spec = write_sidecar(result_path, _samples())
    with pytest.raises(SamplesError, match="spec says"):
        read_sidecar(result_path, {**spec, "n": 49})
    with pytest.raises(SamplesError, match="not a sidecar"):
        read_sidecar(result_path, {**spec, "file": "../x.samples.npz"})
    with pytest.raises(SamplesError, match="malformed"):
        read_sidecar(result_path, {"file": spec["file"]})
    with pytest.raises(SamplesError, match="no per-sample outcomes"):
        load_samples({"ci": None, "ci_reason": "why not"}, result_path)


def test_make_samples_validates():
    with pytest.raises(ValueError, match="kind"):
        make_samples("nope", {"a": [1]}, {})
    with pytest.raises(ValueError, match="different lengths"):
        make_samples("correct", {"a": [1, 0], "b": [1]}, {})
    with pytest.raises(ValueError, match="1-D numeric"):
        make_samples("correct", {"a": np.array(["x", None], dtype=object)}, {})
    with pytest.raises(ValueError, match="not given"):
        make_samples("correct", {"a": [1]}, {"m": ("mean", ["b"])})
    with pytest.raises(ValueError, match="unknown statistic"):
        make_samples("correct", {"a": [1]}, {"m": ("median-ish", ["a"])})
    with pytest.raises(ValueError, match="groups"):
        make_samples("per_query", {"a": [1, 0]}, {"m": ("group_mean", ["a"])})
    # what tasks call: invalid outcomes never fail the cell, they are recorded as unavailable
    from clbench.stats.samples import task_samples

    out = task_samples("correct", {"a": [1, 0], "b": [1]}, {})
    assert set(out) == {"unavailable"} and "different lengths" in out["unavailable"]


def test_task_level_samples_reproduce_metrics():
    from clbench.tasks.image_text_retrieval import ImageTextRetrievalTask
    from clbench.tasks.zero_shot import ZeroShotTask

    rng = np.random.default_rng(0)
    img = rng.normal(size=(20, 8)).astype(np.float32)
    c2i = np.repeat(np.arange(20), 2)
    txt = img[c2i] + rng.normal(scale=1.0, size=(40, 8)).astype(np.float32)
    out = ImageTextRetrievalTask.evaluate(img, txt, c2i)
    s = out.samples
    g = s["groups"]
    for k in (1, 5, 10):
        hits = s["arrays"][f"hit@{k}"]
        assert (g == 0).sum() == 40 and (g == 1).sum() == 20
        assert out.metrics[f"text_to_image_R@{k}"] == hits[g == 0].mean()
        assert out.metrics[f"image_to_text_R@{k}"] == hits[g == 1].mean()
        assert out.metrics[f"mean_R@{k}"] == (hits[g == 0].mean() + hits[g == 1].mean()) / 2

    labels = rng.integers(0, 6, size=60)
    x = np.eye(6, 8)[labels] + rng.normal(scale=0.8, size=(60, 8))
    zs = ZeroShotTask.evaluate(x, labels, np.eye(6, 8))
    assert zs.metrics["top1"] == zs.samples["arrays"]["top1"].mean()
    assert zs.metrics["top5"] == zs.samples["arrays"]["top5"].mean()
    ci = bootstrap_ci(zs.samples["arrays"], zs.samples["metrics"]["mean_per_class_recall"], n_resamples=50)
    assert ci.estimate == zs.metrics["mean_per_class_recall"]


def test_probe_and_clustering_samples_reproduce_metrics():
    from clbench.metrics.clustering import nmi
    from clbench.stats.bootstrap import evaluate_statistic
    from clbench.tasks.clustering import ClusteringTask
    from clbench.tasks.node_classification import NodeClassificationTask
    from clbench.tasks.regression_probe import RegressionProbeTask

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=150)
    x = np.eye(3, 6)[y] * 2 + rng.normal(size=(150, 6))
    cl = ClusteringTask.evaluate(x, y, {"seeds": [0, 1, 2]})
    arrays = cl.samples["arrays"]
    assert cl.metrics["nmi"] == float(np.mean([nmi(y, arrays[f"clusters_seed{s}"]) for s in (0, 1, 2)]))
    assert evaluate_statistic(arrays, cl.samples["metrics"]["nmi"]) == cl.metrics["nmi"]
    assert cl.metrics["nmi_ci_low"] <= cl.metrics["nmi"] <= cl.metrics["nmi_ci_high"]

    target = x @ rng.normal(size=6) + 0.1 * rng.normal(size=150)
    rp = RegressionProbeTask.evaluate(x[:100], target[:100], x[100:], target[100:])
    for name in ("r2", "mae", "spearman"):
        value = evaluate_statistic(rp.samples["arrays"], rp.samples["metrics"][name])
        assert value == pytest.approx(rp.metrics[name], abs=1e-12), name

    opts = {"shots": [5], "seeds": [0, 1], "c_min": 0.1, "c_max": 0.1}
    nc = NodeClassificationTask.evaluate(x[:100], y[:100], x[100:], y[100:], opts)
    for name in ("macro_f1", "micro_f1"):
        value = evaluate_statistic(nc.samples["arrays"], nc.samples["metrics"][name])
        assert value == pytest.approx(nc.metrics[name], abs=1e-12), name
    assert {"macro_f1@5shot_ci_low", "macro_f1@5shot_ci_high"} <= set(nc.metrics)


def test_multilabel_and_recommendation_samples_reproduce_metrics():
    from clbench.stats.bootstrap import evaluate_statistic
    from clbench.tasks.multilabel_probe import MultilabelProbeTask
    from clbench.tasks.recommendation import RecommendationTask

    rng = np.random.default_rng(1)
    y = (rng.random((160, 3)) < 0.4).astype(int)
    x = y @ rng.normal(size=(3, 5)) + rng.normal(size=(160, 5))
    ml = MultilabelProbeTask.evaluate(x[:100], y[:100], x[100:], y[100:], {"Cs": [1.0]})
    value = evaluate_statistic(ml.samples["arrays"], ml.samples["metrics"]["auroc"])
    assert value == pytest.approx(ml.metrics["auroc"], abs=1e-12)
    ci = bootstrap_ci(ml.samples["arrays"], ml.samples["metrics"]["auroc"], n_resamples=100)
    assert ci.low < ml.metrics["auroc"] < ci.high
    assert "scores" not in json.dumps(ml.details)  # the score matrix stays out of the result

    users, items = rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
    train = np.c_[rng.integers(0, 30, 80), rng.integers(0, 25, 80)]
    test = np.c_[rng.integers(0, 30, 40), rng.integers(0, 25, 40)]
    rec = RecommendationTask.evaluate(users, items, train, test, {"ks": [5, 10]})
    for key in ("recall@5", "ndcg@10"):
        assert rec.samples["arrays"][key].mean() == pytest.approx(rec.metrics[key], abs=1e-12)
    assert rec.samples["kind"] == "per_query" and len(rec.samples["arrays"]["recall@5"]) == rec.details[
        "evaluated_users"]


# ------------------------------------------------------------------------------ end to end
SUITE = """
suite: stats
device: cpu
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 16}
datasets:
  digits: {type: sklearn-digits, test_fraction: 0.3, limit: 600}
  pairs: {type: sts, path: pairs.tsv, format: tsv}
  tiny: {type: beir, path: beir, split: test}
tasks:
  - {name: digits-knn, type: knn, dataset: digits, k: [5, 20]}
  - {name: digits-linear, type: linear_probe, dataset: digits, c_min: 0.01, c_max: 100, steps_per_decade: 2,
     encoders: [pixels]}
  - {name: digits-frac, type: linear_probe, dataset: digits, c_min: 0.1, c_max: 0.1, label_fractions: [0.5],
     seeds: [0, 1, 2], encoders: [pixels]}
  - {name: pairs-sts, type: sts, dataset: pairs, encoders: [mock]}
  - {name: tiny-ret, type: retrieval, dataset: tiny, k_values: [1, 5], encoders: [mock]}
"""

WORDS = ["cat", "dog", "bird", "fish", "tree", "house", "car", "road", "sun", "moon", "star", "rain", "snow", "wind", "fire", "water", "stone", "leaf"]


def _write_data(root: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["sentence1\tsentence2\tscore"]
    for _ in range(60):
        a = rng.choice(WORDS, size=4, replace=False)
        keep = int(rng.integers(0, 5))
        b = list(a[:keep]) + list(rng.choice(WORDS, size=4 - keep))
        lines.append(f"{' '.join(a)}\t{' '.join(b)}\t{keep + rng.random():.3f}")
    (root / "pairs.tsv").write_text("\n".join(lines) + "\n")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, size=5))} for i in range(40)]
    queries, qrels = [], ["query-id\tcorpus-id\tscore"]
    for q in range(25):
        doc = docs[int(rng.integers(0, 40))]
        queries.append({"_id": f"q{q}", "text": " ".join(doc["text"].split()[:2])})
        qrels.append(f"q{q}\t{doc['_id']}\t1")
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats_run")
    _write_data(root)
    (root / "suite.yaml").write_text(textwrap.dedent(SUITE))
    summary = run_suite(root / "suite.yaml")
    assert summary.ok, [(c.encoder, c.task, c.reason) for c in summary.failed]
    return root / "results" / "stats"


def _load(run_dir: Path, enc: str, task: str):
    path = run_dir / enc / f"{task}.json"
    result = read_result(path)
    assert result is not None and result["status"] == "ok", result and result.get("reason")
    return result, load_samples(result, path)


def _check_ci(result):
    ci = result["ci"]["main"]
    assert ci["method"] == "percentile" and ci["level"] == 0.95 and ci["n_resamples"] == 1000
    assert ci["seed"] == result["seed"]
    assert ci["low"] <= result["main_value"] <= ci["high"]
    assert ci["low"] < ci["high"]
    return ci


def test_run_knn_sidecar_reproduces_accuracy(run_dir):
    for enc in ("pixels", "mock"):
        result, s = _load(run_dir, enc, "digits-knn")
        assert result["samples"]["kind"] == "correct" and s.n == result["details"]["n_test"]
        for k in (5, 20):
            assert s.arrays[f"top1@k{k}"].mean() == result["metrics"][f"top1@k{k}"]  # exactly
            assert s.arrays[f"top5@k{k}"].mean() == result["metrics"][f"top5@k{k}"]
        ci = _check_ci(result)
        again = bootstrap_ci(s.arrays, s.spec("top1@k20"), seed=result["seed"])
        assert (again.low, again.high) == (ci["low"], ci["high"])  # recomputable after the fact
        assert set(result["metrics_ci"]) == {"top1@k5", "top5@k5", "top5@k20"}


def test_run_linear_probe_sidecar_and_seed_aggregation(run_dir):
    result, s = _load(run_dir, "pixels", "digits-linear")
    assert s.arrays["top1"].mean() == result["metrics"]["top1"]
    assert s.arrays["top5"].mean() == result["metrics"]["top5"]
    _check_ci(result)
    frac, s3 = _load(run_dir, "pixels", "digits-frac")
    m = frac["metrics"]
    runs = [r["top1"] for r in frac["details"]["fractions"]["frac0.5"]]
    assert len(runs) == 3 and m["top1@frac0.5_mean"] == pytest.approx(np.mean(runs))
    assert m["top1@frac0.5_ci_low"] < m["top1@frac0.5_mean"] < m["top1@frac0.5_ci_high"]
    assert m["top1"] == pytest.approx(s3.arrays["top1"].mean(), abs=1e-12)  # share of seeds per sample
    _check_ci(frac)


def test_run_sts_sidecar_reproduces_correlations(run_dir):
    result, s = _load(run_dir, "mock", "pairs-sts")
    assert result["samples"]["kind"] == "pairs" and s.n == 60
    assert spearman(s.arrays["gold"], s.arrays["cosine"]) == result["metrics"]["cosine_spearman"]
    assert pearson(s.arrays["gold"], s.arrays["cosine"]) == result["metrics"]["cosine_pearson"]
    assert spearman(s.arrays["gold"], s.arrays["dot"]) == result["metrics"]["dot_spearman"]
    _check_ci(result)
    assert "cosine_pearson" in result["metrics_ci"]


def test_run_retrieval_sidecar_resamples_queries(run_dir):
    result, s = _load(run_dir, "mock", "tiny-ret")
    assert result["samples"]["kind"] == "per_query" and s.n == 25
    assert s.arrays["ndcg@10"].mean() == result["metrics"]["ndcg@10"]
    assert s.arrays["recall@5"].mean() == result["metrics"]["recall@5"]
    _check_ci(result)


def test_sidecar_failure_never_loses_the_result(tmp_path, monkeypatch):
    from clbench import stats

    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(stats, "write_sidecar", broken)
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""
        suite: s
        device: cpu
        encoders: {pixels: {type: identity}}
        datasets: {syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 6}}
        tasks: [{name: syn-knn, type: knn, dataset: syn, k: [5]}]
    """))
    assert run_suite(tmp_path / "suite.yaml").ok
    r = read_result(tmp_path / "results/s/pixels/syn-knn.json")
    assert r["status"] == "ok" and r["main_value"] is not None
    assert r["ci"] is None and r["samples"] is None and "disk full" in r["ci_reason"]


def test_task_without_samples_has_null_ci_with_reason(tmp_path):
    (tmp_path / "suite.yaml").write_text(textwrap.dedent("""
        suite: s
        device: cpu
        encoders: {pixels: {type: identity}}
        datasets: {syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 6}}
        tasks: [{name: diag, type: diagnostics, dataset: syn}]
    """))
    run_suite(tmp_path / "suite.yaml")
    r = read_result(tmp_path / "results/s/pixels/diag.json")
    assert r["status"] == "ok", r.get("reason")
    assert r["ci"] is None and "rankme" in r["ci_reason"].lower()
    assert not (tmp_path / "results/s/pixels/diag.samples.npz").exists()
