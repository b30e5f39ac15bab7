"""Hostile inputs and disk faults through real suites and the ``clbench run`` command line.

Every case ends in a clear message naming the file (and the line where there is one): a failed
cell with its reason, or a validation error before any work. Never a traceback on the command
line, never a NaN in a report table, and results written earlier stay intact.
"""

from __future__ import annotations

import errno
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _reliability import record
from typer.testing import CliRunner

from clbench.cli import app
from clbench.errors import ClbenchError
from clbench.results.store import load_results, read_result
from clbench.runner import Runner
from clbench.suite import load_suite

HEADER = """
suite: hostile
device: cpu
output: results
cache: cache
"""


def _suite(folder: Path, body: str) -> Path:
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(HEADER) + textwrap.dedent(body))
    return path


def _cli(*args: str) -> tuple[int, str]:
    from clbench import cli

    widths = cli.console.width, cli.err_console.width
    cli.console.width = cli.err_console.width = 2000  # no wrapping inside file names
    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        cli.console.width, cli.err_console.width = widths
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, " ".join(out.split())  # rich wraps long lines: compare on one line


def _run(suite: Path) -> tuple[int, str]:
    return _cli("run", str(suite))


def _results(folder: Path) -> list[dict]:
    results, bad = load_results(folder / "results" / "hostile")
    assert not bad, bad
    return results


def _assert_fails_naming(folder: Path, suite: Path, file: Path, *extra: str) -> str:
    """Run ``suite``: the run fails (exit 1 with a failed cell, or 2 at validation) naming ``file``."""
    code, out = _run(suite)
    assert code in (1, 2), out
    assert str(file) in out, out
    for e in extra:
        assert e in out, (e, out)
    if code == 1:  # the failure reached the result file too, with the same reason
        failed = [r for r in _results(folder) if r["status"] == "failed"]
        assert failed and all(str(file) in r["reason"] for r in failed), failed
    return out


def _walk(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
    else:
        yield node


BAD_CELLS = {"nan", "-nan", "inf", "-inf", "+inf", "infinity", "-infinity"}


def _no_nan_in_reports(folder: Path) -> None:
    """No table cell of any report format is NaN or infinite (reasons may say the word NaN)."""
    import csv
    import io
    import math

    from clbench.results.formats import report

    root = folder / "results" / "hostile"
    code, _ = _cli("report", str(root))
    assert code == 0
    for fmt in ("markdown", "csv", "json", "latex"):
        text = report(root, fmt)
        if fmt == "json":
            values = list(_walk(json.loads(text)))
            assert not [v for v in values if isinstance(v, float) and not math.isfinite(v)], text
            cells = [v for v in values if isinstance(v, str)]
        elif fmt == "csv":
            cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
        elif fmt == "markdown":
            cells = [c for line in text.splitlines() if line.startswith("|") for c in line.strip("|").split("|")]
        else:
            cells = [c for line in text.splitlines() if "&" in line for c in line.rstrip("\\ ").split("&")]
        bad = [c for c in cells if c.strip().strip("*$").strip().lower() in BAD_CELLS]
        assert not bad, (fmt, bad, text)


# ------------------------------------------------------------------ checkpoints


def _png_folder(folder: Path, classes: int = 2, per_class: int = 3, size: int = 16) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            p = folder / f"c{c}" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
    return folder


VISION = """
encoders:
  net: {{type: timm, model: {model}, checkpoint: {ckpt}, num_workers: 0, image_size: 32}}
datasets:
  imgs: {{type: imagefolder, path: imgs, test_fraction: 0.5}}
tasks:
  - {{name: knn, type: knn, dataset: imgs, k: [1]}}
"""


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_truncated_checkpoint_fails_naming_the_file(tmp_path, kind):
    import timm
    import torch

    _png_folder(tmp_path / "imgs")
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    ckpt = tmp_path / f"r18.{kind}"
    if kind == "pth":
        torch.save(sd, ckpt)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # cut in half
    suite = _suite(tmp_path, VISION.format(model="resnet18", ckpt=ckpt.name))
    out = _assert_fails_naming(tmp_path, suite, ckpt)
    assert "CheckpointError" in out
    record(f"checkpoint cut in half ({kind})", "cell fails: CheckpointError naming the file", category="input")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    import timm
    import torch

    _png_folder(tmp_path / "imgs")
    ckpt = tmp_path / "r50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), ckpt)
    suite = _suite(tmp_path, VISION.format(model="resnet18", ckpt=ckpt.name))
    out = _assert_fails_naming(tmp_path, suite, ckpt)
    assert "does not cover the model" in out and "shape mismatches" in out, out
    assert "checkpoint (64, 64, 1, 1) vs model (64, 64, 3, 3)" in out  # resnet50 bottleneck vs basic block
    assert _results(tmp_path)[0]["status"] == "failed"
    record("resnet50 weights given to a resnet18", "cell fails: coverage error (shape mismatch) naming the file; "
           "nothing silently loaded", category="input")


# ------------------------------------------------------------------ degenerate embeddings


PRECOMPUTED = """
encoders:
  emb: {type: precomputed, path: emb.npz}
datasets:
  lab: {type: labels, path: labels.csv}
tasks:
  - {name: knn, type: knn, dataset: lab, k: [3]}
  - {name: probe, type: linear_probe, dataset: lab}
"""


def _labels_csv(path: Path, n: int = 40, classes: int = 4) -> list[str]:
    ids = [f"s{i}" for i in range(n)]
    rows = ["id,label,split"] + [f"{s},{i % classes},{'train' if i < n * 3 // 4 else 'test'}"
                                 for i, s in enumerate(ids)]
    path.write_text("\n".join(rows) + "\n")
    return ids


@pytest.mark.parametrize("bad", ["nan", "inf", "zeros"])
def test_degenerate_embeddings_fail_the_cell_and_never_reach_a_table(tmp_path, bad):
    ids = _labels_csv(tmp_path / "labels.csv")
    emb = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    if bad == "nan":
        emb[3, 2] = np.nan
    elif bad == "inf":
        emb[7] = np.inf
    else:
        emb[:] = 0.0
    np.savez(tmp_path / "emb.npz", ids=np.array(ids), embeddings=emb)
    suite = _suite(tmp_path, PRECOMPUTED)
    code, out = _run(suite)
    assert code == 1, out
    results = _results(tmp_path)
    assert len(results) == 2 and all(r["status"] == "failed" for r in results)
    # the precomputed encoder names its file; the extraction check (any encoder) names the encoder
    expected = f"{tmp_path / 'emb.npz'}: NaN or infinite embeddings" if bad != "zeros" else \
        "encoder 'emb' produced all-zero embeddings"
    assert all(expected in r["reason"] for r in results), [r["reason"] for r in results]
    assert all(r["main_value"] is None and not r["metrics"] for r in results)
    assert expected in out
    _no_nan_in_reports(tmp_path)
    record(f"{bad} embeddings (precomputed encoder)", f"cells fail: '{expected.split(': ')[-1]}'; "
           "no NaN in any report format", category="input")


@pytest.mark.parametrize("bad", ["nan", "zeros"])
def test_degenerate_embeddings_from_a_model_fail_the_cell(tmp_path, monkeypatch, bad):
    from clbench.encoders.mock import MockEncoder

    real = MockEncoder.encode

    def encode(self, batch, modality, role=None):
        out = real(self, batch, modality, role)
        return out * np.nan if bad == "nan" else out * 0.0

    monkeypatch.setattr(MockEncoder, "encode", encode)
    code, _out = _run(_suite(tmp_path, SMALL))
    assert code == 1
    expected = "non-finite embeddings" if bad == "nan" else "all-zero embeddings"
    results = _results(tmp_path)
    assert len(results) == 2 and all(r["status"] == "failed" and expected in r["reason"] for r in results)
    assert not any((tmp_path / "cache").rglob("x.npy"))  # never cached
    _no_nan_in_reports(tmp_path)
    record(f"{bad} embeddings from a model (mock encoder)", f"cells fail: 'encoder ... produced {expected}'; "
           "nothing cached; no NaN in any report format", category="input")


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_images_fail_by_default_naming_the_file(tmp_path, workers):
    _png_folder(tmp_path / "imgs", per_class=4)
    bad = tmp_path / "imgs" / "c1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg " * 20)
    suite = _suite(tmp_path, f"""
        encoders:
          pixels: {{type: identity, num_workers: {workers}}}
        datasets:
          imgs: {{type: imagefolder, path: imgs, test_fraction: 0.5}}
        tasks:
          - {{name: knn, type: knn, dataset: imgs, k: [1]}}
    """)
    _assert_fails_naming(tmp_path, suite, bad, "cannot read the image")
    record("undecodable image file (garbage bytes as .jpg), on_decode_error: fail (default)",
           "cell fails naming the image file", category="input")


@pytest.mark.parametrize("workers", [0, 2])
def test_undecodable_images_skipped_and_counted(tmp_path, workers):
    _png_folder(tmp_path / "imgs", per_class=4)
    bad = [tmp_path / "imgs" / "c1" / "broken.jpg", tmp_path / "imgs" / "c0" / "empty.png"]
    bad[0].write_bytes(os.urandom(300))
    bad[1].write_bytes(b"")
    suite = _suite(tmp_path, f"""
        encoders:
          pixels: {{type: identity, num_workers: {workers}}}
        datasets:
          imgs: {{type: imagefolder, path: imgs, test_fraction: 0.5, on_decode_error: skip}}
        tasks:
          - {{name: knn, type: knn, dataset: imgs, k: [1]}}
    """)
    code, out = _run(suite)
    assert code == 0, out
    (result,) = _results(tmp_path)
    assert result["status"] == "ok"
    info = [f["dataset_info"] for f in result["features"]]
    assert info and all(i["skipped_undecodable"] == 2 for i in info)
    assert sorted(info[0]["skipped_files"]) == sorted(map(str, bad))
    assert sum(f["n"] for f in result["features"]) == 8  # 8 good images of 10
    code, out = _run(suite)  # cached re-run: the count is still there
    assert code == 0 and "up-to-date" in out
    record("undecodable image files (random bytes, empty file), on_decode_error: skip",
           "skipped, counted in the result (dataset_info.skipped_undecodable), run succeeds",
           injections=2, category="input")


# ------------------------------------------------------------------ splits and labels


def _arrays(path: Path, **override) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.standard_normal((30, 5)), "y_train": np.arange(30) % 3,
        "x_test": rng.standard_normal((12, 5)), "y_test": np.arange(12) % 3,
    }
    arrays.update(override)
    np.savez(path, **arrays)


ARRAYS = """
encoders:
  pixels: {type: identity}
datasets:
  feats: {type: arrays, path: feats.npz}
tasks:
  - {name: knn, type: knn, dataset: feats, k: [3]}
  - {name: probe, type: linear_probe, dataset: feats}
"""

SPLIT_CASES = {
    "empty test split": {"x_test": np.zeros((0, 5)), "y_test": np.zeros(0, dtype=int)},
    "single-class train split": {"y_train": np.zeros(30, dtype=int)},
    "negative label": {"y_test": np.array([0, 1, 2, -1] * 3)},
    "test label unseen in train": {"y_test": np.array([0, 1, 2, 7] * 3)},
    "fractional labels": {"y_train": np.arange(30) % 3 + 0.5},
    "NaN features in the data": {"x_train": np.full((30, 5), np.nan)},
    "labels and rows disagree": {"y_test": np.arange(11) % 3},
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_bad_splits_and_labels(tmp_path, case):
    _arrays(tmp_path / "feats.npz", **SPLIT_CASES[case])
    out = _assert_fails_naming(tmp_path, _suite(tmp_path, ARRAYS), tmp_path / "feats.npz")
    if (tmp_path / "results").exists():
        _no_nan_in_reports(tmp_path)
    how = "cells fail" if "failed" in out else "validation error"
    record(f"arrays dataset: {case}", f"{how} naming the file", category="input")


def test_single_class_labels_csv(tmp_path):
    (tmp_path / "labels.csv").write_text("id,label,split\n" + "".join(
        f"s{i},cat,{'train' if i < 8 else 'test'}\n" for i in range(10)))
    np.savez(tmp_path / "emb.npz", ids=np.array([f"s{i}" for i in range(10)]),
             embeddings=np.random.default_rng(0).standard_normal((10, 4)))
    out = _assert_fails_naming(tmp_path, _suite(tmp_path, PRECOMPUTED), tmp_path / "labels.csv")
    assert "one class" in out or "single class" in out or "class" in out
    record("single-class labels file", "cell fails naming the file", category="input")


# ------------------------------------------------------------------ malformed text files


def _sts(folder: Path, name: str, text: str | bytes, fmt: str) -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _suite(folder, f"""
        encoders:
          mock: {{type: mock, dim: 8}}
        datasets:
          sts: {{type: sts, path: {name}, format: {fmt}}}
        tasks:
          - {{name: sts, type: sts, dataset: sts}}
    """)


MALFORMED_STS = {
    "CSV with a missing column": ("pairs.csv", "sentence1,sentence2,score\na,b,1.0\nc,d\n", "csv", "line 3"),
    "CSV with a non-numeric score": ("pairs.csv", "sentence1,sentence2,score\na,b,1.0\nc,d,high\n", "csv", "line 3"),
    "CSV with an unclosed quote": ("pairs.csv", 'sentence1,sentence2,score\na,b,1\n"c,d,2\ne,f,3\n', "csv", None),
    "JSONL with a broken line": ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": \n',
                                 "jsonl", "line 2"),
    "JSONL line that is not an object": ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n[1, 2]\n',
                                         "jsonl", "line 2"),
    "non-UTF-8 CSV": ("pairs.csv", b"sentence1,sentence2,score\na,b,1\n\xff\xfe caf\xe9,d,2\n", "csv", None),
    "empty CSV": ("pairs.csv", "", "csv", None),
}


@pytest.mark.parametrize("case", list(MALFORMED_STS))
def test_malformed_sts_files(tmp_path, case):
    name, text, fmt, line = MALFORMED_STS[case]
    suite = _sts(tmp_path, name, text, fmt)
    _assert_fails_naming(tmp_path, suite, tmp_path / name, *([line] if line else []))
    record(f"sts: {case}", "clear error naming the file" + (" and line" if line else ""), category="input")


def _beir(folder: Path, corpus: str | bytes, queries: str | bytes, qrels: str | bytes) -> Path:
    root = folder / "beir"
    (root / "qrels").mkdir(parents=True)
    for name, text in (("corpus.jsonl", corpus), ("queries.jsonl", queries), ("qrels/test.tsv", qrels)):
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return _suite(folder, """
        encoders:
          mock: {type: mock, dim: 8}
        datasets:
          beir: {type: beir, path: beir}
        tasks:
          - {name: ret, type: retrieval, dataset: beir}
    """)


GOOD_CORPUS = '{"_id": "d1", "title": "", "text": "a b"}\n{"_id": "d2", "title": "t", "text": "c d"}\n'
GOOD_QUERIES = '{"_id": "q1", "text": "a"}\n'
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"
MALFORMED_BEIR = {
    "corpus JSONL with a broken line": (GOOD_CORPUS + '{"_id": "d3", "text": \n', GOOD_QUERIES, GOOD_QRELS,
                                        "corpus.jsonl", "line 3"),
    "corpus with a duplicate id": (GOOD_CORPUS + '{"_id": "d1", "text": "x"}\n', GOOD_QUERIES, GOOD_QRELS,
                                   "corpus.jsonl", "line 3"),
    "queries without text": (GOOD_CORPUS, '{"_id": "q1"}\n', GOOD_QRELS, "queries.jsonl", "line 1"),
    "non-UTF-8 queries": (GOOD_CORPUS, b'{"_id": "q1", "text": "caf\xe9"}\n', GOOD_QRELS, "queries.jsonl", None),
    "qrels row with two fields": (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\n",
                                  "qrels/test.tsv", "line 2"),
    "qrels with a non-integer grade": (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\tyes\n",
                                       "qrels/test.tsv", "line 2"),
    "qrels naming an unknown document": (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td9\t1\n",
                                         "qrels/test.tsv", "line 2"),
}


@pytest.mark.parametrize("case", list(MALFORMED_BEIR))
def test_malformed_beir_files(tmp_path, case):
    corpus, queries, qrels, bad, line = MALFORMED_BEIR[case]
    suite = _beir(tmp_path, corpus, queries, qrels)
    _assert_fails_naming(tmp_path, suite, tmp_path / "beir" / bad, *([line] if line else []))
    record(f"beir: {case}", "clear error naming the file" + (" and line" if line else ""), category="input")


MALFORMED_LABELS = {
    "CSV row with extra fields": ("labels.csv", "id,label,split\ns0,a,train\ns1,b,train,extra\n", "line 3"),
    "CSV row without a label": ("labels.csv", "id,label,split\ns0,a,train\ns1,,test\n", "line 3"),
    "JSONL with a broken line": ("labels.jsonl", '{"id": "s0", "label": "a", "split": "train"}\n{"id": \n', "line 2"),
    "non-UTF-8 CSV": ("labels.csv", b"id,label,split\ns0,caf\xe9,train\n", None),
    "duplicate id": ("labels.csv", "id,label,split\ns0,a,train\ns0,b,test\n", "line 3"),
}


@pytest.mark.parametrize("case", list(MALFORMED_LABELS))
def test_malformed_labels_files(tmp_path, case):
    name, text, line = MALFORMED_LABELS[case]
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    np.savez(tmp_path / "emb.npz", ids=np.array(["s0", "s1"]), embeddings=np.ones((2, 4), dtype=np.float32))
    suite = _suite(tmp_path, PRECOMPUTED.replace("labels.csv", name))
    _assert_fails_naming(tmp_path, suite, tmp_path / name, *([line] if line else []))
    record(f"labels: {case}", "clear error naming the file" + (" and line" if line else ""), category="input")


MALFORMED_COCO = {
    "truncated JSON": '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [',
    "annotations without captions": '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}',
    "captions of unknown images": '{"images": [{"id": 1, "file_name": "a.png"}], '
                                  '"annotations": [{"image_id": 2, "caption": "x"}]}',
    "a list instead of an object": "[1, 2, 3]",
    "non-UTF-8 JSON": b'{"images": [{"id": 1, "file_name": "caf\xe9.png"}], "annotations": []}',
}


@pytest.mark.parametrize("case", list(MALFORMED_COCO))
def test_malformed_coco_captions(tmp_path, case):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    text = MALFORMED_COCO[case]
    ann = tmp_path / "captions.json"
    ann.write_bytes(text if isinstance(text, bytes) else text.encode())
    suite = _suite(tmp_path, """
        encoders:
          mock: {type: mock, dim: 8, num_workers: 0}
        datasets:
          coco: {type: coco-captions, images: images, annotations: captions.json}
        tasks:
          - {name: itr, type: image_text_retrieval, dataset: coco}
    """)
    _assert_fails_naming(tmp_path, suite, ann)
    record(f"COCO captions: {case}", "clear error naming the file", category="input")


MALFORMED_IMAGE_CAPTIONS = {
    "non-UTF-8 CSV": ("caps.csv", b"image,caption\na.png,caf\xe9\n", None),
    "non-UTF-8 JSONL": ("caps.jsonl", b'{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": "\xe9"}\n',
                        None),
    "CSV without the caption column": ("caps.csv", "image,text\na.png,hello\n", None),
    "JSONL with a broken line": ("caps.jsonl", '{"image": "a.png", "caption": "ok"}\n{"image": \n', "line 2"),
    "caption list that is empty": ("caps.jsonl", '{"image": "a.png", "caption": []}\n', "line 1"),
}


@pytest.mark.parametrize("case", list(MALFORMED_IMAGE_CAPTIONS))
def test_malformed_image_captions(tmp_path, case):
    from PIL import Image

    name, text, line = MALFORMED_IMAGE_CAPTIONS[case]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    suite = _suite(tmp_path, f"""
        encoders:
          mock: {{type: mock, dim: 8, num_workers: 0}}
        datasets:
          caps: {{type: image-captions, path: {name}}}
        tasks:
          - {{name: itr, type: image_text_retrieval, dataset: caps}}
    """)
    _assert_fails_naming(tmp_path, suite, tmp_path / name, *([line] if line else []))
    record(f"image-captions: {case}", "clear error naming the file" + (" and line" if line else ""),
           category="input")


def test_non_utf8_suite_file(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_bytes(b"suite: caf\xe9\n")
    code, out = _cli("run", str(path))
    assert code == 2 and str(path) in out and "UTF-8" in out
    record("non-UTF-8 suite file", "validation error naming the file", category="input")


# ------------------------------------------------------------------ full disk, read-only folders


SMALL = """
encoders:
  mock: {type: mock, dim: 8, num_workers: 0}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 5}
tasks:
  - {name: k1, type: knn, dataset: syn, k: [3]}
  - {name: k2, type: knn, dataset: syn, k: [5]}
"""


def _fail_under(monkeypatch, root: Path, code: int) -> list[str]:
    """Make writes (os.open for writing, os.mkdir, os.replace, os.rename) below ``root`` fail with
    ``code`` (ENOSPC: a full disk; EROFS: a read-only mount); the paths refused."""
    root = str(root.resolve())
    refused: list[str] = []

    def below(p) -> bool:
        try:
            return os.path.abspath(os.fspath(p)).startswith(root)
        except TypeError:
            return False

    def guard(real, path_args, check_flags=False):
        def wrapped(*args, **kwargs):
            writing = not check_flags or (len(args) > 1 and args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and any(below(args[i]) for i in path_args if i < len(args)):
                refused.append(os.fspath(args[path_args[-1]]))
                raise OSError(code, os.strerror(code), os.fspath(args[path_args[-1]]))
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "open", guard(os.open, (0,), check_flags=True))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, (0,)))
    monkeypatch.setattr(os, "replace", guard(os.replace, (1,)))
    monkeypatch.setattr(os, "rename", guard(os.rename, (1,)))
    return refused


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_unwritable_results_stop_the_run_and_keep_earlier_results(tmp_path, monkeypatch, code):
    suite = load_suite(_suite(tmp_path, SMALL))
    Runner(suite).run(only_tasks=["k1"])
    first = suite.output / "hostile" / "mock" / "k1.json"
    before = first.read_bytes()
    refused = _fail_under(monkeypatch, suite.output, code)
    with pytest.raises(ClbenchError) as info:
        Runner(suite).run()
    msg = str(info.value)
    assert str(suite.output / "hostile" / "mock") in msg and os.strerror(code) in msg, msg
    assert refused
    monkeypatch.undo()
    assert first.read_bytes() == before and read_result(first)["status"] == "ok"
    assert not (suite.output / "hostile" / "mock" / "k2.json").exists()
    assert not [p for p in suite.output.rglob(".*")], "temporary or lock files left"
    name = errno.errorcode[code]
    record(f"results folder unwritable ({name}, simulated)", "run stops with an error naming the path; earlier "
           "results intact and valid, no temporary file", category="disk")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_result_write_failing_after_compute(tmp_path, monkeypatch, code):
    """The lock can be taken but the result itself cannot be written (the disk fills meanwhile)."""
    suite = load_suite(_suite(tmp_path, SMALL))
    Runner(suite).run(only_tasks=["k1"])
    first = suite.output / "hostile" / "mock" / "k1.json"
    before = first.read_bytes()
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("k2.json"):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ClbenchError) as info:
        Runner(suite).run()
    target = suite.output / "hostile" / "mock" / "k2.json"
    assert str(target) in str(info.value) and os.strerror(code) in str(info.value)
    assert "intact" in str(info.value)
    monkeypatch.undo()
    assert first.read_bytes() == before
    assert not target.exists() and not [p for p in suite.output.rglob(".*")]
    record(f"result write fails after computing ({errno.errorcode[code]}, simulated)",
           "run stops naming the result file; earlier results intact, no temporary file", category="disk")


DISK_DRIVER = """
import errno, os, sys
real = os.replace
def replace(src, dst, *a, **kw):
    if str(dst).endswith("k2.json"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    return real(src, dst, *a, **kw)
os.replace = replace
from clbench.cli import main
sys.argv = ["clbench", "run", sys.argv[1]]
main()
"""


def test_full_disk_through_the_command_line(tmp_path):
    import subprocess
    import sys

    suite = _suite(tmp_path, SMALL)
    (tmp_path / "driver.py").write_text(DISK_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), COLUMNS="300")
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(suite)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert "No space left on device" in out and "k2.json" in out
    assert read_result(tmp_path / "results" / "hostile" / "mock" / "k1.json")["status"] == "ok"
    record("full disk during `clbench run` (subprocess)", "exit 2 with 'error: <file>: cannot write the result (No "
           "space left on device)', no traceback, earlier results intact", category="disk")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_unwritable_feature_cache_falls_back_to_memory(tmp_path, monkeypatch, code):
    suite = load_suite(_suite(tmp_path, SMALL))
    (tmp_path / "ref").mkdir()
    reference = load_suite(_suite(tmp_path / "ref", SMALL))
    Runner(reference).run()
    refused = _fail_under(monkeypatch, suite.cache, code)
    lines: list[str] = []

    class Console:
        is_terminal = False

        def print(self, msg, **_kw):
            lines.append(str(msg))

    summary = Runner(suite, console=Console()).run()
    assert refused and summary.ok
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and str(suite.cache) in warnings[0] and "in memory" in warnings[0], lines
    for task in ("k1", "k2"):
        got = read_result(suite.output / "hostile" / "mock" / f"{task}.json")
        want = read_result(reference.output / "hostile" / "mock" / f"{task}.json")
        assert got["status"] == "ok" and got["metrics"] == want["metrics"]
        assert all(os.strerror(code) in f["cache_error"] for f in got["features"] if not f["cached"])
    monkeypatch.undo()
    assert not (suite.cache / "features").exists() or not any((suite.cache / "features").rglob("x.npy"))
    record(f"feature cache folder unwritable ({errno.errorcode[code]}, simulated)",
           "one warning naming the folder; features kept in memory; same metrics as a normal run; "
           "cache_error recorded in the result", category="disk")


def test_corrupt_result_file_is_recomputed_not_trusted(tmp_path):
    suite_path = _suite(tmp_path, SMALL)
    code, _ = _run(suite_path)
    assert code == 0
    path = tmp_path / "results" / "hostile" / "mock" / "k1.json"
    path.write_text(path.read_text()[:50])  # truncated by hand
    code, out = _run(suite_path)
    assert code == 0 and "ok mock × k1" in out
    assert read_result(path)["status"] == "ok"
    json.loads(path.read_text())
    record("truncated result file", "not trusted: the cell is recomputed and the file rewritten", category="disk")
