"""Recommendation: oracle embeddings, a brute-force reference, masking, and suites end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clbench.api import run_suite
from clbench.errors import ConfigError
from clbench.metrics.recommendation import topk_metrics
from clbench.tasks.recommendation import RecommendationTask

REPO = Path(__file__).resolve().parents[1]


def _reference(users, items, train, test, k):
    """Per-user loops, written independently of the vectorised code."""
    scores = users @ items.T
    recalls, ndcgs = [], []
    for u in range(len(users)):
        truth = {i for uu, i in test if uu == u}
        if not truth:
            continue
        seen = {i for uu, i in train if uu == u}
        ranked = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen][:k]
        hits = [i in truth for i in ranked]
        recalls.append(sum(hits) / len(truth))
        dcg = sum(1 / np.log2(r + 2) for r, h in enumerate(hits) if h)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(truth))))
        ndcgs.append(dcg / idcg)
    return np.mean(recalls), np.mean(ndcgs)


def test_oracle_embeddings_give_recall_one():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 120
    test = np.array([(u, i) for u in range(n_users) for i in rng.choice(n_items, 5, replace=False)])
    users = np.zeros((n_users, n_items))
    users[test[:, 0], test[:, 1]] = 1.0
    items = np.eye(n_items)
    # training items score highest of all, but they are masked
    train = np.array([(u, (u + 7) % n_items) for u in range(n_users) if (u, (u + 7) % n_items) not in set(map(tuple, test))])
    users[train[:, 0], train[:, 1]] = 5.0
    out = topk_metrics(users, items, train, test, ks=[10, 20, 50], chunk=7)
    assert out == {"recall@10": 1.0, "ndcg@10": 1.0, "recall@20": 1.0, "ndcg@20": 1.0, "recall@50": 1.0,
                   "ndcg@50": 1.0}
    unmasked = topk_metrics(users, items, np.zeros((0, 2), int), test, ks=[5])
    assert unmasked["recall@5"] < 1.0


def test_matches_a_brute_force_reference():
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(30, 6)), rng.normal(size=(70, 6))
    pairs = np.array([(u, i) for u in range(30) for i in rng.choice(70, 12, replace=False)])
    train, test = pairs[::2], pairs[1::2]
    test = test[test[:, 0] != 3]  # a user without test items is not evaluated
    out = topk_metrics(users, items, train, test, ks=[5, 10, 20], chunk=4)
    for k in (5, 10, 20):
        rec, ndcg = _reference(users, items, train, test, k)
        assert out[f"recall@{k}"] == pytest.approx(rec) and out[f"ndcg@{k}"] == pytest.approx(ndcg)
    task = RecommendationTask.evaluate(users, items, train, test, {"ks": [5, 10], "chunk_size": 3})
    assert task.main_metric == "recall@5" and task.details["evaluated_users"] == 29


def test_options_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        RecommendationTask.evaluate(np.eye(2), np.eye(2), [], [[0, 0]], {"score": "cosin"})


SUITE = """
suite: rec
device: cpu
encoders:
  emb: {type: precomputed, path: users.npz, role_paths: {item: items.npy}}
datasets:
  inter: {type: interactions, train: train.csv, test: test.jsonl, items_path: items.txt}
tasks:
  - {name: topk, type: recommendation, dataset: inter, ks: [2, 5]}
"""


def test_recommendation_through_a_suite(tmp_path):
    rng = np.random.default_rng(2)
    users, items = rng.normal(size=(25, 4)), rng.normal(size=(15, 4))
    uid = [f"u{i}" for i in range(25)]
    np.savez(tmp_path / "users.npz", ids=np.array(uid), embeddings=users)
    np.save(tmp_path / "items.npy", items)  # item ids are the row indices "0".."14"
    (tmp_path / "items.txt").write_text("\n".join(str(i) for i in range(15)) + "\n")
    pairs = np.array([(u, i) for u in range(25) for i in rng.choice(15, 4, replace=False)])
    train, test = pairs[pairs[:, 1] % 2 == 0], pairs[pairs[:, 1] % 2 == 1]
    (tmp_path / "train.csv").write_text("user_id,item_id\n" + "".join(f"u{u},{i}\n" for u, i in train))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"user_id": f"u{u}", "item_id": int(i)}) + "\n"
                                                 for u, i in test))
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(SUITE))
    summary = run_suite(tmp_path / "suite.yaml")
    assert summary.ok, [c.reason for c in summary.cells]
    r = json.loads((tmp_path / "results/rec/emb/topk.json").read_text())
    assert r["main_metric"] == "recall@2"
    for k in (2, 5):
        rec, ndcg = _reference(users, items, train, test, k)
        assert r["metrics"][f"recall@{k}"] == pytest.approx(rec, rel=1e-5)
        assert r["metrics"][f"ndcg@{k}"] == pytest.approx(ndcg, rel=1e-5)
    # a user without an embedding fails the cell with the file and the id named
    (tmp_path / "train.csv").write_text((tmp_path / "train.csv").read_text() + "ghost,1\n")
    summary = run_suite(tmp_path / "suite.yaml")
    assert summary.cells[0].status == "failed"
    assert "users.npz: no embedding for 1 of 26 requested ids (e.g. 'ghost')" in summary.cells[0].reason


def test_shipped_recommendation_suite_runs_on_toy_files(tmp_path):
    (tmp_path / "suites" / "data" / "rec").mkdir(parents=True)
    path = tmp_path / "suites" / "recommendation.yaml"
    path.write_text((REPO / "suites" / "recommendation.yaml").read_text())
    d = tmp_path / "suites" / "data" / "rec"
    n = 60
    # user u: its training item u scores 2 (masked), its test item u + 1 scores 1, the rest 0
    np.savez(d / "users.npz", ids=np.arange(n), embeddings=2 * np.eye(n) + np.roll(np.eye(n), 1, axis=1))
    np.savez(d / "items.npz", ids=np.arange(n), embeddings=np.eye(n))
    (d / "train.csv").write_text("user_id,item_id\n" + "".join(f"{u},{u}\n" for u in range(n)))  # masked
    (d / "test.csv").write_text("user_id,item_id\n" + "".join(f"{u},{(u + 1) % n}\n" for u in range(n)))
    summary = run_suite(path, device="cpu")
    assert summary.ok
    r = json.loads((tmp_path / "results/recommendation/embeddings/topk.json").read_text())
    assert r["main_metric"] == "recall@20" and r["metrics"]["recall@10"] == 1.0 and r["metrics"]["ndcg@50"] == 1.0


def test_matches_pytrec_eval():
    """Recall@K and NDCG@K equal trec_eval's recall_K and ndcg_cut_K (training items left out of
    the run, every test item relevance 1; continuous scores, so no ties)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(7)
    users, items = rng.normal(size=(25, 8)), rng.normal(size=(90, 8))
    pairs = np.array([(u, i) for u in range(25) for i in rng.choice(90, 14, replace=False)])
    train, test = pairs[::2], pairs[1::2]
    scores = users @ items.T
    qrels = {str(u): {str(i): 1 for uu, i in test if uu == u} for u in range(25)}
    run = {}
    for u in range(25):
        seen = {i for uu, i in train if uu == u}
        run[str(u)] = {str(i): float(scores[u, i]) for i in range(90) if i not in seen}
    ks = [5, 10, 20]
    measures = {f"recall_{k}" for k in ks} | {f"ndcg_cut_{k}" for k in ks}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = topk_metrics(users, items, train, test, ks=ks, chunk=6)
    for k in ks:
        assert out[f"recall@{k}"] == pytest.approx(np.mean([r[f"recall_{k}"] for r in ref.values()]), abs=1e-12)
        assert out[f"ndcg@{k}"] == pytest.approx(np.mean([r[f"ndcg_cut_{k}"] for r in ref.values()]), abs=1e-12)
