"""Tables, exports and the CI gate, on result files written with the store's ``write_result``."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clbench.results.formats import FORMATS, latex_escape, render, report
from clbench.results.gate import gate
from clbench.results.store import SCHEMA_VERSION, cell_path, write_result
from clbench.results.table import build_table

TASKS = {  # task -> (task_type, main metric)
    "knn": ("knn", "top1"),
    "linear": ("linear_probe", "accuracy"),
    "sts": ("sts", "spearman"),
}


def make_result(
    encoder: str,
    task: str,
    value: float | None = None,
    *,
    suite: str = "demo",
    status: str = "ok",
    reason: str | None = None,
    protocol_version: str = "1",
    comparability_hash: str | None = None,
    **extra,
) -> dict:
    task_type, metric = TASKS[task]
    metrics = {} if value is None else {metric: value, "extra_metric": 0.123456789}
    result = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite,
        "encoder": encoder,
        "task": task,
        "task_type": task_type,
        "dataset": f"{task}-data",
        "status": status,
        "reason": reason,
        "error": {"type": "RuntimeError", "message": reason, "traceback": "..."}
        if status == "failed"
        else None,
        "metrics": metrics,
        "main_metric": metric,
        "main_value": value,
        "protocol_version": protocol_version,
        "options": {"encoder": {"name": encoder}, "dataset": {"root": "/data"}, "task": {"k": 20}},
        "options_hash": f"opt-{encoder}-{task}",
        "comparability_hash": comparability_hash or f"cmp-{task}-v{protocol_version}",
        "coverage": None,
        "seed": 0,
        "device": "cpu",
        "timings": {"extraction_s": 1.0, "fit_s": 0.5, "total_s": 1.5},
        "throughput": None,
        "peak_memory": None,
        "versions": {"clbench": "0.1.0"},
        "git": None,
        "timestamp": "2024-01-01T00:00:00+00:00",
        "fingerprints": {},
        "details": {},
    }
    result.update(extra)
    return result


def fixture_results() -> list[dict]:
    """3 encoders x 3 tasks: a failed, a skipped, a missing and an incomparable cell."""
    incomparable = make_result(
        "moco", "knn", 0.99, protocol_version="2", options={"dataset": {"root": "/data"}, "task": {"k": 200}}
    )
    return [
        make_result("resnet_18", "knn", 0.9123456789),
        make_result("resnet_18", "linear", 0.85),
        make_result("resnet_18", "sts", status="skipped", reason="needs a text encoder"),
        make_result("vit_b", "knn", 0.95),
        make_result("vit_b", "linear", status="failed", reason="CUDA out of memory"),
        make_result("vit_b", "sts", 0.5),
        incomparable,
        make_result("moco", "linear", 0.7),
    ]


def write_all(folder: Path, results: list[dict]) -> Path:
    for r in results:
        write_result(cell_path(folder, r["suite"], r["encoder"], r["task"]), r)
    return folder


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return write_all(tmp_path / "results", fixture_results())


# ---- table ---------------------------------------------------------------------------------


def test_table_layout_and_incomparable_mark(results_dir):
    from clbench.results.store import load_results

    results, bad = load_results(results_dir)
    assert bad == []
    table = build_table(results)
    assert [r.label for r in table.rows] == ["moco", "resnet_18", "vit_b"]  # alphabetical
    assert [c.label for c in table.columns] == ["knn (top1)", "linear (accuracy)", "sts (spearman)"]
    moco_knn = table.rows[0].cells[0]
    assert moco_knn.marks == ["†"] and not moco_knn.comparable
    assert table.columns[0].protocol_version == "1"
    (note,) = table.footnotes
    assert note.mark == "†"
    assert "protocol_version 2 (column: 1)" in note.text
    assert "task.k=200 (column: 20)" in note.text
    assert "dataset" not in note.text.split("options differ:")[1]  # equal options are not listed
    vit_linear = table.rows[2].cells[1]
    assert (vit_linear.status, vit_linear.reason) == ("failed", "CUDA out of memory")
    assert table.rows[0].cells[2].status == "missing"
    assert "vit_b × linear (accuracy): failed: CUDA out of memory" in table.cell_notes
    assert "resnet_18 × sts (spearman): skipped: needs a text encoder" in table.cell_notes


def test_table_does_not_depend_on_input_order():
    results = fixture_results()
    assert build_table(results) == build_table(list(reversed(results)))


def test_same_task_name_different_task_type_gets_separate_columns():
    a = make_result("enc", "knn", 0.5)
    b = make_result("enc", "knn", 0.6, suite="other", task_type="knn_cosine")
    table = build_table([a, b])
    assert [c.label for c in table.columns] == ["knn [knn] (top1)", "knn [knn_cosine] (top1)"]
    assert [r.label for r in table.rows] == ["demo/enc", "other/enc"]  # several suites
    assert table.footnotes == []


def test_comparability_hash_difference_is_marked():
    results = [
        make_result("a", "knn", 0.5),
        make_result("b", "knn", 0.6),
        make_result("c", "knn", 0.7, comparability_hash="something-else"),
    ]
    table = build_table(results)
    assert [r.cells[0].marks for r in table.rows] == [[], [], ["†"]]
    assert "comparability_hash something-el (column: cmp-knn-v1)" in table.footnotes[0].text


# ---- formats -------------------------------------------------------------------------------


def test_markdown(results_dir):
    text = report(results_dir, "markdown")
    lines = text.splitlines()
    assert lines[:5] == [
        "| encoder | knn (top1) | linear (accuracy) | sts (spearman) |",
        "|:--|--:|--:|--:|",
        "| moco | 0.9900† | 0.7000 | – |",  # the incomparable 0.99 is not the bold best
        "| resnet_18 | 0.9123 | **0.8500** | skipped |",
        "| vit_b | **0.9500** | failed | 0.5000 |",  # a lone sts value is not bolded
    ]
    assert any(line.startswith("- † knn (top1): protocol_version 2 (column: 1)") for line in lines)
    assert "- vit_b × linear (accuracy): failed: CUDA out of memory" in lines


def test_csv_round_trips_full_precision(results_dir):
    rows = list(csv.reader(io.StringIO(report(results_dir, "csv"))))
    assert rows[0] == ["suite", "encoder", "knn (top1)", "linear (accuracy)", "sts (spearman)", "notes"]
    body = {r[1]: r[2:5] for r in rows[1:]}
    assert body == {
        "moco": ["0.99", "0.7", ""],
        "resnet_18": ["0.9123456789", "0.85", "skipped"],
        "vit_b": ["0.95", "failed", "0.5"],
    }
    assert float(body["resnet_18"][0]) == 0.9123456789
    notes = {r[1]: r[5] for r in rows[1:]}
    assert notes["moco"].startswith("† knn (top1): protocol_version 2")
    assert notes["vit_b"] == "linear (accuracy): failed: CUDA out of memory"


def test_latex_booktabs_bold_and_escaping(results_dir):
    text = report(results_dir, "latex")
    lines = text.splitlines()
    assert lines[0] == r"\begin{tabular}{lrrr}"
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert lines.count(rule) == 1
    assert r"encoder & knn (top1) & linear (accuracy) & sts (spearman) \\" in lines
    assert r"moco & 0.9900$^{\dagger}$ & 0.7000 & -- \\" in lines
    assert r"resnet\_18 & 0.9123 & \textbf{0.8500} & skipped \\" in lines
    assert r"vit\_b & \textbf{0.9500} & failed & 0.5000 \\" in lines
    assert r"$^{\dagger}$ knn (top1): protocol\_version 2 (column: 1)" in text
    assert latex_escape("a_b 5% R&D #1") == r"a\_b 5\% R\&D \#1"


def test_json_parses_back_with_all_metrics(results_dir):
    doc = json.loads(report(results_dir, "json"))
    assert [c["label"] for c in doc["columns"]] == ["knn (top1)", "linear (accuracy)", "sts (spearman)"]
    rows = {r["encoder"]: r for r in doc["rows"]}
    knn = rows["resnet_18"]["cells"][0]
    assert knn["main_value"] == 0.9123456789
    assert knn["metrics"] == {"top1": 0.9123456789, "extra_metric": 0.123456789}
    assert rows["moco"]["cells"][0]["comparable"] is False
    assert rows["moco"]["cells"][0]["footnotes"] == ["†"]
    assert rows["moco"]["cells"][2]["status"] == "missing"
    assert rows["vit_b"]["cells"][1]["reason"] == "CUDA out of memory"
    assert doc["footnotes"][0]["mark"] == "†"


def test_lower_is_better_bolds_the_minimum():
    results = [
        make_result("a", "knn", 0.5, higher_is_better=False),
        make_result("b", "knn", 0.2, higher_is_better=False),
    ]
    assert "| b | **0.2000** |" in render(build_table(results), "markdown")


def test_precision_follows_the_scale():
    results = [make_result("a", "knn", 91.23456), make_result("b", "knn", 88.0)]
    assert "| a | **91.23** |" in render(build_table(results), "markdown")


def test_invalid_files_are_noted_not_fatal(results_dir):
    (results_dir / "broken.json").write_text("{ not json")
    (results_dir / "other.json").write_text('{"schema_version": 99}')
    for fmt in FORMATS:
        text = report(results_dir, fmt)
        assert "broken.json" in text and "other.json" in text, fmt


def test_empty_folder_gives_a_clear_message(tmp_path):
    assert report(tmp_path, "markdown") == f"No clbench results found in {tmp_path}.\n"
    assert report(tmp_path, "latex").startswith("% No clbench results")
    doc = json.loads(report(tmp_path, "json"))
    assert doc["rows"] == [] and doc["notes"] == [f"no results found in {tmp_path}"]


def test_unknown_format_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="markdown"):
        report(tmp_path, "xlsx")
    with pytest.raises(FileNotFoundError):
        report(tmp_path / "nope", "markdown")


def test_results_modules_do_not_import_torch_or_numpy():
    code = (
        "import sys, clbench.results.table, clbench.results.formats, clbench.results.gate, "
        "clbench.results.compare; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- gate ----------------------------------------------------------------------------------


def gate_on(tmp_path: Path, current: list[dict], baseline: list[dict] | None = None, **kw):
    base = write_all(tmp_path / "baseline", fixture_results() if baseline is None else baseline)
    cur = write_all(tmp_path / "current", current)
    return gate(cur, base, **kw)


def replace(results: list[dict], encoder: str, task: str, new: dict | None) -> list[dict]:
    out = [r for r in results if (r["encoder"], r["task"]) != (encoder, task)]
    return out + ([new] if new is not None else [])


def test_gate_passes_identical_results(tmp_path):
    outcome = gate_on(tmp_path, fixture_results())
    assert outcome.passed is False  # the fixture's own failed cell fails, even unchanged
    assert [r.cell for r in outcome.failures] == ["demo/vit_b/linear"]
    ok = [r for r in fixture_results() if r["status"] != "failed"]
    outcome = gate_on(tmp_path / "ok", ok, baseline=ok)
    assert outcome.passed, outcome.markdown
    assert {r.verdict for r in outcome.rows} == {"pass", "skipped"}  # skipped in both: passes
    assert outcome.markdown.startswith("**clbench gate: PASSED**")


def _ok_fixture() -> list[dict]:
    return [r for r in fixture_results() if r["status"] == "ok"]


def test_gate_drop_within_max_drop_passes(tmp_path):
    current = replace(_ok_fixture(), "vit_b", "knn", make_result("vit_b", "knn", 0.90))
    outcome = gate_on(tmp_path, current, baseline=_ok_fixture(), max_drop=0.05)  # exactly the limit
    assert outcome.passed, outcome.markdown


def test_gate_regression_beyond_max_drop_fails(tmp_path):
    current = replace(_ok_fixture(), "vit_b", "knn", make_result("vit_b", "knn", 0.90))
    outcome = gate_on(tmp_path, current, baseline=_ok_fixture(), max_drop=0.01)
    assert not outcome.passed
    (row,) = outcome.failures
    assert (row.cell, row.verdict, row.baseline, row.current) == ("demo/vit_b/knn", "regression", 0.95, 0.90)
    assert row.delta == pytest.approx(-0.05)
    line = next(ln for ln in outcome.markdown.splitlines() if "demo/vit_b/knn" in ln)
    assert line.startswith("| demo/vit_b/knn | top1 | 0.9500 | 0.9000 | -0.0500 | **FAIL** regression")
    assert outcome.markdown.startswith("**clbench gate: FAILED**: 1 of 6 baseline cells fail")


def test_gate_lower_is_better(tmp_path):
    base = [make_result("a", "knn", 0.2, higher_is_better=False)]
    assert gate_on(tmp_path / "1", [make_result("a", "knn", 0.1, higher_is_better=False)], base).passed
    worse = gate_on(tmp_path / "2", [make_result("a", "knn", 0.3, higher_is_better=False)], base)
    assert [r.verdict for r in worse.rows] == ["regression"]


def test_gate_missing_cell_fails_and_new_cell_does_not(tmp_path):
    current = replace(_ok_fixture(), "moco", "linear", None) + [make_result("new_enc", "knn", 0.1)]
    outcome = gate_on(tmp_path, current, baseline=_ok_fixture())
    assert not outcome.passed
    verdicts = {r.cell: (r.verdict, r.passed) for r in outcome.rows}
    assert verdicts["demo/moco/linear"] == ("missing", False)
    assert verdicts["demo/new_enc/knn"] == ("new", True)
    assert "| demo/moco/linear | accuracy | 0.7000 | missing |  | **FAIL** missing" in outcome.markdown


def test_gate_failed_and_skipped_cells_fail(tmp_path):
    current = replace(
        _ok_fixture(), "moco", "linear", make_result("moco", "linear", status="failed", reason="boom")
    )
    current = replace(
        current, "vit_b", "sts", make_result("vit_b", "sts", status="skipped", reason="no text")
    )
    outcome = gate_on(tmp_path, current, baseline=_ok_fixture())
    assert not outcome.passed
    assert {r.cell: r.verdict for r in outcome.failures} == {
        "demo/moco/linear": "failed",
        "demo/vit_b/sts": "skipped",
    }
    assert "current run failed: boom" in outcome.markdown


def test_gate_incomparable_cell_fails(tmp_path):
    new = make_result("vit_b", "knn", 0.99, protocol_version="2")
    outcome = gate_on(tmp_path, replace(_ok_fixture(), "vit_b", "knn", new), baseline=_ok_fixture())
    (row,) = outcome.failures
    assert row.verdict == "incomparable"
    assert "protocol_version differs: baseline 1, current 2" in row.reason
    assert "comparability_hash differs" in row.reason
    renamed = make_result("vit_b", "knn", 0.99, main_metric="top5")
    outcome = gate_on(tmp_path / "m", replace(_ok_fixture(), "vit_b", "knn", renamed), baseline=_ok_fixture())
    assert [r.reason for r in outcome.failures] == ["main_metric differs: baseline top1, current top5"]


def test_gate_empty_or_broken_baseline_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    cur = write_all(tmp_path / "cur", _ok_fixture())
    outcome = gate(cur, tmp_path / "empty")
    assert not outcome.passed and "holds no results" in outcome.markdown
    base = write_all(tmp_path / "base", _ok_fixture())
    (base / "junk.json").write_text("[]")
    outcome = gate(cur, base)
    assert not outcome.passed and "junk.json" in outcome.markdown


def test_gate_rejects_negative_max_drop(tmp_path):
    with pytest.raises(ValueError):
        gate(tmp_path, tmp_path, max_drop=-0.1)
