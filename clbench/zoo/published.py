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

``clbench report --published`` shows them as a ``<task> (published)`` column beside each task
column that has one (:func:`attach`, rendered by :mod:`clbench.results.formats`).

Plain Python (no torch): ``clbench report --published`` uses it.
"""

from __future__ import annotations

import re
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


def _number(found: dict[str, Any]) -> Any:
    from ..results.table import PublishedNumber

    return PublishedNumber(
        # percentages -> fractions; rounded so that 74.62 - 74.5 reads 0.0012, not 0.0012000000000000454
        value=round(float(found["value"]) / 100.0, 10),
        diff=round(float(found["diff"]) / 100.0, 10),
        tolerance=round(float(found["tolerance"]) / 100.0, 10),
        within_tolerance=bool(found["within_tolerance"]),
        metric=str(found["metric"]),
        protocol=str(found["protocol"]),
        source=str(found.get("source", "")),
    )


def attach(table: Any, results: list[dict[str, Any]]) -> None:
    """Put the published numbers ``results`` reproduce into ``table`` (``report --published``).

    Each matched result's cell gets :attr:`~clbench.results.table.Cell.published` (a result's
    recorded ``published``, else a fresh :func:`match`), on the table's fraction scale; the STS
    averages, which belong to no single cell, become :attr:`Table.published_notes`. Duplicate
    results are skipped as :func:`~clbench.results.table.build_table` skips them (first read wins).
    """
    table.show_published = True
    rows_at = {(row.suite, row.encoder): row for row in table.rows}
    cols_at = {(c.task, c.task_type): j for j, c in enumerate(table.columns)}
    seen: set[tuple[Any, ...]] = set()
    for r in results:
        key = (str(r.get("suite")), str(r.get("encoder")), str(r.get("task")), r.get("task_type"))
        if key in seen:
            continue
        seen.add(key)
        row, j = rows_at.get(key[:2]), cols_at.get(key[2:])
        if row is None or j is None:
            continue
        try:
            found = r.get("published") if isinstance(r.get("published"), dict) else match(r)
            if found is not None:
                row.cells[j].published = _number(found)
        except (KeyError, TypeError, ValueError):  # an odd result never breaks the report
            continue
    for avg in sts_average(results):
        row = rows_at.get((str(avg["suite"]), str(avg["encoder"])))
        if row is None:
            continue
        n = _number(avg)
        ours = avg["ours"] / 100.0
        table.published_notes.append(
            f"{row.label}: {avg['task']} (cosine_spearman) {ours:.4f}, published {n.value:.4f} "
            f"(diff {n.diff:+.4f}, tolerance {n.tolerance:g}"
            + ("" if n.within_tolerance else ", beyond tolerance")
            + f"; {n.source})"
        )
