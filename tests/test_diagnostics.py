"""Diagnostics: closed forms on evenly spread and collapsed points, brute-force references, a suite run."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest

from clbench.api import run_suite
from clbench.metrics import diagnostics as dg
from clbench.tasks.diagnostics import DiagnosticsTask


def _orthonormal(n: int, d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, d)))
    return q


def test_uniformity_closed_forms_and_direction():
    d = 5
    simplex = np.eye(d + 1) - 1.0 / (d + 1)  # d+1 points of a regular simplex (in d+1 coordinates)
    # pairwise inner product of the normalised vertices is -1/d: ||z_i - z_j||^2 = 2 + 2/d
    assert dg.uniformity(simplex) == pytest.approx(-2 * (2 + 2 / d), abs=1e-9)
    octahedron = np.vstack([np.eye(3), -np.eye(3)])
    assert dg.uniformity(octahedron) == pytest.approx(math.log((12 * math.exp(-4) + 3 * math.exp(-8)) / 15))
    collapsed = np.tile([[0.3, -1.0, 2.0]], (50, 1))
    assert dg.uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    # uniform on S^2: x.y is uniform on [-1, 1], E exp(-2 ||x - y||^2) = (1 - e^-8) / 8
    sphere = np.random.default_rng(0).normal(size=(3000, 3))
    assert dg.uniformity(sphere) == pytest.approx(math.log((1 - math.exp(-8)) / 8), abs=0.03)
    assert dg.uniformity(sphere) < dg.uniformity(sphere[:, :1] + 0.05 * sphere) < 0.0


def test_uniformity_matches_pairwise_definition():
    x = np.random.default_rng(1).normal(size=(70, 6))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals = [np.exp(-2 * np.sum((z[i] - z[j]) ** 2)) for i in range(70) for j in range(i + 1, 70)]
    assert dg.uniformity(x, chunk=16) == pytest.approx(math.log(np.mean(vals)), rel=1e-10)


def test_rankme_closed_forms():
    assert dg.rankme(np.vstack([np.eye(4), -np.eye(4)])) == pytest.approx(4.0, rel=1e-5)
    assert dg.rankme(np.tile([[1.0, 2.0, 3.0]], (20, 1))) == pytest.approx(1.0, rel=1e-5)
    for r in (1, 3, 7):  # exactly rank r, equal singular values
        x = _orthonormal(100, r) @ _orthonormal(32, r, seed=1).T
        assert dg.rankme(x) == pytest.approx(r, rel=1e-4)
    # random rank-r: close to r, never above it
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 64))
    assert 0.8 * 8 < dg.rankme(x) <= 8.0 + 1e-3
    # the formula on known singular values
    s = np.array([3.0, 2.0, 1.0])
    p = s / s.sum()
    x = np.diag(s)
    assert dg.rankme(x) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-5)


def test_tolerance_alignment_spectrum_against_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 5)), rng.integers(0, 4, 60)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    same = [z[i] @ z[j] for i in range(60) for j in range(60) if i != j and y[i] == y[j]]
    assert dg.tolerance(x, y) == pytest.approx(np.mean(same))
    b = x + 0.1 * rng.normal(size=x.shape)
    zb = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert dg.alignment(x, b) == pytest.approx(np.mean(np.sum((z - zb) ** 2, axis=1)))
    assert dg.alignment(x, 3 * x) == pytest.approx(0.0, abs=1e-12)
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T, bias=True)))[::-1]
    assert dg.singular_spectrum(x) == pytest.approx(ev / ev[0])


def test_hubness_against_sklearn_neighbours():
    from scipy.stats import skew
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(150, 10)), rng.integers(0, 3, 150)
    k = 5
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x)
    _, idx = nn.kneighbors(x)
    idx = idx[:, 1:]  # drop self
    counts = np.bincount(idx.ravel(), minlength=150)
    out = dg.hubness(x, k, labels=y, chunk=32)
    assert out["skewness"] == pytest.approx(skew(counts))
    assert out["antihub_fraction"] == pytest.approx(np.mean(counts == 0))
    assert out["max_occurrence"] == pytest.approx(counts.max() / k)
    assert out["knn_label_agreement"] == pytest.approx(np.mean(y[idx] == y[:, None]))


def test_task_subsample_is_seeded_and_recorded():
    x = np.random.default_rng(5).normal(size=(400, 12))
    a = DiagnosticsTask.evaluate(x, None, {"max_samples": 100}, seed=1)
    b = DiagnosticsTask.evaluate(x, None, {"max_samples": 100}, seed=1)
    c = DiagnosticsTask.evaluate(x, None, {"max_samples": 100}, seed=2)
    assert a.metrics == b.metrics and a.metrics != c.metrics
    assert a.details["subsample"] == {"n": 100, "of": 400, "seed": 1, "pairs": None}
    assert a.metrics["n_samples"] == 100 and "tolerance" not in a.metrics
    assert len(a.details["spectrum"]) == 12 and a.details["spectrum"][0] == 1.0


SUITE = """
suite: diag
device: cpu
encoders:
  emb: {type: precomputed, path: emb.npz}
  pixels: {type: identity}
datasets:
  docs: {type: labels, path: labels.csv, pairs: pairs.csv}
  syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 40, num_classes: 4, dim: 6}
tasks:
  - {name: docs-diag, type: diagnostics, dataset: docs, split: test, k: 5, encoders: [emb]}
  - {name: syn-diag, type: diagnostics, dataset: syn, encoders: [pixels], max_samples: 30}
"""


def test_diagnostics_through_a_suite(tmp_path):
    rng = np.random.default_rng(6)
    n = 80
    ids = np.array([f"doc{i}" for i in range(n)])
    emb = rng.normal(size=(n, 8))
    np.savez(tmp_path / "emb.npz", ids=ids, embeddings=emb)
    labels = np.arange(n) % 4
    (tmp_path / "labels.csv").write_text(
        "id,label,split\n" + "".join(f"{ids[i]},c{labels[i]},{'train' if i < 40 else 'test'}\n" for i in range(n))
    )
    (tmp_path / "pairs.csv").write_text("id_a,id_b\n" + "".join(f"doc{i},doc{i + 1}\n" for i in range(0, n, 2)))
    (tmp_path / "suite.yaml").write_text(textwrap.dedent(SUITE))
    summary = run_suite(tmp_path / "suite.yaml")
    assert summary.ok, [(c.task, c.reason) for c in summary.cells]
    r = json.loads((tmp_path / "results/diag/emb/docs-diag.json").read_text())
    test = emb[40:]
    assert r["main_metric"] == "rankme"
    assert r["metrics"]["rankme"] == pytest.approx(dg.rankme(test), rel=1e-5)
    assert r["metrics"]["uniformity"] == pytest.approx(dg.uniformity(test), rel=1e-5)
    assert r["metrics"]["tolerance"] == pytest.approx(dg.tolerance(test, labels[40:]), rel=1e-5)
    assert r["metrics"]["alignment"] == pytest.approx(dg.alignment(emb[0::2], emb[1::2]), rel=1e-5)
    assert r["details"]["subsample"]["n"] == 40 and r["details"]["subsample"]["pairs"] == 40
    s = json.loads((tmp_path / "results/diag/pixels/syn-diag.json").read_text())
    assert s["status"] == "ok" and s["details"]["subsample"] == {"n": 30, "of": 40, "seed": 0, "pairs": None}


def test_shipped_diagnostics_suite_runs_on_pixels(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "suites" / "diagnostics.yaml").read_text()
    path = tmp_path / "diagnostics.yaml"
    path.write_text(text)
    summary = run_suite(path, only_encoders=["pixels"], device="cpu")
    assert summary.ok and len(summary.cells) == 2


def test_simclr_views_keep_shape_and_are_seeded():
    from clbench.tasks.diagnostics import simclr_view

    img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    a = simclr_view(img, np.random.default_rng(1))
    b = simclr_view(img, np.random.default_rng(1))
    c = simclr_view(img, np.random.default_rng(2))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    gray = simclr_view(img[..., 0], np.random.default_rng(1))
    assert gray.shape == (16, 16)


def test_image_alignment_from_augmented_views(tmp_path):
    suite = """
    suite: img
    device: cpu
    encoders:
      pixels: {type: identity}
    datasets:
      digits: {type: sklearn-digits, test_fraction: 0.3, limit: 200}
    tasks:
      - {name: diag, type: diagnostics, dataset: digits, augment_pairs: 50}
    """
    (tmp_path / "s.yaml").write_text(textwrap.dedent(suite))
    first = run_suite(tmp_path / "s.yaml")
    assert first.ok, first.cells[0].reason
    r = json.loads((tmp_path / "results/img/pixels/diag.json").read_text())
    assert r["metrics"]["alignment"] > 0 and r["details"]["subsample"]["pairs"] == 50
    assert r["details"]["pairs_source"].startswith("two SimCLR-style")
    again = run_suite(tmp_path / "s.yaml", force=True)
    assert json.loads((tmp_path / "results/img/pixels/diag.json").read_text())["metrics"] == r["metrics"]
    assert again.ok


def test_sts_pairs_feed_the_alignment_diagnostic(tmp_path):
    """Text datasets give their sentence pairs to `diagnostics` as positive pairs."""
    import json as _json

    from clbench.api import run_suite
    from clbench.metrics.diagnostics import alignment

    rows = [{"sentence1": f"a cat sat {i}", "sentence2": f"the cat sat {i}", "score": i % 5} for i in range(30)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(_json.dumps(r) for r in rows) + "\n")
    (tmp_path / "suite.yaml").write_text(
        "suite: d\ndevice: cpu\nencoders:\n  mock: {type: mock, dim: 16}\n"
        "datasets:\n  sts: {type: sts, path: pairs.jsonl}\n"
        "tasks:\n  - {name: diag, type: diagnostics, dataset: sts, split: sentences}\n"
    )
    assert run_suite(tmp_path / "suite.yaml").ok
    from clbench.results.store import read_result

    r = read_result(tmp_path / "results/d/mock/diag.json")
    assert "alignment" in r["metrics"]
    from clbench.encoders.mock import MockEncoder
    from clbench.options import parse_options

    enc = MockEncoder(parse_options(MockEncoder.Options, {"dim": 16}))
    a = enc.encode([r_["sentence1"] for r_ in rows], "text")
    b = enc.encode([r_["sentence2"] for r_ in rows], "text")
    assert r["metrics"]["alignment"] == pytest.approx(alignment(a, b), rel=1e-5)


def test_diagnostics_writes_the_spectrum_plot_next_to_its_result(tmp_path):
    from clbench.api import run_suite
    from clbench.results.store import read_result

    (tmp_path / "suite.yaml").write_text(
        "suite: d\ndevice: cpu\nencoders:\n  pixels: {type: identity}\n"
        "datasets:\n  syn: {type: synthetic, kind: vectors, n_train: 40, n_test: 40, num_classes: 4, dim: 8}\n"
        "tasks:\n  - {name: diag, type: diagnostics, dataset: syn}\n"
    )
    assert run_suite(tmp_path / "suite.yaml").ok
    r = read_result(tmp_path / "results/d/pixels/diag.json")
    assert r["artifacts"] == ["diag.spectrum.png"]
    png = (tmp_path / "results/d/pixels/diag.spectrum.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert len(r["details"]["spectrum"]) == 8
