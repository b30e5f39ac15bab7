"""Published numbers beside ours: match a zoo encoder's results to what the authors reported.

A result matches a published number when its encoder is ``{type: zoo, method: NAME}``, its task
type measures the number's protocol, the task options are the protocol's, and its dataset is the
benchmark the number was reported on:

========================  ====================  ===========================================
published protocol        clbench task          also required
========================  ====================  ===========================================
``linear`` top-1          ``linear_probe``      metric ``top1``
``knn`` top-1             ``knn``               the published ``k`` among the task's ``k``
                                                and the same temperature; metric ``top1@k<k>``
``sts`` Spearman          ``sts``               metric ``cosine_spearman``; ``sts-avg`` is the
                                                mean of the seven STS cells of one encoder
``zero-shot`` top-1       ``zero_shot``         metric ``top1``
``voc07+12-detection``    ``detection``         ``preset: voc07+12-c4``, metric ``bbox_AP50``
``coco-fpn-1x-mask-rcnn`` ``detection``         ``preset: coco-fpn-1x``, ``model: mask_rcnn``,
                                                metric ``bbox_AP``
========================  ====================  ===========================================

The benchmark is read from the suite's dataset name (or the task name): lower-cased, with
``-``/``_``/``.`` removed and a trailing split word (``val``, ``test``, ``validation``) dropped,
it must equal one of the benchmark's aliases (``imagenet``, ``imagenet1k``, ``in1k``,
``ilsvrc2012`` for ImageNet-1k; ``stsb``, ``sts12``... ``sickr`` for STS), so ``imagenet-val``
matches and ``imagenet100`` does not. Numbers marked unverified, secondary reports and k-NN
numbers whose k is unconfirmed are shown in ``clbench zoo show`` but never matched.

Our metrics are fractions and published numbers percentages: the difference is in percentage
points, ``ours x 100 - published``, and ``within_tolerance`` compares its size with
:data:`TOLERANCE` (per protocol; clbench's linear probe is an L-BFGS logistic regression on
frozen features, not the authors' SGD recipe, so its tolerance is wider).

Plain Python (no torch): ``clbench report --published`` uses it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from .catalogue import Entry, Published, get_entry

#: |ours - published| in percentage points within which a number counts as reproduced
TOLERANCE = {
    "linear": 1.5,
    "knn": 0.5,
    "sts": 0.5,
    "zero-shot": 0.5,
    "voc07+12-detection": 1.0,
    "coco-fpn-1x-mask-rcnn": 1.0,
}
BENCHMARKS = {
    "imagenet-1k": {"imagenet", "imagenet1k", "in1k", "ilsvrc2012", "ilsvrc12", "imagenet2012"},
    "stsb": {"stsb", "stsbenchmark"},
    "sts12": {"sts12", "sts2012"},
    "sts13": {"sts13", "sts2013"},
    "sts14": {"sts14", "sts2014"},
    "sts15": {"sts15", "sts2015"},
    "sts16": {"sts16", "sts2016"},
    "sickr": {"sickr", "sick"},
    "voc2007-test": {"voc", "voc07", "voc2007", "pascalvoc", "voc0712", "voc07+12"},
    "coco-val2017": {"coco", "coco2017", "cocoval2017", "val2017"},
}
STS_SEVEN = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
_SPLIT_WORDS = ("validation", "val", "test", "testset", "eval")


def _norm(text: str) -> str:
    t = re.sub(r"[-_. ]", "", str(text).lower())
    for word in _SPLIT_WORDS:
        if t.endswith(word) and len(t) > len(word):
            return t[: -len(word)]
    return t


def benchmark_of(result: dict[str, Any]) -> str | None:
    """The benchmark a result was measured on, from its dataset name (else its task name)."""
    for name in (result.get("dataset"), result.get("task")):
        if not name:
            continue
        n = _norm(name)
        for bench, aliases in BENCHMARKS.items():
            if n in {_norm(a) for a in aliases} or n == _norm(bench):
                return bench
    return None


def zoo_method(result: dict[str, Any]) -> str | None:
    enc = (result.get("options") or {}).get("encoder") or {}
    return enc.get("method") if enc.get("type") == "zoo" else None


def _our_metric(p: Published, result: dict[str, Any]) -> str | None:
    """The metric of ``result`` that measures ``p``, or None when the protocols differ."""
    task = (result.get("options") or {}).get("task") or {}
    if p.task_type is None or result.get("task_type") != p.task_type:
        return None
    if p.protocol == "linear":
        return "top1"
    if p.protocol == "zero-shot":
        return "top1"
    if p.protocol == "sts":
        return "cosine_spearman"
    if p.protocol == "knn":
        ks = task.get("k") or []
        ks = ks if isinstance(ks, list) else [ks]
        t = task.get("temperature")
        if p.k is None or p.k not in ks or t is None or abs(float(t) - float(p.temperature)) > 1e-9:
            return None
        return f"top1@k{p.k}"
    if p.protocol == "voc07+12-detection":
        return "bbox_AP50" if task.get("preset") == "voc07+12-c4" else None
    if p.protocol == "coco-fpn-1x-mask-rcnn":
        ok = task.get("preset") == "coco-fpn-1x" and task.get("model") == "mask_rcnn"
        return "bbox_AP" if ok else None
    return None


def _record(p: Published, metric: str, ours: float, entry: Entry) -> dict[str, Any]:
    diff = ours * 100.0 - p.value
    tol = TOLERANCE.get(p.protocol, 1.0)
    return {
        "entry": entry.name,
        "protocol": p.protocol,
        "dataset": p.dataset,
        "metric": metric,
        "ours": ours * 100.0,
        "value": p.value,
        "diff": diff,
        "tolerance": tol,
        "within_tolerance": abs(diff) <= tol + 1e-9,
        "source": p.source,
        **({"k": p.k, "temperature": p.temperature} if p.protocol == "knn" else {}),
        **({"features": p.features} if p.features else {}),
    }


def _candidates(entry: Entry) -> list[Published]:
    return [p for p in entry.published if p.primary and not p.unverified]


def match(result: dict[str, Any]) -> dict[str, Any] | None:
    """The published number a single ``ok`` result of a zoo encoder reproduces, with the difference."""
    method = zoo_method(result)
    if method is None or result.get("status") != "ok":
        return None
    try:
        entry = get_entry(method)
    except Exception:  # an entry removed from the catalogue since the run
        return None
    bench = benchmark_of(result)
    metrics = result.get("metrics") or {}
    for p in _candidates(entry):
        if p.dataset != bench:
            continue
        metric = _our_metric(p, result)
        value = metrics.get(metric) if metric else None
        if isinstance(value, (int, float)):
            return _record(p, metric, float(value), entry)
    return None


def annotate(result: dict[str, Any]) -> None:
    """Add ``zoo`` provenance and, when one matches, ``published`` to a result (runner hook)."""
    method = zoo_method(result)
    if method is None:
        return
    from .catalogue import provenance

    try:
        result["zoo"] = provenance(get_entry(method))
    except Exception:
        return
    try:
        found = match(result)
    except (KeyError, TypeError, ValueError):  # an odd result never fails its cell
        found = None
    if found is not None:
        result["published"] = found


def sts_average(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per zoo encoder with ``ok`` cosine-Spearman results on all seven STS benchmarks."""
    by_encoder: dict[tuple[str, str], dict[str, float]] = {}
    methods: dict[tuple[str, str], str] = {}
    for r in results:
        method = zoo_method(r)
        if method is None or r.get("status") != "ok" or r.get("task_type") != "sts":
            continue
        bench = benchmark_of(r)
        value = (r.get("metrics") or {}).get("cosine_spearman")
        if bench in STS_SEVEN and isinstance(value, (int, float)):
            key = (r.get("suite", ""), r["encoder"])
            by_encoder.setdefault(key, {})[bench] = float(value)
            methods[key] = method
    rows = []
    for (suite, encoder), values in by_encoder.items():
        if set(values) != set(STS_SEVEN):
            continue
        method = methods[(suite, encoder)]
        entry = get_entry(method)
        p = next((q for q in _candidates(entry) if q.protocol == "sts" and q.dataset == "sts-avg"), None)
        if p is None:
            continue
        mean = sum(values.values()) / len(values)
        rows.append({"suite": suite, "encoder": encoder, "task": "STS average (7)",
                     **_record(p, "cosine_spearman", mean, entry)})
    return rows


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every matched (result, published number) pair, then the STS averages."""
    out = []
    for r in results:
        found = r.get("published") if isinstance(r.get("published"), dict) else match(r)
        if found is None:
            continue
        out.append({"suite": r.get("suite", ""), "encoder": r.get("encoder"), "task": r.get("task"), **found})
    out += sts_average(results)
    out.sort(key=lambda x: (str(x["suite"]), str(x["encoder"]), str(x["task"])))
    return out


HEADER = ("encoder", "task", "metric", "ours", "published", "diff", "tol", "", "source")


def _cells(row: dict[str, Any]) -> list[str]:
    flag = "ok" if row["within_tolerance"] else "**beyond tolerance**"
    metric = row["metric"] + (f" (k={row['k']}, T={row['temperature']:g})" if row.get("k") else "")
    return [str(row["encoder"]), str(row["task"]), metric, f"{row['ours']:.2f}", f"{row['value']:.2f}",
            f"{row['diff']:+.2f}", f"{row['tolerance']:g}", flag, row["source"]]


def render(table: list[dict[str, Any]], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(table, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["suite", "encoder", "task", "metric", "ours", "published", "diff", "tolerance",
                    "within_tolerance", "source"])
        for r in table:
            w.writerow([r["suite"], r["encoder"], r["task"], r["metric"], repr(r["ours"]), repr(r["value"]),
                        repr(r["diff"]), r["tolerance"], r["within_tolerance"], r["source"]])
        return buf.getvalue()
    if not table:
        return "_Published numbers: no zoo result matches a published protocol._\n"
    lines = [
        "Published numbers (percent; diff = ours - published, in points):",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|:--|:--|:--|--:|--:|--:|--:|:--|:--|",
    ]
    for r in table:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
    return "\n".join(lines) + "\n"


def published_section(results_dir: str | Path, fmt: str, report_text: str) -> str:
    """``report_text`` (``clbench report`` output) with the published-numbers table added."""
    from ..results.store import load_results

    results, _ = load_results(Path(results_dir))
    table = rows(results)
    if fmt == "json":
        try:
            data = json.loads(report_text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data["published"] = table
            return json.dumps(data, indent=2)
        return report_text.rstrip("\n") + "\n" + render(table, "json") + "\n"
    if fmt == "csv":
        return report_text.rstrip("\n") + "\n\n" + render(table, "csv")
    if fmt == "html":
        body = render(table, "markdown").replace("&", "&amp;").replace("<", "&lt;")
        block = f"<section><h2>Published numbers</h2><pre>{body}</pre></section>"
        return report_text.replace("</body>", block + "</body>") if "</body>" in report_text else report_text + block
    if fmt == "latex":
        return report_text.rstrip("\n") + "\n" + "\n".join("% " + line for line in render(table).splitlines()) + "\n"
    return report_text.rstrip("\n") + "\n\n" + render(table, "markdown")
