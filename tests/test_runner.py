"""Runner, feature cache and results: resume, isolation, zero forward passes on a re-run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clbench import features
from clbench.api import run_suite
from clbench.cli import app
from clbench.encoders.mock import MockEncoder
from clbench.features import FeatureCache
from clbench.results.store import read_result

SUITE = """
suite: demo
device: cpu
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 16}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 120, n_test: 60, num_classes: 4, dim: 12}
tasks:
  - {name: syn-knn, type: knn, dataset: syn, k: [5, 10]}
  - {name: syn-linear, type: linear_probe, dataset: syn, encoders: [mock]}
"""


def _write(tmp_path: Path, text: str = SUITE) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _result(tmp_path, enc, task):
    return read_result(tmp_path / "results" / "demo" / enc / f"{task}.json")


def test_run_writes_one_result_per_cell_with_provenance(tmp_path):
    summary = run_suite(_write(tmp_path))
    assert summary.ok
    assert sorted((c.encoder, c.task) for c in summary.cells) == [
        ("mock", "syn-knn"), ("mock", "syn-linear"), ("pixels", "syn-knn"),
    ]
    assert not (tmp_path / "results/demo/pixels/syn-linear.json").exists()  # restricted to mock
    r = _result(tmp_path, "pixels", "syn-knn")
    for key in ("suite", "encoder", "task", "task_type", "dataset", "status", "metrics", "main_metric",
                "main_value", "options", "options_hash", "comparability_hash", "seed", "device", "timings",
                "versions", "timestamp", "protocol_version", "peak_memory", "fingerprints"):
        assert key in r, key
    assert r["status"] == "ok" and r["main_metric"] == "top1@k5"  # first k when 20 is absent
    assert r["main_value"] == r["metrics"]["top1@k5"]
    assert r["options"]["task"]["k"] == [5, 10]
    assert r["options"]["dataset"]["type"] == "synthetic"
    assert set(r["timings"]) >= {"extraction_s", "fit_s", "total_s"}
    assert r["versions"]["python"] and r["versions"]["numpy"]
    # same column, same comparability hash, different options hash
    m = _result(tmp_path, "mock", "syn-knn")
    assert m["comparability_hash"] == r["comparability_hash"] and m["options_hash"] != r["options_hash"]


def test_identity_knn_matches_direct_computation(tmp_path):
    """The runner's k-NN on raw vectors equals the protocol run directly on the dataset arrays."""
    from clbench.api import evaluate_features
    from clbench.suite import build_dataset, load_suite

    path = _write(tmp_path)
    run_suite(path)
    ds = build_dataset(load_suite(path), "syn")
    tr, te = ds.split("train"), ds.split("test")
    xtr = np.asarray([np.ravel(v) for v in tr.items], dtype=np.float32)
    xte = np.asarray([np.ravel(v) for v in te.items], dtype=np.float32)
    direct = evaluate_features("knn", xtr, tr.labels, xte, te.labels, k=[5, 10])
    assert _result(tmp_path, "pixels", "syn-knn")["metrics"] == pytest.approx(direct.metrics)


def test_rerun_does_zero_forward_passes_and_leaves_files(tmp_path):
    path = _write(tmp_path)
    run_suite(path)
    files = sorted((tmp_path / "results").rglob("*.json"))
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    calls, batches = MockEncoder.calls, features.STATS["forward_batches"]
    summary = run_suite(path)
    assert {c.status for c in summary.cells} == {"up-to-date"}
    assert MockEncoder.calls == calls and features.STATS["forward_batches"] == batches
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before


def test_forced_rerun_uses_the_feature_cache(tmp_path):
    path = _write(tmp_path)
    run_suite(path)
    calls, batches = MockEncoder.calls, features.STATS["forward_batches"]
    summary = run_suite(path, force=True)
    assert {c.status for c in summary.cells} == {"ok"}
    assert MockEncoder.calls == calls and features.STATS["forward_batches"] == batches  # all from cache


def test_changed_task_options_recompute_only_that_cell(tmp_path):
    path = _write(tmp_path)
    run_suite(path)
    path.write_text(textwrap.dedent(SUITE).replace("k: [5, 10]", "k: [3]"))
    summary = run_suite(path)
    status = {(c.encoder, c.task): c.status for c in summary.cells}
    assert status[("mock", "syn-linear")] == "up-to-date"
    assert status[("mock", "syn-knn")] == "ok" and status[("pixels", "syn-knn")] == "ok"
    assert _result(tmp_path, "mock", "syn-knn")["main_metric"] == "top1@k3"


def test_corrupted_cache_entry_is_recomputed(tmp_path):
    path = _write(tmp_path)
    first = run_suite(path)
    cache = FeatureCache()
    entries = [p for p in (cache.root / "features").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    assert entries
    for entry in entries:  # truncate every x.npy
        x = entry / "x.npy"
        x.write_bytes(x.read_bytes()[:-7])
    corrupt, batches = features.STATS["recomputed_corrupt"], features.STATS["forward_batches"]
    second = run_suite(path, force=True)
    assert features.STATS["recomputed_corrupt"] - corrupt == len(entries)
    assert features.STATS["forward_batches"] > batches
    assert [c.main_value for c in second.cells] == [c.main_value for c in first.cells]


def test_failed_cell_is_isolated_and_resumed(tmp_path):
    failing = SUITE.replace("mock: {type: mock, dim: 16}", "mock: {type: mock, dim: 16, fail: true}")
    path = _write(tmp_path, failing)
    summary = run_suite(path)
    status = {(c.encoder, c.task): c.status for c in summary.cells}
    assert status == {("pixels", "syn-knn"): "ok", ("mock", "syn-knn"): "failed", ("mock", "syn-linear"): "failed"}
    r = _result(tmp_path, "mock", "syn-knn")
    assert r["status"] == "failed" and "asked to fail" in r["reason"] and "Traceback" in r["error"]["traceback"]
    ok_file = tmp_path / "results/demo/pixels/syn-knn.json"
    stamp = ok_file.stat().st_mtime_ns
    # fix the encoder: options changed, so its cells rerun; the good cell is left untouched
    path.write_text(textwrap.dedent(SUITE))
    summary = run_suite(path)
    status = {(c.encoder, c.task): c.status for c in summary.cells}
    assert status == {("pixels", "syn-knn"): "up-to-date", ("mock", "syn-knn"): "ok", ("mock", "syn-linear"): "ok"}
    assert ok_file.stat().st_mtime_ns == stamp


def test_failed_cell_is_retried_on_rerun(tmp_path):
    """A failed result is never taken as done: the same suite reruns it."""
    text = SUITE.replace("syn: {type: synthetic", "arr: {type: arrays, path: feats.npz}\n  syn: {type: synthetic")
    text = text.replace("tasks:\n", "tasks:\n  - {name: arr-knn, type: knn, dataset: arr, k: [3], encoders: [pixels]}\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "feats.npz", x_train=rng.normal(size=(30, 4)), y_train=rng.integers(0, 3, 30),
             x_test=rng.normal(size=(9, 4)), y_test=np.array([0, 1, 2] * 3))
    path = _write(tmp_path, text)
    assert run_suite(path).ok
    # the data becomes unusable (NaN features): the cell fails, others stay done
    np.savez(tmp_path / "feats.npz", x_train=np.full((30, 4), np.nan), y_train=rng.integers(0, 3, 30),
             x_test=rng.normal(size=(9, 4)), y_test=np.array([0, 1, 2] * 3))
    summary = run_suite(path)
    status = {(c.encoder, c.task): c.status for c in summary.cells}
    assert status[("pixels", "arr-knn")] == "failed" and "NaN" in _result(tmp_path, "pixels", "arr-knn")["reason"]
    assert status[("pixels", "syn-knn")] == "up-to-date"
    assert _result(tmp_path, "pixels", "arr-knn")["main_value"] is None
    # unchanged suite and data: the failed cell is tried again, never taken as done
    summary = run_suite(path)
    status = {(c.encoder, c.task): c.status for c in summary.cells}
    assert status[("pixels", "arr-knn")] == "failed" and status[("mock", "syn-knn")] == "up-to-date"


def test_incapable_pair_is_a_skipped_cell(tmp_path):
    text = SUITE.replace("mock: {type: mock, dim: 16}", "mock: {type: mock, dim: 16, modalities: [text]}")
    summary = run_suite(_write(tmp_path, text))
    assert summary.ok
    r = _result(tmp_path, "mock", "syn-knn")
    assert r["status"] == "skipped" and "does not take array inputs" in r["reason"]


def test_only_filters(tmp_path):
    summary = run_suite(_write(tmp_path), only_encoders=["mock"], only_tasks=["syn-knn"])
    assert [(c.encoder, c.task) for c in summary.cells] == [("mock", "syn-knn")]


def test_result_files_are_valid_json_and_no_temp_files_left(tmp_path):
    run_suite(_write(tmp_path))
    for f in (tmp_path / "results").rglob("*"):
        assert not f.name.startswith("."), f
        if f.suffix == ".json":
            json.loads(f.read_text())


# -- CLI --------------------------------------------------------------------------------------
cli = CliRunner()


def test_cli_run_exit_codes_and_summary(tmp_path):
    path = _write(tmp_path)
    res = cli.invoke(app, ["run", str(path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "syn-knn" in res.output and "ok" in res.output
    failing = _write(tmp_path, SUITE.replace("dim: 16}", "dim: 16, fail: true}"))
    res = cli.invoke(app, ["run", str(failing)])
    assert res.exit_code == 1
    assert "failed" in res.output


def test_cli_validate_reports_key_path_without_traceback(tmp_path):
    path = _write(tmp_path, SUITE.replace("k: [5, 10]", "k: [5, x]"))
    res = cli.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2
    assert "tasks[0].k[1]" in res.output and "Traceback" not in res.output
    ok = cli.invoke(app, ["validate", str(_write(tmp_path))])
    assert ok.exit_code == 0 and "3 cell(s)" in ok.output


def test_cli_unknown_only_encoder(tmp_path):
    res = cli.invoke(app, ["run", str(_write(tmp_path)), "--only-encoder", "nope"])
    assert res.exit_code == 2 and "--only-encoder" in res.output


def test_cli_list_shows_options_and_defaults():
    res = cli.invoke(app, ["list", "tasks"])
    assert res.exit_code == 0
    assert "knn" in res.output and "temperature" in res.output and "0.07" in res.output
    res = cli.invoke(app, ["list", "encoders"])
    assert "identity" in res.output and "batch_size" in res.output


def test_cli_report_and_gate_never_import_torch(tmp_path):
    run_suite(_write(tmp_path))
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from clbench.cli import app\n"
        f"r = CliRunner().invoke(app, ['report', {str(tmp_path / 'results/demo')!r}, '--format', 'csv'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"g = CliRunner().invoke(app, ['gate', {str(tmp_path / 'results/demo')!r}, '--baseline', "
        f"{str(tmp_path / 'results/demo')!r}])\n"
        "assert g.exit_code == 0, g.output\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'mteb') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(r.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "syn-knn" in out.stdout


def test_fingerprints_are_computed_once_per_run(tmp_path, monkeypatch):
    """Fingerprints may walk a dataset folder or hash weights: once per object, not per split or cell."""
    from clbench.datasets.synthetic import SyntheticDataset

    calls = []
    original = SyntheticDataset.fingerprint

    def counting(self):
        calls.append(self.name)
        return original(self)

    monkeypatch.setattr(SyntheticDataset, "fingerprint", counting)
    summary = run_suite(_write(tmp_path))  # 3 cells, 2 splits each, one dataset
    assert summary.ok
    assert calls == ["syn"]
