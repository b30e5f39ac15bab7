"""Uncertainty in `clbench report`: intervals and ± std in markdown, CSV, LaTeX and JSON."""

from __future__ import annotations

import csv
import io
import json

import pytest
from test_report_gate import make_result

from clbench.results.formats import latex_escape, render
from clbench.results.table import Interval, build_table, main_ci, main_std, metric_ci


def ci(low, high, level=0.95):
    return {"main": {"estimate": None, "low": low, "high": high, "level": level, "method": "percentile"}}


def fixture():
    """knn with bootstrap intervals, a linear column with a multi-seed std, a lower-is-better
    sts column (a stand-in for an error metric), and a failed cell."""
    return [
        make_result("a_1", "knn", 0.91, ci=ci(0.9, 0.93)),
        make_result("b", "knn", 0.95, ci=ci(0.94, 0.96)),
        make_result("a_1", "linear", 0.8, metrics={"accuracy": 0.8, "accuracy_std": 0.0125}),
        make_result("b", "linear", 0.7),
        make_result("a_1", "sts", 0.25, higher_is_better=False, ci=ci(0.2, 0.3, level=0.9)),
        make_result("b", "sts", 0.125, higher_is_better=False),
        make_result("[c]", "sts", status="failed", reason="boom"),
    ]


def test_reading_intervals_and_std_is_defensive():
    r = make_result("a", "knn", 0.5, ci=ci(0.4, 0.6))
    assert main_ci(r) == Interval(0.4, 0.6, 0.95, "percentile")
    assert main_ci(make_result("a", "knn", 0.5)) is None
    assert main_ci(make_result("a", "knn", 0.5, ci=None)) is None
    for broken in (
        {"main": {"low": 0.7, "high": 0.6}},
        {"main": {"low": "x", "high": 1}},
        {"main": [1, 2]},
        {"main": {"low": float("nan"), "high": 1.0}},
        "nonsense",
    ):
        assert main_ci(make_result("a", "knn", 0.5, ci=broken)) is None, broken
    # other metrics: metrics_ci, then the seed-aggregation keys in metrics
    r = make_result(
        "a",
        "knn",
        0.5,
        metrics_ci={"top5": {"low": 0.8, "high": 0.9, "level": 0.95}},
        metrics={"top1": 0.5, "m@frac0.1_mean": 0.3, "m@frac0.1_ci_low": 0.2, "m@frac0.1_ci_high": 0.4},
    )
    assert metric_ci(r, "top5") == Interval(0.8, 0.9, 0.95, None)
    assert metric_ci(r, "m@frac0.1_mean") == Interval(0.2, 0.4, None, "t over seeds")
    assert metric_ci(r, "nope") is None
    # std: <main>_std, or the headline fraction of a probe run with several seeds (never with one)
    assert main_std(make_result("a", "linear", 0.8, metrics={"accuracy": 0.8, "accuracy_std": 0.01})) == 0.01
    probe = make_result(
        "a",
        "linear",
        0.8,
        metrics={"accuracy": 0.8, "accuracy@frac0.5_std": 0.02},
        details={"headline_fraction": 0.5, "fractions": {"frac0.5": [{"seed": 0}, {"seed": 1}]}},
    )
    assert main_std(probe) == 0.02
    probe["details"]["fractions"]["frac0.5"] = [{"seed": 0}]
    assert main_std(probe) is None


def test_markdown_interval_and_pm():
    table = build_table(fixture())
    lines = render(table, "markdown").splitlines()
    assert lines[2:5] == [
        "| [c] | – | – | failed |",
        "| a_1 | 0.9100 [0.9000, 0.9300] | **0.8000** ± 0.0125 | 0.2500 [0.2000, 0.3000] |",
        "| b | **0.9500** [0.9400, 0.9600] | 0.7000 | **0.1250** |",  # sts: lower is better
    ]
    assert (
        "- uncertainty: [low, high] = the confidence interval (90%, 95%); ± = std over seeds "
        "(cells without an interval)" in lines
    )
    pm = render(table, "markdown", uncertainty="pm").splitlines()
    assert "| a_1 | 0.9100 ± 0.0150 | **0.8000** ± 0.0125 | 0.2500 ± 0.0500 |" in pm
    none = render(table, "markdown", uncertainty="none").splitlines()
    assert "| a_1 | 0.9100 | **0.8000** | 0.2500 |" in none
    assert not any("uncertainty" in line for line in none)


def test_no_uncertainty_renders_as_before():
    plain = [make_result("a", "knn", 0.5), make_result("b", "knn", 0.75)]
    for fmt in ("markdown", "csv", "latex"):
        a = render(build_table(plain), fmt)
        b = render(build_table(plain), fmt, uncertainty="none")
        assert a == b and "uncertainty" not in a and "ci_low" not in a and "[" not in a.replace("[knn]", "")


def test_csv_has_interval_and_std_columns_at_full_precision():
    rows = list(csv.reader(io.StringIO(render(build_table(fixture()), "csv"))))
    assert rows[0] == [
        "suite",
        "encoder",
        "knn (top1)",
        "knn (top1) ci_low",
        "knn (top1) ci_high",
        "linear (accuracy)",
        "linear (accuracy) std",
        "sts (spearman)",
        "sts (spearman) ci_low",
        "sts (spearman) ci_high",
        "notes",
    ]
    body = {r[1]: r[2:10] for r in rows[1:] if r[1]}
    assert body["a_1"] == ["0.91", "0.9", "0.93", "0.8", "0.0125", "0.25", "0.2", "0.3"]
    assert body["b"] == ["0.95", "0.94", "0.96", "0.7", "", "0.125", "", ""]
    assert body["[c]"] == ["", "", "", "", "", "failed", "", ""]
    assert rows[-1][-1].startswith("uncertainty:") and rows[-1][:2] == ["", ""]


def test_latex_booktabs_bold_best_interval_and_escaping():
    text = render(build_table(fixture()), "latex")
    lines = text.splitlines()
    assert lines[0] == r"\begin{tabular}{lrrr}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
    ]
    assert r"encoder & knn (top1) & linear (accuracy) & sts (spearman) $\downarrow$ \\" in lines
    assert r"{[}c{]} & -- & -- & failed \\" in lines  # a row starting with [ is not \\[...]
    assert (
        r"a\_1 & 0.9100 {\scriptsize [0.9000, 0.9300]} & \textbf{0.8000} {\scriptsize $\pm$ 0.0125} "
        r"& 0.2500 {\scriptsize [0.2000, 0.3000]} \\"
    ) in lines
    assert r"b & \textbf{0.9500} {\scriptsize [0.9400, 0.9600]} & 0.7000 & \textbf{0.1250} \\" in lines
    pm = render(build_table(fixture()), "latex", uncertainty="pm")
    assert r"0.9100 {\scriptsize $\pm$ 0.0150}" in pm
    assert latex_escape("x<y>|[z]") == r"x\textless{}y\textgreater{}\textbar{}{[}z{]}"


def test_json_carries_interval_and_std():
    doc = json.loads(render(build_table(fixture()), "json"))
    cells = {r["encoder"]: r["cells"] for r in doc["rows"]}
    assert cells["a_1"][0]["ci"] == {"low": 0.9, "high": 0.93, "level": 0.95, "method": "percentile"}
    assert cells["a_1"][1]["std"] == 0.0125 and cells["a_1"][1]["ci"] is None
    assert cells["b"][1]["ci"] is None and cells["b"][1]["std"] is None


def test_unknown_uncertainty_style():
    with pytest.raises(ValueError, match="interval"):
        render(build_table(fixture()), "markdown", uncertainty="sigma")
