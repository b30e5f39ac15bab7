"""Result dicts -> a :class:`Table`: encoders as rows, tasks as columns, comparability marked.

Rows are ``(suite, encoder)`` pairs, labelled ``encoder`` (or ``suite/encoder`` when the results
span several suites). Columns are ``(task, task_type)`` pairs, labelled ``task (main_metric)``;
a task name used with several task types gets one column per type, labelled
``task [task_type] (main_metric)``. Rows and columns are sorted alphabetically, so the table does
not depend on the order in which result files were read.

A column's *reference* is the (``protocol_version``, ``comparability_hash``, ``main_metric``)
signature shared by most of its ``ok`` cells (a tie goes to the first row in table order).
An ``ok`` cell with another signature is never shown silently beside the others: it carries a
footnote mark (``†``, ``‡``, ...) whose footnote says what differs. Failed and skipped cells keep
their reason (listed by :attr:`Table.cell_notes`).

Uncertainty is read from the result when it is there and never required: a cell's ``ci`` is the
confidence interval of its main value (``result["ci"]["main"]``, ``{"low", "high", "level", ...}``)
and its ``std`` the spread over seeds of a multi-seed cell (``metrics["<main>_std"]``, or the
headline label fraction's ``<main>@frac<f>_std`` of a linear probe run with several seeds).

Plain Python only: this module must never import torch or numpy (CI gates read tables fast).

Example::

    >>> from clbench.results.store import load_results
    >>> results, bad = load_results("results/")          # doctest: +SKIP
    >>> table = build_table(results)                     # doctest: +SKIP
    >>> [c.label for c in table.columns]                 # doctest: +SKIP
    ['knn (top1)', 'linear (accuracy)']
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

__all__ = [
    "Cell",
    "Column",
    "Footnote",
    "Interval",
    "PublishedNumber",
    "Row",
    "Table",
    "build_table",
    "footnote_mark",
    "higher_is_better",
    "main_ci",
    "main_std",
    "main_value",
    "metric_ci",
]

_MARKS = ("†", "‡", "§", "¶", "‖")
#: how many differing option keys a footnote names before it says "..."
_MAX_OPTION_DIFFS = 3


@dataclasses.dataclass(frozen=True)
class Column:
    """One task column. The signature fields are the column's reference (its majority)."""

    task: str
    task_type: str | None
    main_metric: str | None
    higher_is_better: bool = True
    protocol_version: str | None = None
    comparability_hash: str | None = None
    #: True when the task name also appears with another task type
    show_type: bool = False

    @property
    def label(self) -> str:
        label = self.task
        if self.show_type:
            label += f" [{self.task_type}]"
        if self.main_metric:
            label += f" ({self.main_metric})"
        return label

    @property
    def published_label(self) -> str:
        """The label of this column's ``report --published`` companion: ``task (published)``."""
        return self.task + (f" [{self.task_type}]" if self.show_type else "") + " (published)"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]`` at ``level`` (e.g. 0.95; None when not stated)."""

    low: float
    high: float
    level: float | None = None
    method: str | None = None

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2


@dataclasses.dataclass(frozen=True)
class PublishedNumber:
    """A number the authors published for a cell's encoder and task (``report --published``).

    ``value``, ``diff`` (ours - published) and ``tolerance`` are on the cell's scale (fractions,
    as clbench's metrics; the zoo catalogue's percentages divided by 100). ``metric`` is the
    metric of ours that was compared, which need not be the cell's main metric.
    """

    value: float
    diff: float
    tolerance: float
    within_tolerance: bool
    metric: str
    protocol: str
    source: str


@dataclasses.dataclass
class Cell:
    """One (row, column) cell; ``status`` is ``ok``, ``failed``, ``skipped`` or ``missing``."""

    status: str
    value: float | None = None
    main_metric: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    protocol_version: str | None = None
    comparability_hash: str | None = None
    #: footnote marks; a marked cell is not comparable with the unmarked cells of its column
    marks: list[str] = dataclasses.field(default_factory=list)
    #: confidence interval of ``value``, when the result carries one
    ci: Interval | None = None
    #: standard deviation of ``value`` over seeds, when the result carries one
    std: float | None = None
    #: the published number this cell reproduces (set only by ``report --published``)
    published: PublishedNumber | None = None

    @property
    def comparable(self) -> bool:
        return not self.marks


@dataclasses.dataclass
class Row:
    suite: str
    encoder: str
    label: str
    #: aligned with :attr:`Table.columns`
    cells: list[Cell]


@dataclasses.dataclass(frozen=True)
class Footnote:
    mark: str
    text: str


@dataclasses.dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    footnotes: list[Footnote] = dataclasses.field(default_factory=list)
    #: table-level remarks: duplicate results, unreadable files (added by ``report``)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: ``report --published``: add a ``<task> (published)`` column next to each task column
    #: that has a published number in some row (:attr:`Cell.published`)
    show_published: bool = False
    #: published numbers that belong to no single cell (an encoder's STS average), as lines
    published_notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def published_columns(self) -> list[int]:
        """Indices of the columns that get a ``(published)`` column (none without ``show_published``)."""
        if not self.show_published:
            return []
        return [
            j for j in range(len(self.columns)) if any(r.cells[j].published is not None for r in self.rows)
        ]

    def footnote(self, mark: str) -> Footnote:
        return next(f for f in self.footnotes if f.mark == mark)

    @property
    def cell_notes(self) -> list[str]:
        """One line per failed or skipped cell (with its reason) and per ok cell without a value."""
        out = []
        for row in self.rows:
            for column, cell in zip(self.columns, row.cells):
                where = f"{row.label} × {column.label}"
                if cell.status in ("failed", "skipped"):
                    out.append(f"{where}: {cell.status}: {cell.reason or 'no reason given'}")
                elif cell.status == "ok" and cell.value is None:
                    out.append(f"{where}: ok but without a numeric main value")
        return out


def footnote_mark(index: int) -> str:
    """The ``index``-th footnote mark: †, ‡, §, ¶, ‖, then doubled (††, ‡‡, ...)."""
    return _MARKS[index % len(_MARKS)] * (index // len(_MARKS) + 1)


def main_value(result: dict[str, Any]) -> float | None:
    """The headline number of a result (``main_value``, else ``metrics[main_metric]``), or None."""
    value = result.get("main_value")
    if value is None:
        value = (result.get("metrics") or {}).get(result.get("main_metric"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _interval(raw: Any) -> Interval | None:
    """An :class:`Interval` from ``{"low", "high", "level"?, "method"?}``; None when malformed."""
    if not isinstance(raw, dict):
        return None
    low, high, level = raw.get("low"), raw.get("high"), raw.get("level")
    if not all(_is_number(v) and math.isfinite(v) for v in (low, high)) or low > high:
        return None
    level = float(level) if _is_number(level) and 0 < level < 1 else None
    method = raw.get("method")
    return Interval(float(low), float(high), level, str(method) if method is not None else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_ci(result: dict[str, Any], metric: str | None) -> Interval | None:
    """The confidence interval a result records for ``metric``, or None when it records none.

    Looked up as ``ci["main"]`` (main metric only), ``metrics_ci[metric]``, ``ci[metric]``, then
    the seed-aggregation form ``metrics["<metric>_ci_low"]`` / ``["<metric>_ci_high"]`` (a
    Student-t interval over seeds; ``<metric>_mean`` is looked up as ``<metric>``'s).
    """
    if metric is None:
        return None
    ci = result.get("ci") if isinstance(result.get("ci"), dict) else {}
    per_metric = result.get("metrics_ci") if isinstance(result.get("metrics_ci"), dict) else {}
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    base = metric.removesuffix("_mean")
    candidates = [per_metric.get(metric), ci.get(metric)]
    if metric == result.get("main_metric"):
        candidates.insert(0, ci.get("main"))
    for name in dict.fromkeys((metric, base)):
        if f"{name}_ci_low" in metrics:
            candidates.append(
                {
                    "low": metrics.get(f"{name}_ci_low"),
                    "high": metrics.get(f"{name}_ci_high"),
                    "level": metrics.get(f"{name}_ci_level"),
                    "method": "t over seeds",
                }
            )
    return next((iv for iv in map(_interval, candidates) if iv is not None), None)


def main_ci(result: dict[str, Any]) -> Interval | None:
    """The confidence interval of a result's main value, or None."""
    return metric_ci(result, result.get("main_metric"))


def main_std(result: dict[str, Any]) -> float | None:
    """The standard deviation over seeds of a result's main value, or None when not multi-seed."""
    metrics = result.get("metrics") or {}
    main = result.get("main_metric")
    if main is None:
        return None
    value = metrics.get(f"{main}_std")
    if value is None:  # a linear probe whose headline fraction ran with several seeds
        details = result.get("details") if isinstance(result.get("details"), dict) else {}
        fraction = details.get("headline_fraction")
        runs = (details.get("fractions") or {}).get(f"frac{fraction:g}") if _is_number(fraction) else None
        if isinstance(runs, list) and len(runs) > 1:
            value = metrics.get(f"{main}@frac{fraction:g}_std")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def higher_is_better(result: dict[str, Any]) -> bool:
    """Whether the main metric grows with quality (the result's ``higher_is_better``; default True)."""
    return bool(result.get("higher_is_better", True))


def build_table(results: list[dict[str, Any]]) -> Table:
    """Arrange result dicts (as read by :func:`clbench.results.store.load_results`) in a table.

    >>> r = dict(suite="s", encoder="e", task="knn", task_type="knn", status="ok",
    ...          main_metric="top1", main_value=0.5, metrics={"top1": 0.5},
    ...          protocol_version="1", comparability_hash="h")
    >>> t = build_table([r])
    >>> t.rows[0].label, t.columns[0].label, t.rows[0].cells[0].value
    ('e', 'knn (top1)', 0.5)
    """
    notes: list[str] = []
    by_key: dict[tuple[str, str, str, str | None], dict[str, Any]] = {}
    for result in results:
        key = (str(result["suite"]), str(result["encoder"]), str(result["task"]), result.get("task_type"))
        if key in by_key:
            notes.append(f"duplicate result for {'/'.join(key[:3])} ignored (the first one read is shown)")
            continue
        by_key[key] = result

    row_keys = sorted({(k[0], k[1]) for k in by_key})
    col_keys = sorted({(k[2], k[3]) for k in by_key}, key=lambda c: (c[0], str(c[1] or "")))
    several_suites = len({s for s, _ in row_keys}) > 1
    types_per_task = Counter(task for task, _ in col_keys)

    columns: list[Column] = []
    grid: list[list[Cell]] = [[] for _ in row_keys]
    footnotes: list[Footnote] = []
    for task, task_type in col_keys:
        col_results = [by_key.get((suite, enc, task, task_type)) for suite, enc in row_keys]
        reference, ref_result = _reference(col_results)
        oks = [r for r in col_results if r is not None and r.get("status") == "ok"]
        hib = Counter(higher_is_better(r) for r in oks).most_common(1)
        column = Column(
            task=task,
            task_type=task_type,
            main_metric=reference[2] if reference else _first(col_results, "main_metric"),
            higher_is_better=hib[0][0] if hib else True,
            protocol_version=reference[0] if reference else None,
            comparability_hash=reference[1] if reference else None,
            show_type=types_per_task[task] > 1,
        )
        columns.append(column)
        marks_by_text: dict[str, str] = {}
        for i, result in enumerate(col_results):
            cell = _cell(result)
            if cell.status == "ok" and reference is not None and _signature(result) != reference:
                text = f"{column.label}: {_deviation(result, ref_result)}; not comparable with the unmarked cells"
                if text not in marks_by_text:
                    marks_by_text[text] = footnote_mark(len(footnotes))
                    footnotes.append(Footnote(marks_by_text[text], text))
                cell.marks.append(marks_by_text[text])
            grid[i].append(cell)

    rows = [
        Row(suite=suite, encoder=enc, label=_row_label((suite, enc), several_suites), cells=cells)
        for (suite, enc), cells in zip(row_keys, grid)
    ]
    return Table(columns=columns, rows=rows, footnotes=footnotes, notes=notes)


def _row_label(key: tuple[str, str], several_suites: bool) -> str:
    return f"{key[0]}/{key[1]}" if several_suites else key[1]


def _first(results: list[dict[str, Any] | None], field: str) -> Any:
    return next((r[field] for r in results if r is not None and r.get(field) is not None), None)


def _signature(result: dict[str, Any]) -> tuple[Any, Any, Any]:
    pv = result.get("protocol_version")
    return (None if pv is None else str(pv), result.get("comparability_hash"), result.get("main_metric"))


def _reference(
    results: list[dict[str, Any] | None],
) -> tuple[tuple[Any, Any, Any] | None, dict[str, Any] | None]:
    """The majority signature among ok cells (ties: first in row order) and a result that has it."""
    oks = [r for r in results if r is not None and r.get("status") == "ok"]
    if not oks:
        return None, None
    counts = Counter(_signature(r) for r in oks)
    top = max(counts.values())
    for r in oks:  # first in row order among the most common
        if counts[_signature(r)] == top:
            return _signature(r), r
    raise AssertionError("unreachable")


def _cell(result: dict[str, Any] | None) -> Cell:
    if result is None:
        return Cell(status="missing")
    status = result.get("status")
    if status not in ("ok", "failed", "skipped"):
        return Cell(status="failed", reason=f"unknown status {status!r}")
    reason = result.get("reason")
    if not reason and status == "failed":
        error = result.get("error") or {}
        reason = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k)) or None
    pv = result.get("protocol_version")
    return Cell(
        status=status,
        value=main_value(result) if status == "ok" else None,
        main_metric=result.get("main_metric"),
        metrics=dict(result.get("metrics") or {}),
        reason=" ".join(str(reason).split()) if reason else None,
        protocol_version=None if pv is None else str(pv),
        comparability_hash=result.get("comparability_hash"),
        ci=main_ci(result) if status == "ok" else None,
        std=main_std(result) if status == "ok" else None,
    )


def _deviation(result: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """What sets ``result`` apart from the column's reference result, in words."""
    ref = _signature(reference) if reference else (None, None, None)
    mine = _signature(result)
    parts = []
    if mine[2] != ref[2]:
        parts.append(f"main metric {mine[2]} (column: {ref[2]})")
    if mine[0] != ref[0]:
        parts.append(f"protocol_version {mine[0]} (column: {ref[0]})")
    if mine[1] != ref[1]:
        parts.append(f"comparability_hash {_short(mine[1])} (column: {_short(ref[1])})")
        diffs = _option_diffs(result, reference or {})
        if diffs:
            parts.append("options differ: " + ", ".join(diffs))
    return "; ".join(parts)


def _short(value: Any) -> str:
    return "none" if value is None else str(value)[:12]


def _option_diffs(result: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """The task/dataset options in which two results differ, as ``key=mine (column: theirs)``."""
    mine, theirs = _flat_options(result), _flat_options(reference)
    if not mine and not theirs:
        return []
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k, _ABSENT) != theirs.get(k, _ABSENT))
    out = [f"{k}={_show(mine.get(k, _ABSENT))} (column: {_show(theirs.get(k, _ABSENT))})" for k in keys]
    return out[:_MAX_OPTION_DIFFS] + (["..."] if len(out) > _MAX_OPTION_DIFFS else [])


_ABSENT = object()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "unset"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


def _flat_options(result: dict[str, Any]) -> dict[str, Any]:
    options = result.get("options")
    if not isinstance(options, dict):
        return {}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for part in ("task", "dataset"):
        if part in options:
            walk(part, options[part])
    return flat
