"""`clbench report` in every format and `clbench gate` through the CLI, on real run output."""

from __future__ import annotations

import csv
import io
import json
import shutil
import textwrap

import pytest
from typer.testing import CliRunner

from clbench.api import evaluate, run_suite
from clbench.cli import app
from clbench.registry import Registry
from clbench.results.store import read_result, write_result

SUITE = """
suite: demo
device: cpu
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 16}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 120, n_test: 60, num_classes: 4, dim: 12}
tasks:
  - {name: syn-knn, type: knn, dataset: syn, k: [5]}
"""
cli = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    (tmp / "suite.yaml").write_text(textwrap.dedent(SUITE))
    assert run_suite(tmp / "suite.yaml").ok
    return tmp / "results" / "demo"


def _values(results):
    return {e: read_result(results / e / "syn-knn.json")["main_value"] for e in ("pixels", "mock")}


def test_report_formats(results, tmp_path):
    values = _values(results)
    md = cli.invoke(app, ["report", str(results)])
    assert md.exit_code == 0
    assert "| encoder |" in md.output and "syn-knn" in md.output
    for enc, v in values.items():
        assert enc in md.output and f"{v:.4f}" in md.output

    res = cli.invoke(app, ["report", str(results), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(res.output)))
    got = {r["encoder"]: float(next(v for k, v in r.items() if k.startswith("syn-knn"))) for r in rows if r["encoder"]}
    assert got == pytest.approx(values)

    res = cli.invoke(app, ["report", str(results), "--format", "latex"])
    assert "\\toprule" in res.output and "\\bottomrule" in res.output and "\\textbf{" in res.output

    out = tmp_path / "table.json"
    res = cli.invoke(app, ["report", str(results), "--format", "json", "--output", str(out)])
    assert res.exit_code == 0
    json.loads(out.read_text())


def test_gate_passes_identical_and_fails_a_regression(results, tmp_path):
    assert cli.invoke(app, ["gate", str(results), "--baseline", str(results)]).exit_code == 0
    worse = tmp_path / "worse"
    shutil.copytree(results, worse)
    path = worse / "mock" / "syn-knn.json"
    r = read_result(path)
    r["main_value"] -= 0.05
    r["metrics"][r["main_metric"]] = r["main_value"]
    write_result(path, r)
    res = cli.invoke(app, ["gate", str(worse), "--baseline", str(results), "--max-drop", "0.01"])
    assert res.exit_code == 1
    assert "mock" in res.output and "syn-knn" in res.output
    assert cli.invoke(app, ["gate", str(worse), "--baseline", str(results), "--max-drop", "0.1"]).exit_code == 0
    # a baseline cell missing from the candidate fails the gate
    path.unlink()
    assert cli.invoke(app, ["gate", str(worse), "--baseline", str(results), "--max-drop", "0.1"]).exit_code == 1


def test_report_missing_folder_is_a_clear_error(tmp_path):
    res = cli.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no such results folder" in res.output


def test_evaluate_api_one_cell(tmp_path):
    r = evaluate(
        {"type": "identity"},
        {"type": "synthetic", "kind": "vectors", "n_train": 60, "n_test": 30, "num_classes": 3, "dim": 4},
        {"type": "knn", "k": [5]},
        output=tmp_path,
        device="cpu",
    )
    assert r["status"] == "ok" and r["main_metric"] == "top1@k5" and 0 <= r["main_value"] <= 1
    assert (tmp_path / "api" / "encoder" / "task.json").exists()


def test_entry_point_plugins_are_found(monkeypatch):
    """A third-party package adds a plugin through the `clbench.encoders` entry-point group."""
    import importlib.metadata as md

    ep = md.EntryPoint(name="third-party", value="clbench.encoders.mock:MockEncoder", group="clbench.encoders")

    def fake_entry_points(group=None):
        return [ep] if group == "clbench.encoders" else []

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    reg = Registry("encoders", {})
    assert "third-party" in reg.names()
    from clbench.encoders.mock import MockEncoder

    assert reg.get("third-party") is MockEncoder
