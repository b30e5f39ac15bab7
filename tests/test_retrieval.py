"""Retrieval: TREC metrics against pytrec_eval and a from-definition reference, chunked exact
top-k search, the BEIR reader's error catalogue, the retrieval task, and the MTEB bridge."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from clbench.datasets.beir import BeirDataset, BeirOptions
from clbench.encoders.mock import MockEncoder, MockOptions
from clbench.errors import ConfigError, DataError
from clbench.metrics.retrieval import metric_keys, retrieval_metrics, topk_search
from clbench.options import parse_options
from clbench.tasks.base import TaskContext
from clbench.tasks.retrieval import RetrievalOptions, RetrievalTask

KS = (1, 3, 5, 10, 20)


# --------------------------------------------------------------------------------------------
# an independent reference, written from the trec_eval definitions (one query at a time, loops)
# --------------------------------------------------------------------------------------------
def reference(run_q: dict[str, float], judged: dict[str, int], k: int) -> dict[str, float]:
    ranked = [d for d, _ in sorted(run_q.items(), key=lambda x: (x[1], x[0]), reverse=True)][:k]
    num_rel = sum(1 for g in judged.values() if g >= 1)
    hits, ap, rr = 0, 0.0, 0.0
    dcg = 0.0
    for rank, doc in enumerate(ranked, 1):
        g = judged.get(doc, 0)
        if g >= 1:
            hits += 1
            ap += hits / rank
        if g > 0 and rr == 0.0:
            rr = 1.0 / rank
        dcg += max(g, 0) / math.log2(rank + 1)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return {
        f"ndcg@{k}": dcg / idcg if idcg > 0 else 0.0,
        f"map@{k}": ap / num_rel if num_rel else 0.0,
        f"mrr@{k}": rr,
        f"recall@{k}": hits / num_rel if num_rel else 0.0,
        f"precision@{k}": hits / k,
    }


def random_case(rng: np.random.Generator, *, ties: bool):
    docs = list(dict.fromkeys(f"d{rng.integers(0, 500)}" for _ in range(int(rng.integers(1, 40)))))
    qrels, run = {}, {}
    for q in range(int(rng.integers(1, 7))):
        qid = f"q{q}"
        pool = docs + ["unretrieved1", "unretrieved2"]
        judged = rng.choice(pool, size=min(len(pool), int(rng.integers(1, 9))), replace=False)
        qrels[qid] = {str(d): int(rng.integers(-1, 4)) for d in judged}  # graded, with 0 and -1
        if rng.random() < 0.9:
            scores = rng.integers(0, 4, len(docs)).astype(float) if ties else rng.normal(size=len(docs))
            run[qid] = {d: float(s) for d, s in zip(docs, scores) if rng.random() < 0.8} or {docs[0]: 0.0}
    run["unjudged-query"] = {docs[0]: 1.0}  # not in the qrels: ignored
    return run, qrels


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_the_trec_definitions(ties):
    rng = np.random.default_rng(1 if ties else 0)
    for _ in range(150):
        run, qrels = random_case(rng, ties=ties)
        if not set(run) & set(qrels):
            continue
        out = retrieval_metrics(run, qrels, KS)
        assert set(out.query_ids) == set(run) & set(qrels)
        for qid in out.query_ids:
            mine = out.query(qid)
            for k in KS:
                for name, value in reference(run[qid], qrels[qid], k).items():
                    assert mine[name] == pytest.approx(value, abs=1e-12), (qid, name)
        for name in metric_keys(KS):
            assert out.metrics[name] == pytest.approx(np.mean([out.query(q)[name] for q in out.query_ids]))


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_pytrec_eval(ties):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(10 + ties)
    measures = {f"{m}.{','.join(map(str, KS))}" for m in ("ndcg_cut", "map_cut", "recall", "P")}
    names = {"ndcg_cut_{}": "ndcg@{}", "map_cut_{}": "map@{}", "recall_{}": "recall@{}", "P_{}": "precision@{}"}
    checked = 0
    for _ in range(200):
        run, qrels = random_case(rng, ties=ties)
        if not set(run) & set(qrels):
            continue
        ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        out = retrieval_metrics(run, qrels, KS)
        assert sorted(ref) == sorted(out.query_ids)
        for qid, values in ref.items():
            mine = out.query(qid)
            for k in KS:
                for theirs, ours in names.items():
                    assert mine[ours.format(k)] == pytest.approx(values[theirs.format(k)], abs=1e-12), (qid, ours)
                    checked += 1
    assert checked > 1000


def test_mrr_matches_mteb():
    mteb_metrics = pytest.importorskip("mteb._evaluators.retrieval_metrics")
    rng = np.random.default_rng(3)
    for _ in range(100):
        run, qrels = random_case(rng, ties=True)
        run = {q: v for q, v in run.items() if q in qrels}
        if not run:
            continue
        theirs = mteb_metrics.mrr(qrels, run, list(KS))
        out = retrieval_metrics(run, qrels, KS)
        order = [out.query_ids.index(q) for q in run]
        for k in KS:
            np.testing.assert_allclose(out.per_query[f"mrr@{k}"][order], theirs[f"MRR@{k}"], atol=1e-12)


def test_ranked_arrays_give_the_dict_results():
    rng = np.random.default_rng(4)
    doc_ids = [f"doc{i:03d}" for i in rng.permutation(60)]
    q_ids = [f"q{i}" for i in range(8)]
    scores = rng.integers(0, 5, (8, 60)).astype(np.float32)  # many ties: tie-break by doc id
    qrels = {q: {doc_ids[j]: int(rng.integers(0, 3)) for j in rng.choice(60, 6, replace=False)} for q in q_ids[:7]}
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in range(60)} for i, q in enumerate(q_ids)}
    idx = np.tile(np.arange(60), (8, 1))
    perm = np.argsort(rng.random((8, 60)), axis=1)  # any input order
    a = retrieval_metrics((np.take_along_axis(scores, perm, 1), np.take_along_axis(idx, perm, 1)), qrels, KS,
                          query_ids=q_ids, doc_ids=doc_ids)
    b = retrieval_metrics(run, qrels, KS)
    assert a.query_ids == b.query_ids == q_ids[:7]
    for name in b.metrics:
        np.testing.assert_allclose(a.per_query[name], b.per_query[name], atol=1e-12)


def test_metric_edge_cases():
    qrels = {"q": {"a": 0, "b": -1}}  # judged, nothing relevant: every metric 0 (as pytrec_eval)
    out = retrieval_metrics({"q": {"a": 1.0, "b": 0.5}}, qrels, (1, 10))
    assert all(v == 0.0 for v in out.metrics.values())
    out = retrieval_metrics({"q": {"x": 1.0}}, {"q": {"x": 1}}, (10,))
    assert out.metrics["precision@10"] == pytest.approx(0.1)  # divided by k, not by the run length
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics({"q": {"x": 1.0}}, {"other": {"x": 1}})
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics({"q": {"x": 1.0}}, {"q": {"x": 1}}, (0,))


# --------------------------------------------------------------------------------------------
# chunked search
# --------------------------------------------------------------------------------------------
def _full(q, d, similarity):
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
    s = q.astype(np.float64) @ d.astype(np.float64).T
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, 1), order


# the GPU path (torch.topk instead of NumPy's selection) runs where a GPU is present
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()", reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("chunk_size,query_chunk_size", [(1, 8), (7, 3), (64, 1024), (200, 5), (10_000, 2)])
def test_chunked_topk_equals_full_argsort(similarity, chunk_size, query_chunk_size, device):
    rng = np.random.default_rng(5)
    q = rng.normal(size=(23, 16)).astype(np.float32)
    d = rng.normal(size=(200, 16)).astype(np.float32)
    ref_s, ref_i = _full(q, d, similarity)
    for k in (1, 10, 199, 200, 1000):
        s, i = topk_search(q, d, k, chunk_size=chunk_size, query_chunk_size=query_chunk_size, similarity=similarity,
                           device=device)
        kk = min(k, 200)
        assert s.shape == i.shape == (23, kk) and s.dtype == np.float32 and i.dtype == np.int64
        np.testing.assert_array_equal(i, ref_i[:, :kk])
        np.testing.assert_allclose(s, ref_s[:, :kk], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_size", [1, 7, 160, 1000])
def test_chunked_topk_keeps_lowest_index_among_ties(chunk_size, device):
    rng = np.random.default_rng(6)
    q = rng.integers(-2, 3, (9, 4)).astype(np.float32)
    d = rng.integers(-1, 2, (300, 4)).astype(np.float32)  # small integers: exact ties everywhere
    ref_s, ref_i = _full(q, d, "dot")  # stable argsort of the full matrix
    for k in (1, 5, 17, 150, 300):  # k > 128 takes the NumPy selection path on CPU
        s, i = topk_search(q, d, k, chunk_size=chunk_size, query_chunk_size=4, similarity="dot", device=device)
        np.testing.assert_array_equal(i, ref_i[:, :k])
        np.testing.assert_array_equal(s, ref_s[:, :k])


def test_topk_reads_memory_mapped_corpus_and_orders_ties_by_index(tmp_path):
    d = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=(50, 4))
    d[:] = np.repeat(np.eye(4, dtype=np.float32), [20, 10, 10, 10], axis=0)
    d.flush()
    d = np.load(tmp_path / "d.npy", mmap_mode="r")
    s, i = topk_search(np.array([[1, 0, 0, 0]], np.float32), d, 5, chunk_size=3)
    assert i.tolist() == [[0, 1, 2, 3, 4]] and np.allclose(s, 1.0)
    with pytest.raises(ValueError, match="dimension"):
        topk_search(np.zeros((1, 3), np.float32), d, 5)
    with pytest.raises(ValueError, match="similarity"):
        topk_search(np.zeros((1, 4), np.float32), d, 5, similarity="l2")


# --------------------------------------------------------------------------------------------
# the BEIR reader
# --------------------------------------------------------------------------------------------
CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first document "},
    {"_id": "d2", "title": "", "text": "  second document"},
    {"_id": "d3", "text": "third document"},
    {"_id": "d4", "title": None, "text": "fourth"},
]
QUERIES = [{"_id": "q1", "text": "first?"}, {"_id": "q2", "text": "unjudged"}, {"_id": "q3", "text": " third? "}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq3\td3\t1\nq3\td4\t0\n"


def beir_folder(root: Path, *, corpus=None, queries=None, qrels=QRELS, split="test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    for name, rows in (("corpus", corpus if corpus is not None else CORPUS),
                       ("queries", queries if queries is not None else QUERIES)):
        data = rows if isinstance(rows, (str, bytes)) else "".join(json.dumps(r) + "\n" for r in rows)
        path = root / f"{name}.jsonl"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    (root / "qrels" / f"{split}.tsv").write_bytes(qrels if isinstance(qrels, bytes) else qrels.encode())
    return root


def beir(root: Path, **options) -> BeirDataset:
    return BeirDataset(parse_options(BeirOptions, {"path": str(root), **options}), name="b", root=root.parent)


def test_beir_reads_splits_like_mteb(tmp_path):
    ds = beir(beir_folder(tmp_path / "b"))
    ds.check()
    q, c = ds.split("queries"), ds.split("corpus")
    assert q.role == "query" and c.role == "document" and q.modality == c.modality == "text"
    assert list(q.ids) == ["q1", "q3"] and list(q.items) == ["first?", " third? "]  # judged only, as written
    assert list(c.ids) == ["d1", "d2", "d3", "d4"]
    # MTEB: (title + " " + text).strip() with a title, else text.strip()
    assert list(c.items) == ["Alpha first document", "second document", "third document", "fourth"]
    assert ds.qrels == {"q1": {"d1": 2, "d2": 1}, "q3": {"d3": 1, "d4": 0}}
    limited = beir(tmp_path / "b", limit_queries=1)
    assert list(limited.split("queries").ids) == ["q1"] and list(limited.qrels) == ["q1"]
    assert "sources" in ds.fingerprint()


def test_beir_accepts_a_qrels_file_without_header_and_integral_floats(tmp_path):
    ds = beir(beir_folder(tmp_path / "b", qrels="q1\td1\t1.0\n\nq3\td3\t2\n"))
    assert ds.qrels == {"q1": {"d1": 1}, "q3": {"d3": 2}}


BAD = {
    "corpus-json": ({"corpus": '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": \n'}, "corpus.jsonl", 2, "JSON"),
    "corpus-not-object": ({"corpus": '["d1", "x"]\n'}, "corpus.jsonl", 1, "JSON object"),
    "corpus-no-id": ({"corpus": [{"title": "t", "text": "x"}]}, "corpus.jsonl", 1, "'_id'"),
    "corpus-no-text": ({"corpus": [{"_id": "d1", "text": "x"}, {"_id": "d2", "title": "t"}]}, "corpus.jsonl", 2,
                       "'text'"),
    "corpus-text-type": ({"corpus": [{"_id": "d1", "text": 3}]}, "corpus.jsonl", 1, "'text'"),
    "corpus-title-type": ({"corpus": [{"_id": "d1", "title": ["a"], "text": "x"}]}, "corpus.jsonl", 1, "'title'"),
    "corpus-duplicate": ({"corpus": CORPUS + [{"_id": "d2", "text": "again"}]}, "corpus.jsonl", 5, "duplicate"),
    "corpus-empty": ({"corpus": "\n\n"}, "corpus.jsonl", None, "empty"),
    "corpus-utf8": ({"corpus": b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n'}, "corpus.jsonl",
                    2, "UTF-8"),
    "queries-json": ({"queries": '{"_id": "q1", "text": "x"\n'}, "queries.jsonl", 1, "JSON"),
    "queries-no-text": ({"queries": [{"_id": "q1"}]}, "queries.jsonl", 1, "'text'"),
    "queries-duplicate": ({"queries": QUERIES + [{"_id": "q1", "text": "dup"}]}, "queries.jsonl", 4, "duplicate"),
    "queries-empty": ({"queries": ""}, "queries.jsonl", None, "empty"),
    "qrels-unknown-query": ({"qrels": QRELS + "q9\td1\t1\n"}, "test.tsv", 6, "'q9'"),
    "qrels-unknown-doc": ({"qrels": QRELS + "q1\td9\t1\n"}, "test.tsv", 6, "'d9'"),
    "qrels-score": ({"qrels": QRELS + "q1\td3\thigh\n"}, "test.tsv", 6, "not an integer"),
    "qrels-fraction": ({"qrels": QRELS + "q1\td3\t0.5\n"}, "test.tsv", 6, "not an integer"),
    "qrels-columns": ({"qrels": QRELS + "q1 d3 1\n"}, "test.tsv", 6, "3 tab-separated"),
    "qrels-conflict": ({"qrels": QRELS + "q1\td1\t0\n"}, "test.tsv", 6, "line 2"),
    "qrels-empty": ({"qrels": "query-id\tcorpus-id\tscore\n"}, "test.tsv", None, "no judgements"),
    "qrels-utf8": ({"qrels": QRELS.encode() + b"q1\td\xff\t1\n"}, "test.tsv", 6, "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_beir_bad_input_names_file_and_line(tmp_path, case):
    kwargs, file, line, what = BAD[case]
    ds = beir(beir_folder(tmp_path / "b", **kwargs))
    with pytest.raises(DataError) as err:
        ds.split("queries")
    msg = str(err.value)
    assert file in msg and what in msg, msg
    if line is not None:
        assert f"line {line}:" in msg, msg


def test_beir_missing_files_and_options(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        beir(tmp_path / "nowhere").check()
    root = beir_folder(tmp_path / "b")
    with pytest.raises(DataError, match=r"dev\.tsv: file not found.*test"):
        beir(root, split="dev").check()
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match="corpus.jsonl"):
        beir(root).check()
    with pytest.raises(ConfigError, match="limit_queries"):
        parse_options(BeirOptions, {"path": "x", "limit_queries": 0})


def test_scifact_copy_parses(shared_data):
    ds = beir(shared_data / "scifact")
    assert len(ds.split("corpus")) == 5183 and len(ds.split("queries")) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339


# --------------------------------------------------------------------------------------------
# the task
# --------------------------------------------------------------------------------------------
def test_task_evaluate_in_memory():
    q = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    d = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
    qrels = {"a": {"x": 1}, "b": {"z": 2, "y": 1}}
    out = RetrievalTask.evaluate(q, ["a", "b", "c"], d, ["x", "y", "z", "w"], qrels)
    assert out.main_metric == "ndcg@10" and out.details["num_queries"] == 2
    assert set(out.metrics) == set(metric_keys((1, 3, 5, 10, 100, 1000)))
    assert out.metrics["mrr@1"] == pytest.approx(1.0)  # b: y is first (score 1 vs z 0.707), relevant
    ideal = 2 + 1 / math.log2(3)
    assert out.metrics["ndcg@10"] == pytest.approx((1 + (1 + 2 / math.log2(3)) / ideal) / 2)
    # dot product ties z with x (query a) and with y (query b); ties go to the larger id: z first
    dot = RetrievalTask.evaluate(q, ["a", "b", "c"], d, ["x", "y", "z", "w"], qrels,
                                 RetrievalOptions(similarity="dot", k_values=[1, 10]))
    assert dot.metrics["ndcg@1"] == pytest.approx((0 + 1) / 2)
    assert set(dot.metrics) == set(metric_keys((1, 10)))


def test_task_ignore_identical_ids_like_mteb():
    x = np.eye(3, dtype=np.float32)
    q = np.array([[1.0, 0.5, 0.0]], np.float32)
    qrels = {"a": {"b": 1}}
    kept = RetrievalTask.evaluate(q, ["a"], x, ["a", "b", "c"], qrels)
    dropped = RetrievalTask.evaluate(q, ["a"], x, ["a", "b", "c"], qrels,
                                     RetrievalOptions(ignore_identical_ids=True))
    assert kept.metrics["mrr@10"] == pytest.approx(0.5)  # the query's own id ranks first
    assert dropped.metrics["mrr@10"] == pytest.approx(1.0)


def test_task_run_reads_features_and_encoder_similarity(tmp_path):
    ds = beir(beir_folder(tmp_path / "b"))
    rng = np.random.default_rng(0)
    feats = {"queries": rng.normal(size=(2, 8)).astype(np.float32), "corpus": rng.normal(size=(4, 8)).astype(np.float32)}

    class DotEncoder:
        similarity = "dot"

    ctx = TaskContext(features=lambda s: (feats[s], None), dataset=ds, encoder=DotEncoder())
    task = RetrievalTask(parse_options(RetrievalOptions, {"k_values": [1, 3]}))
    out = task.run(ctx)
    assert out.details["similarity"] == "dot"
    ref = RetrievalTask.evaluate(feats["queries"], ["q1", "q3"], feats["corpus"], ["d1", "d2", "d3", "d4"], ds.qrels,
                                 RetrievalOptions(similarity="dot", k_values=[1, 3]))
    assert out.metrics == ref.metrics
    with pytest.raises(ConfigError, match="similarity"):
        parse_options(RetrievalOptions, {"similarity": "l2"})


SUITE = """
suite: r
device: cpu
encoders:
  mock: {type: mock, dim: 64}
datasets:
  tiny: {type: beir, path: data, split: test}
tasks:
  - {name: tiny-ret, type: retrieval, dataset: tiny, k_values: [1, 5]}
"""


def test_suite_run_with_mock_encoder(tmp_path):
    from clbench.api import run_suite
    from clbench.results.store import read_result

    beir_folder(tmp_path / "data")
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(SUITE))
    summary = run_suite(tmp_path / "suite.yaml")
    r = read_result(tmp_path / "results" / "r" / "mock" / "tiny-ret.json")
    assert r is not None and r["status"] == "ok", r and r.get("reason")
    assert summary.ok and r["main_metric"] == "ndcg@10" and r["main_value"] == r["metrics"]["ndcg@10"]
    assert 0.0 <= r["main_value"] <= 1.0 and "recall@5" in r["metrics"]


# --------------------------------------------------------------------------------------------
# the MTEB bridge (mteb's own mock tasks, and a task built from a local BEIR folder)
# --------------------------------------------------------------------------------------------
class RecordingEncoder(MockEncoder):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.roles: list[tuple[str | None, int]] = []
        self.set_up_on: str | None = None

    def setup(self, device):
        super().setup(device)
        self.set_up_on = device

    def encode(self, batch, modality, role=None):
        assert modality == "text" and all(isinstance(t, str) for t in batch)
        self.roles.append((role, len(batch)))
        return super().encode(batch, modality, role)


def _mteb_run(task_name, encoder, **options):
    from clbench.tasks.mteb_task import MtebOptions, MtebTask

    task = MtebTask(parse_options(MtebOptions, {"task_name": task_name, **options}))
    return task.run(TaskContext(features=None, dataset=None, encoder=encoder, device="cpu"))


def _mock_encoder(cls=MockEncoder, dim=64):
    return cls(parse_options(MockOptions, {"dim": dim}), name="mock")


def test_mteb_bridge_on_mteb_mock_tasks():
    pytest.importorskip("mteb")
    enc = _mock_encoder(RecordingEncoder)
    out = _mteb_run("MockRetrievalTask", enc, split="test")
    assert enc.set_up_on == "cpu"
    assert {r for r, _ in enc.roles} == {"query", "document"}
    assert out.main_metric == "main_score" and out.details["mteb_main_score"] == "ndcg_at_10"
    assert out.metrics["main_score"] == out.metrics["ndcg_at_10"]
    assert out.details["evaluated"] == ["test/default"]
    assert all(math.isfinite(v) for v in out.metrics.values())

    enc.roles.clear()
    sts = _mteb_run("MockSTSTask", enc)
    assert {r for r, _ in enc.roles} == {None}  # symmetric task: no role
    assert sts.details["mteb_main_score"] == "cosine_spearman"
    assert sts.metrics["main_score"] == sts.metrics["cosine_spearman"]

    both = _mteb_run("MockRetrievalTask", _mock_encoder(), main_score="map_at_10")
    assert both.main_metric == "map_at_10" and both.details["evaluated"] == ["val/default", "test/default"]
    assert both.metrics["map_at_10"] == pytest.approx(
        (both.metrics["val/default/map_at_10"] + both.metrics["test/default/map_at_10"]) / 2)

    with pytest.raises(ConfigError, match="no metric"):
        _mteb_run("MockSTSTask", _mock_encoder(), main_score="nope")
    with pytest.raises(ConfigError, match="split"):
        _mteb_run("MockSTSTask", _mock_encoder(), split="dev")
    with pytest.raises(ConfigError, match="unknown MTEB task"):
        _mteb_run("NoSuchTaskAnywhere", _mock_encoder())


def local_beir_task_class(folder: Path, name: str = "LocalBeir"):
    """An mteb retrieval task reading a BEIR folder from disk (no network)."""
    from datasets import Dataset as HFDataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    def rows(file):
        return [json.loads(x) for x in (folder / file).read_text().splitlines() if x.strip()]

    class LocalBeir(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=name, type="Retrieval", main_score="ndcg_at_10", description="BEIR folder read from local disk.",
            reference="https://github.com/beir-cellar/beir", dataset={"path": "NA", "revision": "NA"},
            category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2020-01-01", "2020-01-01"),
            dialect=[], domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived",
            modalities=["text"], sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc=None, **kwargs):
            qrels: dict[str, dict[str, int]] = {}
            for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
                q, d, s = line.split("\t")
                qrels.setdefault(q, {})[d] = int(s)
            queries = [{"id": r["_id"], "text": r["text"]} for r in rows("queries.jsonl") if r["_id"] in qrels]
            corpus = [{"id": r["_id"], "title": r.get("title") or "", "text": r["text"]} for r in rows("corpus.jsonl")]
            split = RetrievalSplitData(queries=HFDataset.from_list(queries), corpus=HFDataset.from_list(corpus),
                                       relevant_docs=qrels, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    LocalBeir.__name__ = name
    return LocalBeir


def register_task_module(cls) -> str:
    module = types.ModuleType("clbench_test_local_tasks")
    setattr(module, cls.__name__, cls)
    sys.modules[module.__name__] = module
    return f"{module.__name__}:{cls.__name__}"


def synthetic_beir(root: Path, rng: np.random.Generator, n_docs=80, n_queries=20) -> Path:
    words = [f"w{i}" for i in range(40)]
    corpus = [{"_id": f"doc{i}", "title": " ".join(rng.choice(words, 2)) if i % 3 else "",
               "text": " ".join(rng.choice(words, int(rng.integers(3, 12))))} for i in range(n_docs)]
    queries = [{"_id": f"qq{i}", "text": " ".join(rng.choice(words, 4))} for i in range(n_queries)]
    lines = ["query-id\tcorpus-id\tscore"]
    for q in queries[:-2]:  # the last two queries stay unjudged
        for j in rng.choice(n_docs, int(rng.integers(1, 5)), replace=False):
            lines.append(f"{q['_id']}\tdoc{j}\t{int(rng.integers(0, 3))}")
    return beir_folder(root, corpus=corpus, queries=queries, qrels="\n".join(lines) + "\n")


def test_mteb_bridge_equals_our_retrieval_pipeline_on_a_local_beir_task(tmp_path):
    pytest.importorskip("mteb")
    folder = synthetic_beir(tmp_path / "syn", np.random.default_rng(7))
    name = register_task_module(local_beir_task_class(folder))
    enc = _mock_encoder(RecordingEncoder, dim=16)  # bag of words in 16 buckets: many exact ties
    theirs = _mteb_run(name, enc)

    ds = beir(folder)
    q, c = ds.split("queries"), ds.split("corpus")
    ours = RetrievalTask.evaluate(
        enc.encode(list(q.items), "text", "query"), list(q.ids), enc.encode(list(c.items), "text", "document"),
        list(c.ids), ds.qrels,
    )
    assert ours.details["num_queries"] == 18
    compared = 0
    for key, value in ours.metrics.items():
        metric, k = key.split("@")
        mteb_key = f"{metric}_at_{k}"
        assert theirs.metrics[mteb_key] == pytest.approx(value, abs=1e-5), key  # MTEB rounds to 5 places
        compared += 1
    assert compared == 30 and theirs.metrics["main_score"] == pytest.approx(ours.metrics["ndcg@10"], abs=1e-5)
