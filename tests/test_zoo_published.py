"""Published numbers beside ours, on synthetic result files (no torch)."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
from typer.testing import CliRunner

from clbench.results.store import SCHEMA_VERSION, write_result
from clbench.zoo.published import annotate, benchmark_of, match, published_section, rows


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


def test_report_published_markdown_marks_differences_beyond_tolerance(results_dir):
    from clbench.cli import app

    out = CliRunner().invoke(app, ["report", str(results_dir), "--published"])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "| encoder | task | metric | ours | published | diff | tol |" in text
    lines = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
             for line in text.splitlines() if line.startswith(("| dino", "| moco"))}
    assert "74.62" in lines["dino/knn"] and "74.50" in lines["dino/knn"] and "+0.12" in lines["dino/knn"]
    assert "beyond tolerance" not in lines["dino/knn"]
    assert "-2.20" in lines["moco/linear"] and "beyond tolerance" in lines["moco/linear"]
    assert "moco/knn" not in lines  # MoCo publishes no k-NN number
    assert "plain" not in "".join(lines)
    # without the flag, the report is unchanged
    plain = CliRunner().invoke(app, ["report", str(results_dir)])
    assert "published" not in plain.output.lower()


def test_report_published_csv_and_json(results_dir):
    from clbench.results.formats import report

    text = published_section(results_dir, "csv", report(results_dir, "csv"))
    block = text.split("\n\n")[-1]
    table = list(csv.DictReader(io.StringIO(block)))
    assert {(r["encoder"], r["task"], r["published"], r["within_tolerance"]) for r in table} == {
        ("dino", "knn", "74.5", "True"), ("moco", "linear", "71.1", "False")}
    data = json.loads(published_section(results_dir, "json", report(results_dir, "json")))
    assert {(r["encoder"], r["value"]) for r in data["published"]} == {("dino", 74.5), ("moco", 71.1)}


def test_published_module_never_imports_torch(results_dir):
    import subprocess

    code = (f"import sys; from clbench.zoo.published import published_section; "
            f"published_section({str(results_dir)!r}, 'markdown', ''); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
