"""Clustering, regression, multi-label and node-classification probes; precomputed embeddings and
the labels dataset. Metrics are checked against scikit-learn / SciPy, tasks through suites."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clbench.api import run_suite
from clbench.errors import ConfigError, DataError
from clbench.metrics import clustering as cl
from clbench.metrics import multilabel as ml
from clbench.metrics import regression as rg

REPO = Path(__file__).resolve().parents[1]


# -- metrics against independent implementations ---------------------------------------------
def test_nmi_ari_purity_against_sklearn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y, c = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
        c[:100] = y[:100]
        assert cl.nmi(y, c) == pytest.approx(normalized_mutual_info_score(y, c))
        assert cl.ari(y, c) == pytest.approx(adjusted_rand_score(y, c))
        table = np.zeros((5, 7))
        np.add.at(table, (y, c), 1)
        assert cl.purity(y, c) == pytest.approx(table.max(axis=0).sum() / 200)


def test_perfectly_separated_clusters_score_one():
    from clbench.tasks.clustering import ClusteringTask

    y = np.repeat(np.arange(5), 30)
    centres = np.random.default_rng(1).normal(size=(5, 8)) * 20
    x = centres[y] + np.random.default_rng(2).normal(scale=0.01, size=(150, 8))
    out = ClusteringTask.evaluate(x, y, {"seeds": [0, 1]})
    assert out.metrics["nmi"] == 1.0 and out.metrics["ari"] == 1.0 and out.metrics["purity"] == 1.0
    assert out.details["k"] == 5


def test_regression_metrics_against_sklearn_and_scipy():
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 100).astype(float)  # ordinal, with ties
    p = y + rng.normal(size=100)
    p[:10] = np.round(p[:10])
    assert rg.r2(y, p) == pytest.approx(r2_score(y, p))
    assert rg.mae(y, p) == pytest.approx(mean_absolute_error(y, p))
    assert rg.rmse(y, p) == pytest.approx(np.sqrt(mean_squared_error(y, p)))
    assert rg.spearman(y, p) == pytest.approx(spearmanr(y, p).statistic)


def test_ridge_against_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 10)) * rng.uniform(0.1, 5, 10)
    y = x @ rng.normal(size=10) + 3.0 + rng.normal(size=120)
    for alpha in (1e-3, 1.0, 100.0):
        ours = rg.ridge_fit(x, y, alpha)
        ref = Ridge(alpha=alpha).fit(x, y)
        assert ours.coef == pytest.approx(ref.coef_, rel=1e-6, abs=1e-8)
        assert ours.intercept == pytest.approx(ref.intercept_, rel=1e-6)
    # the CV choice equals the alpha with the lowest pooled validation MSE of sklearn's Ridge
    alphas = [1e-2, 1.0, 30.0, 1e3, 1e5]
    model = rg.ridge_cv(x, y, alphas, folds=4, seed=7)
    perm = np.random.default_rng(7).permutation(120)
    mse = []
    for a in alphas:
        err = 0.0
        for part in np.array_split(perm, 4):
            train = np.setdiff1d(perm, part)
            err += np.sum((Ridge(alpha=a).fit(x[train], y[train]).predict(x[part]) - y[part]) ** 2)
        mse.append(err / 120)
    assert model.cv_mse == pytest.approx(mse, rel=1e-6)
    assert model.alpha == alphas[int(np.argmin(mse))]


def test_auroc_and_f1_against_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    s = np.round(y + rng.normal(size=300), 1)  # ties
    assert ml.auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(ml.auroc(np.ones(5), np.arange(5)))
    t, p = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    f = ml.f1_scores(t, p)
    assert f["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert f["micro_f1"] == pytest.approx(f1_score(t, p, average="micro"))


def test_ovr_logistic_matches_sklearn_per_label():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 5))
    y = (x[:, :3] + rng.normal(size=(200, 3)) > 0).astype(int)
    model = ml.fit_ovr_logistic(x, y, C=0.5, tol=1e-10)
    scores = model.scores(x)
    for j in range(3):
        ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000).fit(x, y[:, j])
        assert model.weight[:, j].numpy() == pytest.approx(ref.coef_[0], abs=1e-4)
        assert ml.auroc(y[:, j], scores[:, j]) == pytest.approx(roc_auc_score(y[:, j], ref.decision_function(x)))


# -- precomputed encoder and labels dataset ---------------------------------------------------
def _formats(tmp_path: Path, ids: np.ndarray, emb: np.ndarray) -> dict[str, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.numpy import save_file

    np.savez(tmp_path / "e.npz", ids=ids, embeddings=emb)
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "ids.txt").write_text("\n".join(str(i) for i in ids) + "\n")
    pq.write_table(pa.table({"id": ids, "embedding": [list(r) for r in emb]}), tmp_path / "e.parquet")
    pq.write_table(pa.table({"id": ids, **{f"d{j}": emb[:, j] for j in range(emb.shape[1])}}), tmp_path / "w.parquet")
    torch.save({"ids": ids.tolist(), "embeddings": torch.from_numpy(emb)}, tmp_path / "e.pt")
    save_file({"ids": ids.astype(np.int64), "embeddings": emb}, str(tmp_path / "e.safetensors"))
    return {
        "npz": {"path": "e.npz"}, "npy": {"path": "e.npy", "ids_path": "ids.txt"},
        "parquet": {"path": "e.parquet"}, "wide-parquet": {"path": "w.parquet"},
        "pt": {"path": "e.pt"}, "safetensors": {"path": "e.safetensors"},
    }


def test_precomputed_reads_every_format_by_id(tmp_path):
    from clbench.encoders.precomputed import PrecomputedEncoder, PrecomputedOptions
    from clbench.options import parse_options

    ids = np.array([10, 3, 7, 42])
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    for fmt, raw in _formats(tmp_path, ids, emb).items():
        enc = PrecomputedEncoder(parse_options(PrecomputedOptions, raw), root=tmp_path)
        enc.check()
        got = enc.encode(["42", "10", 7], "id")
        assert np.array_equal(got, emb[[3, 0, 2]]), fmt
    enc = PrecomputedEncoder(parse_options(PrecomputedOptions, {"path": "e.npy"}), root=tmp_path)
    assert np.array_equal(enc.encode(["1"], "id"), emb[[1]])  # no ids file: row index


def test_precomputed_errors_name_the_file(tmp_path):
    from clbench.encoders.precomputed import PrecomputedEncoder, PrecomputedOptions
    from clbench.options import parse_options

    np.savez(tmp_path / "e.npz", ids=np.array(["a", "b"]), embeddings=np.ones((2, 3)))
    enc = PrecomputedEncoder(parse_options(PrecomputedOptions, {"path": "e.npz"}), root=tmp_path)
    with pytest.raises(DataError, match=r"e\.npz: no embedding for 2 of 3 requested ids \(e\.g\. 'zz', 'yy'\)"):
        enc.encode(["a", "zz", "yy"], "id")
    np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a"]), embeddings=np.ones((2, 3)))
    np.savez(tmp_path / "nokey.npz", x=np.ones((2, 3)))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for name, pattern in (("dup.npz", "occurs twice"), ("nokey.npz", "missing array 'ids'"),
                          ("bad.pt", "cannot read embeddings"), ("gone.npz", "not found")):
        enc = PrecomputedEncoder(parse_options(PrecomputedOptions, {"path": name}), root=tmp_path)
        with pytest.raises(DataError, match=pattern) as info:
            enc.encode(["a"], "id")
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="not one of"):
        parse_options(PrecomputedOptions, {"path": "e.csv"})


def test_labels_dataset_targets_splits_and_errors(tmp_path):
    from clbench.datasets.labels import LabelsDataset, LabelsOptions
    from clbench.options import parse_options

    def build(**raw):
        return LabelsDataset(parse_options(LabelsOptions, raw), root=tmp_path, seed=0)

    (tmp_path / "a.csv").write_text("id,label,split\nn1,b,train\nn2,a,test\nn3,b,test\nn4,a,train\n")
    ds = build(path="a.csv")
    assert ds.split("train").items == ["n1", "n4"] and list(ds.split("train").labels) == [1, 0]
    assert ds.classes == ["a", "b"] and ds.split("test").modality == "id"
    (tmp_path / "m.jsonl").write_text("".join(
        json.dumps({"id": i, "label": ["x", "y"][: i % 3]}) + "\n" for i in range(20)))
    ds = build(path="m.jsonl", target="multilabel", test_fraction=0.25)
    tr, te = ds.split("train"), ds.split("test")
    assert len(tr) == 15 and len(te) == 5 and tr.labels.shape == (15, 2) and ds.classes == ["x", "y"]
    assert sorted(tr.items + te.items, key=int) == [str(i) for i in range(20)]
    (tmp_path / "r.csv").write_text("id,label\n" + "".join(f"{i},{i / 10}\n" for i in range(10)))
    ds = build(path="r.csv", target="continuous", split_column=None)
    assert ds.split("train").labels.dtype == np.float64
    (tmp_path / "bad.csv").write_text("id,label\nn1,1\nn2,\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: missing 'label'"):
        build(path="bad.csv").split("train")
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "label": 0}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: not valid JSON"):
        build(path="bad.jsonl").split("train")
    (tmp_path / "dup.csv").write_text("id,label\nn1,1\nn1,0\n")
    with pytest.raises(DataError, match="repeats line 2"):
        build(path="dup.csv").split("train")
    (tmp_path / "num.csv").write_text("id,label\nn1,1\nn2,x\n")
    with pytest.raises(DataError, match="line 3: 'label' must be a number"):
        build(path="num.csv", target="continuous").split("train")


# -- end to end --------------------------------------------------------------------------------
def _node_data(folder: Path, n: int = 240, classes: int = 4, dim: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    emb = rng.normal(size=(n, dim)) + 3 * np.eye(classes, dim)[y]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "node_embeddings.npz", ids=np.arange(n), embeddings=emb)
    split = ["train" if i < n * 0.6 else "test" for i in range(n)]
    (folder / "nodes.csv").write_text("id,label,split\n" + "".join(f"{i},{y[i]},{split[i]}\n" for i in range(n)))
    return emb


SUITE = """
suite: probes
device: cpu
encoders:
  emb: {type: precomputed, path: emb.npz}
datasets:
  nodes: {type: labels, path: nodes.csv}
  ages: {type: labels, path: ages.csv, target: continuous, test_fraction: 0.3}
  xray: {type: labels, path: xray.csv, target: multilabel, label_columns: [edema, effusion, other]}
tasks:
  - {name: nodes-f1, type: node_classification, dataset: nodes, c_min: 1.0, c_max: 1.0}
  - {name: nodes-shots, type: node_classification, dataset: nodes, shots: [1, 5], seeds: [0, 1], c_min: 0.1, c_max: 10}
  - {name: nodes-kmeans, type: clustering, dataset: nodes, seeds: [0, 1]}
  - {name: ages-ridge, type: regression_probe, dataset: ages, alphas: [0.01, 1, 100]}
  - {name: xray-ovr, type: multilabel_probe, dataset: xray, label_fractions: [0.1, 1.0], seeds: [0, 1], Cs: [0.1, 1]}
  - {name: xray-ridge, type: regression_probe, dataset: xray}
"""


def test_probe_tasks_through_a_suite(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    n = 240
    emb = rng.normal(size=(n, 12))
    y = np.arange(n) % 4
    emb[:, :4] += 3 * np.eye(4)[y]
    np.savez(tmp_path / "emb.npz", ids=np.arange(n), embeddings=emb)
    (tmp_path / "nodes.csv").write_text(
        "id,label,split\n" + "".join(f"{i},{y[i]},{'train' if i < 160 else 'test'}\n" for i in range(n)))
    age = emb[:, 5] * 2 + 0.1 * rng.normal(size=n)
    (tmp_path / "ages.csv").write_text("id,label\n" + "".join(f"{i},{age[i]}\n" for i in range(n)))
    lab = (emb[:, 6:9] > 0).astype(int)
    (tmp_path / "xray.csv").write_text("id,edema,effusion,other,split\n" + "".join(
        f"{i},{lab[i, 0]},{lab[i, 1]},{lab[i, 2]},{'train' if i < 180 else 'test'}\n" for i in range(n)))
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(SUITE))
    summary = run_suite(tmp_path / "suite.yaml")
    status = {c.task: (c.status, c.reason) for c in summary.cells}

    def result(task):
        return json.loads((tmp_path / "results/probes/emb" / f"{task}.json").read_text())

    # node classification with fixed C equals scikit-learn's logistic regression at that C
    r = result("nodes-f1")
    ref = LogisticRegression(C=1.0, max_iter=5000).fit(emb[:160], y[:160]).predict(emb[160:])
    assert r["metrics"]["macro_f1"] == pytest.approx(f1_score(y[160:], ref, average="macro"), abs=0.02)
    assert r["metrics"]["micro_f1"] == pytest.approx(f1_score(y[160:], ref, average="micro"), abs=0.02)
    shots = result("nodes-shots")
    assert shots["status"] == "ok" and "macro_f1@1shot_std" in shots["metrics"]
    assert [run["n_train"] for run in shots["details"]["shots"]["1shot"]] == [4, 4]
    assert shots["details"]["shots"]["1shot"][0]["C_source"] == "full"  # too few nodes for a validation split
    assert shots["details"]["shots"]["5shot"][0]["C_source"] == "sweep"
    assert result("nodes-kmeans")["metrics"]["nmi"] > 0.5
    ages = result("ages-ridge")
    assert ages["metrics"]["r2"] > 0.95 and ages["metrics"]["spearman"] > 0.95
    xray = result("xray-ovr")
    assert xray["metrics"]["auroc"] > 0.9 and set(xray["details"]["labels"]) == {"edema", "effusion", "other"}
    assert "auroc/edema" in xray["metrics"] and "auroc@frac0.1_std" in xray["metrics"]
    # a multi-label dataset is no regression target: a failed cell with a clear reason
    assert status["xray-ridge"][0] == "failed" and "one number per row" in status["xray-ridge"][1]
    assert all(s == "ok" for t, (s, _) in status.items() if t != "xray-ridge")


def test_shipped_graph_suite_runs_on_toy_files(tmp_path):
    text = (REPO / "suites" / "graph.yaml").read_text()
    # fewer seeds and a fixed C keep the test fast; the structure is the shipped one
    text = text.replace("seeds: [0, 1, 2, 3, 4]}", "seeds: [0], c_min: 1.0, c_max: 1.0}", 1)
    text = text.replace("type: node_classification, dataset: nodes}", "type: node_classification, dataset: nodes, "
                        "c_min: 1.0, c_max: 1.0}")
    (tmp_path / "suites").mkdir()
    path = tmp_path / "suites" / "graph.yaml"
    path.write_text(text)
    _node_data(tmp_path / "suites" / "data" / "graph", n=400)
    summary = run_suite(path, device="cpu")
    assert summary.ok and {c.status for c in summary.cells} == {"ok"}, [(c.task, c.reason) for c in summary.cells]
    assert len(summary.cells) == 4
