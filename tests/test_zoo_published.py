"""Published numbers beside ours, on synthetic result files (no torch)."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
from typer.testing import CliRunner

from clbench.results.store import SCHEMA_VERSION, write_result
from clbench.zoo.published import annotate, benchmark_of, match, rows


def result(encoder, task, task_type, metrics, *, method=None, dataset="imagenet", task_options=None,
           status="ok", enc_type="zoo"):
    enc = {"type": enc_type, "method": method} if enc_type == "zoo" else {"type": enc_type, "model": "resnet50"}
    main = next(iter(metrics), None)
    return {
        "schema_version": SCHEMA_VERSION, "suite": "pub", "encoder": encoder, "task": task, "task_type": task_type,
        "dataset": dataset, "status": status, "reason": None, "error": None, "metrics": metrics,
        "main_metric": main, "main_value": metrics.get(main), "protocol_version": "1",
        "options": {"encoder": enc, "dataset": {"type": "imagefolder"}, "task": {"type": task_type, **(task_options or {})}},
        "options_hash": f"{encoder}-{task}", "comparability_hash": f"cmp-{task}", "coverage": None, "seed": 0,
        "device": "cpu", "timings": {}, "throughput": None, "peak_memory": {}, "versions": {}, "git": None,
        "timestamp": "2026-01-01T00:00:00+00:00", "fingerprints": {}, "details": {},
    }


def test_knn_matches_only_with_the_published_k_and_temperature():
    r = result("dino", "knn", "knn", {"top1@k20": 0.7462, "top1@k10": 0.74}, method="dino-vits16",
               task_options={"k": [10, 20], "temperature": 0.07})
    m = match(r)
    assert (m["value"], m["metric"], m["k"], m["temperature"]) == (74.5, "top1@k20", 20, 0.07)
    assert m["diff"] == pytest.approx(74.62 - 74.5) and m["within_tolerance"] is True
    assert match({**r, "options": {**r["options"], "task": {"k": [20], "temperature": 0.1}}}) is None
    assert match({**r, "options": {**r["options"], "task": {"k": [10], "temperature": 0.07}}}) is None


def test_linear_and_tolerance():
    r = result("moco", "linear", "linear_probe", {"top1": 0.689}, method="mocov2-800ep")
    m = match(r)
    assert m["value"] == 71.1 and m["diff"] == pytest.approx(-2.2) and m["within_tolerance"] is False
    near = match(result("moco", "linear", "linear_probe", {"top1": 0.705}, method="mocov2-800ep"))
    assert near["within_tolerance"] is True  # 0.6 points, within the linear tolerance
    # secondary reports (the 5-trial 67.5) are never the matched number
    assert match(result("m", "linear", "linear_probe", {"top1": 0.675}, method="mocov2-200ep"))["value"] == 67.7


def test_no_match_for_other_datasets_encoders_protocols_and_unverified_numbers():
    assert match(result("m", "lin", "linear_probe", {"top1": 0.7}, method="mocov2-800ep", dataset="imagenet100")) is None
    assert match(result("m", "lin", "linear_probe", {"top1": 0.7}, method="mocov2-800ep", dataset="cifar10")) is None
    assert match(result("m", "lin", "linear_probe", {"top1": 0.7}, enc_type="timm")) is None
    assert match(result("m", "lin", "linear_probe", {"top1": 0.7}, method="mocov2-800ep", status="failed")) is None
    assert match(result("m", "c", "clustering", {"nmi": 0.7}, method="mocov2-800ep")) is None
    # Mugs k-NN: k unconfirmed, so never matched
    assert match(result("m", "knn", "knn", {"top1@k20": 0.75}, method="mugs-vits16-800ep",
                        task_options={"k": [20], "temperature": 0.05})) is None
    # SwAV's VOC AP50 is unverified: not matched
    assert match(result("m", "voc", "detection", {"bbox_AP50": 0.826}, method="swav-800ep", dataset="voc07",
                        task_options={"preset": "voc07+12-c4"})) is None


def test_voc_detection_and_zero_shot():
    voc = result("moco", "voc", "detection", {"bbox_AP50": 0.820, "bbox_AP": 0.57}, method="mocov2-800ep",
                 dataset="voc2007-test", task_options={"preset": "voc07+12-c4"})
    m = match(voc)
    assert (m["value"], m["metric"]) == (82.5, "bbox_AP50") and m["diff"] == pytest.approx(-0.5)
    assert match({**voc, "options": {**voc["options"], "task": {"preset": "coco-fpn-1x"}}}) is None
    zs = match(result("clip", "zs", "zero_shot", {"top1": 0.6331}, method="clip-openai-vit-b-32", dataset="imagenet-val"))
    assert zs["value"] == 63.32 and zs["within_tolerance"] is True


@pytest.mark.parametrize("name,bench", [("imagenet", "imagenet-1k"), ("ImageNet-val", "imagenet-1k"),
                                        ("in1k", "imagenet-1k"), ("imagenet100", None), ("sts-b", "stsb"),
                                        ("STS12", "sts12"), ("sick_r", "sickr"), ("mnist", None)])
def test_benchmark_names(name, bench):
    assert benchmark_of({"dataset": name}) == bench


def _sts_results(method, values, encoder="simcse"):
    return [result(encoder, f"sts-{b}", "sts", {"cosine_spearman": v}, method=method, dataset=b)
            for b, v in values.items()]


def test_sts_average_over_the_seven_benchmarks_and_per_benchmark_numbers():
    seven = {"sts12": 0.7403, "sts13": 0.8490, "sts14": 0.7640, "sts15": 0.8340, "sts16": 0.8023, "stsb": 0.8114,
             "sickr": 0.7133}
    rs = _sts_results("whitenedcse-bert-base", seven)
    table = rows(rs)
    per = {r["task"]: r for r in table}
    assert per["sts-sts12"]["value"] == 74.03 and per["sts-sts12"]["diff"] == pytest.approx(0.0, abs=1e-9)
    avg = per["STS average (7)"]
    assert avg["ours"] == pytest.approx(100 * sum(seven.values()) / 7) and avg["value"] == 78.78
    assert avg["within_tolerance"] is True
    # SimCSE publishes only the average; six of seven gives no average row
    simcse = _sts_results("simcse-sup-bert-base", dict(list(seven.items())[:6]), encoder="sup")
    assert rows(simcse) == []
    simcse = _sts_results("simcse-sup-bert-base", seven, encoder="sup")
    (only,) = rows(simcse)
    assert only["value"] == 81.57 and only["diff"] == pytest.approx(100 * sum(seven.values()) / 7 - 81.57)
    assert only["within_tolerance"] is False


def test_annotate_adds_provenance_and_the_published_number():
    r = result("dino", "knn", "knn", {"top1@k20": 0.70}, method="dino-resnet50",
               task_options={"k": [20], "temperature": 0.07})
    annotate(r)
    assert r["zoo"]["entry"] == "dino-resnet50" and r["zoo"]["licence"] == "Apache-2.0"
    assert r["zoo"]["weights"].endswith("dino_resnet50_pretrain.pth")
    assert r["published"]["value"] == 67.5 and r["published"]["diff"] == pytest.approx(2.5)
    plain = result("x", "knn", "knn", {"top1@k20": 0.7}, enc_type="timm")
    annotate(plain)
    assert "zoo" not in plain and "published" not in plain


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    rs = [
        result("dino", "knn", "knn", {"top1@k20": 0.7462}, method="dino-vits16", task_options={"k": [20], "temperature": 0.07}),
        result("moco", "knn", "knn", {"top1@k20": 0.5}, method="mocov2-800ep", task_options={"k": [20], "temperature": 0.07}),
        result("moco", "linear", "linear_probe", {"top1": 0.689}, method="mocov2-800ep"),
        result("plain", "linear", "linear_probe", {"top1": 0.5}, enc_type="timm"),
    ]
    for r in rs:
        write_result(root / "pub" / r["encoder"] / f"{r['task']}.json", r)
    return root


def _lines(text):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ")}


def test_report_published_markdown_column_with_differences_and_marks(results_dir):
    from clbench.cli import app

    out = CliRunner().invoke(app, ["report", str(results_dir), "--published"])
    assert out.exit_code == 0, out.output
    rows = _lines(out.output)
    # a (published) column right after each task column with a published number
    assert rows["encoder"] == ["knn (top1@k20)", "knn (published)", "linear (top1)", "linear (published)"]
    # DINO ViT-S/16 k-NN: 74.5 published, ours 0.7462: +0.0012, within the 0.5-point tolerance
    assert rows["dino"] == ["**0.7462**", "0.7450 (+0.0012)", "–", "–"]
    # MoCo v2 800ep linear: 71.1 published, ours 0.689: -0.0220, beyond 1.5 points: marked
    assert rows["moco"][2:] == ["**0.6890**", "0.7110 (\u22120.0220)\\*"]
    assert rows["moco"][1] == "–"  # MoCo publishes no k-NN number
    assert rows["plain"] == ["–", "–", "0.5000", "–"]  # not a zoo encoder
    assert "(published) columns: the number the authors published" in out.output
    assert "* = the difference exceeds the tolerance (linear ±0.015)" in out.output
    # without the flag, the report is unchanged
    plain = CliRunner().invoke(app, ["report", str(results_dir)])
    assert "published" not in plain.output.lower()
    assert _lines(plain.output)["encoder"] == ["knn (top1@k20)", "linear (top1)"]


def test_report_published_no_mark_when_everything_is_within_tolerance(tmp_path):
    from clbench.results.formats import report

    root = tmp_path / "r"
    r = result("moco", "linear", "linear_probe", {"top1": 0.705}, method="mocov2-800ep")
    write_result(root / "pub" / "moco" / "linear.json", r)
    text = report(root, "markdown", published=True)
    assert _lines(text)["moco"] == ["0.7050", "0.7110 (\u22120.0060)"]
    assert "(published) columns" in text and "exceeds the tolerance" not in text
    # nothing matches: no column, a note says so
    other = tmp_path / "o"
    write_result(other / "pub" / "x" / "linear.json", result("x", "linear", "linear_probe", {"top1": 0.5}, enc_type="timm"))
    text = report(other, "markdown", published=True)
    assert _lines(text)["encoder"] == ["linear (top1)"]
    assert "no zoo result matches a published protocol" in text


def test_report_published_csv_columns(results_dir):
    from clbench.results.formats import report

    text = report(results_dir, "csv", published=True)
    table = {r["encoder"]: r for r in csv.DictReader(io.StringIO(text)) if r["encoder"]}
    header = text.splitlines()[0].split(",")
    assert header[:8] == ["suite", "encoder", "knn (top1@k20)", "knn (published)", "knn (published) diff",
                          "knn (published) within_tolerance", "linear (top1)", "linear (published)"]
    assert float(table["dino"]["knn (published)"]) == pytest.approx(0.745)
    assert table["dino"]["knn (published) diff"] == "0.0012"  # full precision, without float noise
    assert table["dino"]["knn (published) within_tolerance"] == "True"
    assert float(table["moco"]["linear (published)"]) == pytest.approx(0.711)
    assert float(table["moco"]["linear (published) diff"]) == pytest.approx(-0.022)
    assert table["moco"]["linear (published) within_tolerance"] == "False"
    assert table["moco"]["knn (published)"] == "" and table["plain"]["linear (published)"] == ""
    assert "exceeds the tolerance" in text  # the legend, as a table-level note line
    assert "published" not in report(results_dir, "csv")


def test_report_published_latex(results_dir):
    from clbench.results.formats import report

    text = report(results_dir, "latex", published=True)
    assert r"\begin{tabular}{lrrrr}" in text
    assert "encoder & knn (top1@k20) & knn (published) & linear (top1) & linear (published)" in text
    moco = next(line for line in text.splitlines() if line.startswith("moco &"))
    assert moco.endswith(r"0.7110 ($-$0.0220)$^{*}$ \\")
    dino = next(line for line in text.splitlines() if line.startswith("dino &"))
    assert "0.7450 (+0.0012) &" in dino and "$^{*}$" not in dino
    assert r"$^{*}$ in a (published) column" in text
    assert "published" not in report(results_dir, "latex")


def test_report_published_json(results_dir):
    from clbench.results.formats import report

    data = json.loads(report(results_dir, "json", published=True))
    labels = [c["label"] for c in data["columns"]]
    assert labels == ["knn (top1@k20)", "knn (published)", "linear (top1)", "linear (published)"]
    assert data["columns"][3]["published_for"] == "linear (top1)"
    rows = {r["encoder"]: r["cells"] for r in data["rows"]}
    moco = rows["moco"][3]
    assert moco["status"] == "ok" and moco["published"] == pytest.approx(0.711) and moco["ours"] == 0.689
    assert moco["diff"] == pytest.approx(-0.022) and moco["within_tolerance"] is False
    assert moco["tolerance"] == pytest.approx(0.015) and moco["metric"] == "top1" and moco["protocol"] == "linear"
    assert rows["dino"][1]["within_tolerance"] is True and rows["plain"][3]["status"] == "missing"
    assert any("exceeds the tolerance" in n for n in data["notes"])
    plain = json.loads(report(results_dir, "json"))
    assert [c["label"] for c in plain["columns"]] == ["knn (top1@k20)", "linear (top1)"]
    assert "published" not in json.dumps(plain)


def test_report_published_html(results_dir):
    from html.parser import HTMLParser

    from clbench.results.formats import report

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headers, self.rows, self._in, self._text = [], [], None, ""

        def handle_starttag(self, tag, attrs):
            if tag in ("th", "td"):
                self._in, self._text, self._attrs = tag, "", dict(attrs)
            elif tag == "tr":
                self.rows.append([])

        def handle_endtag(self, tag):
            if tag in ("th", "td") and self._in:
                self.rows[-1].append((self._text.strip(), self._attrs))
                self._in = None

        def handle_data(self, data):
            if self._in:
                self._text += data

    page = report(results_dir, "html", published=True, plots=False)
    parser = Cells()
    parser.feed(page[page.index('<table id="results">'):page.index("</table>")])
    header = [t for t, _ in parser.rows[0]]
    assert header == ["encoder", "knn (top1@k20)", "knn (published)", "linear (top1)", "linear (published)"]
    body = {r[0][0]: r[1:] for r in parser.rows[1:]}
    text, attrs = body["moco"][3]
    assert text == "0.7110 (\u22120.0220)*" and "beyond" in attrs["class"] and float(attrs["data-value"]) == 0.711
    text, attrs = body["dino"][1]
    assert text == "0.7450 (+0.0012)" and "beyond" not in attrs["class"]
    assert body["plain"][3][1]["class"] == "published missing"
    assert "exceeds the tolerance" in page
    assert "(published)" not in report(results_dir, "html", plots=False)


def test_report_published_sts_average_is_a_note(tmp_path):
    from clbench.results.formats import report

    seven = {"sts12": 0.75, "sts13": 0.85, "sts14": 0.80, "sts15": 0.85, "sts16": 0.80, "stsb": 0.82, "sickr": 0.80}
    root = tmp_path / "sts"
    for r in _sts_results("simcse-sup-bert-base", seven, encoder="sup"):
        write_result(root / "pub" / "sup" / f"{r['task']}.json", r)
    text = report(root, "markdown", published=True)
    mean = sum(seven.values()) / 7
    assert f"sup: STS average (7) (cosine_spearman) {mean:.4f}, published 0.8157" in text
    assert "(published) |" not in text  # SimCSE publishes no per-benchmark number: no column


def test_report_published_never_imports_torch(results_dir):
    import subprocess

    code = (f"import sys; from clbench.results.formats import report; "
            f"[report({str(results_dir)!r}, f, published=True, plots=False) for f in "
            f"('markdown', 'csv', 'latex', 'json', 'html')]; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
