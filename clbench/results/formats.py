"""Render a :class:`~clbench.results.table.Table` as markdown, csv, LaTeX, JSON or HTML.

- ``markdown``: a pipe table, the best comparable value per column in bold, footnotes and notes
  below it;
- ``csv``: one line per row (``suite``, ``encoder``, one column per task, ``notes``), values at full
  precision (``repr``), ``failed``/``skipped`` markers, an empty field for a missing cell; the
  ``notes`` field names the footnotes and failure reasons that apply to the row; table-level
  notes (unreadable files, duplicates) follow as lines with empty ``suite`` and ``encoder``;
- ``latex``: a booktabs ``tabular`` (``\\toprule``/``\\midrule``/``\\bottomrule``), best value per
  column in ``\\textbf``, footnotes below, notes as ``%`` comments;
- ``json``: ``{"columns", "rows", "footnotes", "notes"}``; each row lists every cell with its
  status, main value, all metrics, ``ci`` and ``std`` at full precision (non-finite numbers
  become ``null``);
- ``html``: one self-contained page (see :mod:`clbench.results.html`).

Uncertainty, where results carry it (a confidence interval of the main value, or a standard
deviation over seeds; see :mod:`clbench.results.table`), is shown next to each value in the style
``uncertainty`` picks: ``interval`` (``0.9722 [0.9611, 0.9815]``; a cell with only a std shows
``0.9722 ± 0.0050``), ``pm`` (``0.9722 ± 0.0102``, the half-width of the interval, else the std)
or ``none``. CSV gains ``<column> ci_low`` / ``ci_high`` / ``std`` columns at full precision for
the columns that have them. A legend line in the notes says what the brackets and ``±`` mean.
Results without any uncertainty render exactly as before.

``published=True`` (``clbench report --published``) adds, right after each task column in which
some zoo encoder's result matches a number its authors published (:mod:`clbench.zoo.published`),
a column ``<task> (published)``: the published value and, in parentheses, ours - published on the
column's scale (``0.7110 (−0.0220)``; the compared metric is named when it is not the column's
main metric), marked :data:`PUBLISHED_MARK` when the difference exceeds the protocol's tolerance,
with a legend line in the notes. CSV gets ``<task> (published)``, ``<task> (published) diff`` and
``<task> (published) within_tolerance`` columns at full precision; JSON gets the columns with
``"published_for"`` and cells holding ``published``, ``diff``, ``tolerance``... Without it every
format is unchanged.

Displayed numbers use one precision per column: 4 decimals when every value lies in [-1, 1]
(a 0-1 scale), 2 decimals up to 1000, 1 beyond. "Best" is the highest (or, for a column whose
results say ``higher_is_better: false``, the lowest) value among the column's comparable ``ok``
cells, compared as displayed; it is shown only when the column has at least two such values.

Plain Python only: this module must never import torch or numpy.

Example::

    >>> print(report("results/", "markdown"))           # doctest: +SKIP
    | encoder | knn (top1) |
    |:--|--:|
    | resnet18 | 0.9123 |
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .store import load_results
from .table import Cell, Column, Table, build_table

__all__ = [
    "FORMATS",
    "PUBLISHED_MARK",
    "UNCERTAINTY_STYLES",
    "decimals_for",
    "format_number",
    "latex_escape",
    "published_decimals",
    "published_legend",
    "published_text",
    "render",
    "report",
    "uncertainty_legend",
    "uncertainty_text",
]

FORMATS = ("markdown", "csv", "latex", "json", "html")
#: marks a ``(published)`` cell whose difference from ours exceeds the protocol's tolerance
PUBLISHED_MARK = "*"
UNCERTAINTY_STYLES = ("interval", "pm", "none")

_MISSING = "–"
_LATEX_MARKS = {"†": r"\dagger", "‡": r"\ddagger", "§": r"\S", "¶": r"\P", "‖": r"\|"}
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # a row that starts with "[" after "\\" would be read as its optional argument
    "[": "{[}",
    "]": "{]}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def decimals_for(values: list[float]) -> int:
    """Decimals for displaying ``values`` side by side: 4 on a 0-1 scale, 2 up to 1000, else 1."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    largest = max(finite, default=0.0)
    if largest <= 1.0:
        return 4
    return 2 if largest < 1000 else 1


def format_number(value: float | None, decimals: int, *, signed: bool = False) -> str:
    """``value`` with ``decimals`` decimals; a non-zero value that would show as zero gets 3
    significant digits instead (so a tiny difference never reads as none)."""
    if value is None:
        return _MISSING
    if not math.isfinite(value):
        return str(value)
    sign = "+" if signed and value != 0 else ""
    text = f"{value:{sign}.{decimals}f}"
    if value != 0 and float(text) == 0:
        text = f"{value:{sign}.3g}"
    return text


def render(
    table: Table,
    fmt: str,
    *,
    uncertainty: str = "interval",
    results: list[dict[str, Any]] | None = None,
    plots: bool = True,
) -> str:
    """``table`` as text in ``fmt`` (one of :data:`FORMATS`); ends with a newline.

    ``uncertainty`` is one of :data:`UNCERTAINTY_STYLES`. ``results`` (the dicts the table was
    built from) and ``plots`` are used by ``html`` only: provenance and embedded plots.
    """
    if uncertainty not in UNCERTAINTY_STYLES:
        raise ValueError(
            f"unknown uncertainty style {uncertainty!r}; choose one of: {', '.join(UNCERTAINTY_STYLES)}"
        )
    if fmt == "html":
        from .html import render_html

        return render_html(table, results or [], uncertainty=uncertainty, plots=plots)
    renderers = {"markdown": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return renderers[fmt](table, uncertainty)


def report(
    results_dir: str | Path,
    fmt: str,
    *,
    uncertainty: str = "interval",
    plots: bool = True,
    published: bool = False,
) -> str:
    """Load every result below ``results_dir`` and render its table in ``fmt``.

    ``published``: add the ``(published)`` columns of zoo encoders (see the module docs).

    Files that are not valid clbench results are listed in the notes. A folder without results
    gives a short message (in JSON: an empty table whose notes say so; in HTML: a page saying so).
    Raises FileNotFoundError when ``results_dir`` does not exist and ValueError for an unknown
    format or uncertainty style.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    results, bad = load_results(Path(results_dir))
    table = build_table(results)
    table.notes.extend(f"not a valid clbench result file, ignored: {path}" for path in bad)
    if published:
        from ..zoo.published import attach

        attach(table, results)
    if table.rows or fmt in ("json", "html"):
        if not table.rows:
            table.notes.insert(0, f"no results found in {results_dir}")
        return render(table, fmt, uncertainty=uncertainty, results=results, plots=plots)
    lines = [f"No clbench results found in {results_dir}."] + table.notes
    prefix = "% " if fmt == "latex" else ""
    return "".join(f"{prefix}{line}\n" for line in lines)


# ---- shared helpers ------------------------------------------------------------------------


def _column_decimals(table: Table, j: int) -> int:
    return decimals_for([row.cells[j].value for row in table.rows if row.cells[j].value is not None])


def _best_texts(table: Table, j: int, decimals: int) -> set[str]:
    """The displayed value(s) that count as best in column ``j`` (empty when fewer than two)."""
    column = table.columns[j]
    values = [
        row.cells[j].value
        for row in table.rows
        if row.cells[j].status == "ok"
        and row.cells[j].comparable
        and row.cells[j].value is not None
        and math.isfinite(row.cells[j].value)
    ]
    if len(values) < 2:
        return set()
    best = max(values) if column.higher_is_better else min(values)
    return {format_number(best, decimals)}


def uncertainty_text(cell: Cell, decimals: int, style: str = "interval") -> str:
    """The uncertainty shown after a cell's value (no leading space): ``[low, high]`` or
    ``± halfwidth`` for a confidence interval, ``± std`` for a spread over seeds; empty when
    the cell has neither or ``style`` is ``none``."""
    if style == "none" or cell.status != "ok" or cell.value is None:
        return ""
    if cell.ci is not None:
        if style == "pm":
            return f"± {format_number(cell.ci.halfwidth, decimals)}"
        return f"[{format_number(cell.ci.low, decimals)}, {format_number(cell.ci.high, decimals)}]"
    if cell.std is not None:
        return f"± {format_number(cell.std, decimals)}"
    return ""


def uncertainty_legend(table: Table, style: str = "interval") -> str | None:
    """One line saying what the brackets and ``±`` mean in ``table``, or None when nothing shows."""
    if style == "none":
        return None
    cells = [c for row in table.rows for c in row.cells if c.status == "ok" and c.value is not None]
    levels = sorted({c.ci.level for c in cells if c.ci is not None}, key=lambda v: (v is None, v))
    has_ci = any(c.ci is not None for c in cells)
    has_std = any(c.ci is None and c.std is not None for c in cells)
    if not has_ci and not has_std:
        return None
    parts = []
    if has_ci:
        level = ", ".join("level not stated" if v is None else f"{100 * v:g}%" for v in levels)
        what = "[low, high] =" if style == "interval" else "± = half-width of"
        parts.append(f"{what} the confidence interval ({level})")
    if has_std:
        parts.append("± = std over seeds" + (" (cells without an interval)" if has_ci else ""))
    return "uncertainty: " + "; ".join(parts)


def published_decimals(table: Table, j: int) -> int:
    """Decimals of column ``j`` and its ``(published)`` column: one precision for both."""
    values = []
    for row in table.rows:
        cell = row.cells[j]
        values += [cell.value] if cell.value is not None else []
        values += [cell.published.value] if cell.published is not None else []
    return decimals_for(values)


def published_text(cell: Cell, decimals: int, minus: str = "\u2212") -> str:
    """``0.7110 (−0.0220)``: the published value and ours - published, without the mark; the
    compared metric is added when it is not the cell's main metric; a dash without a number."""
    p = cell.published
    if p is None:
        return _MISSING
    diff = format_number(p.diff, decimals, signed=True).replace("-", minus)
    metric = f", {p.metric}" if p.metric != cell.main_metric else ""
    return f"{format_number(p.value, decimals)} ({diff}{metric})"


def _beyond(cell: Cell) -> bool:
    return cell.published is not None and not cell.published.within_tolerance


def published_legend(table: Table) -> list[str]:
    """The notes ``report --published`` adds: what the columns show, the mark, STS averages."""
    if not table.show_published:
        return []
    columns = table.published_columns
    cells = [row.cells[j] for row in table.rows for j in columns if row.cells[j].published is not None]
    lines = []
    if cells:
        text = (
            "(published) columns: the number the authors published for the zoo entry, then ours − "
            "published in parentheses, on the column's scale"
        )
        beyond = [c.published for c in cells if _beyond(c)]
        if beyond:
            tolerances = sorted({(p.protocol, p.tolerance) for p in beyond})
            shown = ", ".join(f"{proto} ±{tol:g}" for proto, tol in tolerances)
            text += f"; {PUBLISHED_MARK} = the difference exceeds the tolerance ({shown})"
        lines.append(text)
    lines += table.published_notes
    if not lines:
        lines.append("published numbers: no zoo result matches a published protocol")
    return lines


def _cell_text(cell: Cell, decimals: int) -> str:
    """Plain text of a cell without marks: a number, ``failed``, ``skipped``, n/a or a dash."""
    if cell.status == "ok":
        return "n/a" if cell.value is None else format_number(cell.value, decimals)
    if cell.status == "missing":
        return _MISSING
    return cell.status


def _styled_rows(
    table: Table, bold: Any, mark: Any, extra: Any = None, style: str = "interval"
) -> list[list[str]]:
    """Cell texts per row with the best values wrapped by ``bold``, marks added by ``mark`` and
    the uncertainty (if any) appended by ``extra(text)``."""
    per_column = []
    for j in range(len(table.columns)):
        decimals = _column_decimals(table, j)
        per_column.append((decimals, _best_texts(table, j, decimals)))
    out = []
    for row in table.rows:
        texts = []
        for cell, (decimals, best) in zip(row.cells, per_column):
            text = _cell_text(cell, decimals)
            if cell.status == "ok" and text in best and cell.comparable:
                text = bold(text)
            text += "".join(mark(m) for m in cell.marks)
            spread = uncertainty_text(cell, decimals, style)
            if spread:
                text += extra(spread) if extra is not None else f" {spread}"
            texts.append(text)
        out.append(texts)
    return out


def _notes(table: Table, style: str) -> list[str]:
    legend = uncertainty_legend(table, style)
    return ([legend] if legend else []) + published_legend(table) + table.cell_notes + table.notes


def _with_published(table: Table, texts: list[Any], extra: list[Any]) -> list[Any]:
    """``texts`` (one per column) with ``extra[k]`` inserted after the k-th published column."""
    out = list(texts)
    for offset, (j, text) in enumerate(zip(table.published_columns, extra)):
        out.insert(j + 1 + offset, text)
    return out


# ---- markdown ------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _markdown(table: Table, style: str = "interval") -> str:
    pub = table.published_columns
    labels = _with_published(
        table, [c.label for c in table.columns], [table.columns[j].published_label for j in pub]
    )
    header = ["encoder"] + labels
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|:--|" + "--:|" * len(labels),
    ]
    styled = _styled_rows(table, bold=lambda t: f"**{t}**", mark=lambda m: m, style=style)
    decimals = {j: published_decimals(table, j) for j in pub}
    for row, texts in zip(table.rows, styled):
        extra = [
            published_text(row.cells[j], decimals[j])
            + ("\\" + PUBLISHED_MARK if _beyond(row.cells[j]) else "")
            for j in pub
        ]
        cells = _with_published(table, texts, [_md_escape(t) for t in extra])
        lines.append("| " + " | ".join([_md_escape(row.label)] + cells) + " |")
    if table.footnotes:
        lines.append("")
        lines.extend(f"- {f.mark} {_md_escape(f.text)}" for f in table.footnotes)
    notes = _notes(table, style)
    if notes:
        lines += ["", "**Notes**", ""]
        lines.extend(f"- {_md_escape(note)}" for note in notes)
    return "\n".join(lines) + "\n"


# ---- csv -----------------------------------------------------------------------------------


def _csv_value(cell: Cell) -> str:
    if cell.status == "ok":
        return "" if cell.value is None else repr(cell.value)
    return "" if cell.status == "missing" else cell.status


def _row_notes(table: Table, cells: list[Cell]) -> str:
    notes = []
    for column, cell in zip(table.columns, cells):
        notes.extend(f"{m} {table.footnote(m).text}" for m in cell.marks)
        if cell.status in ("failed", "skipped"):
            notes.append(f"{column.label}: {cell.status}: {cell.reason or 'no reason given'}")
    return "; ".join(notes)


def _csv_extras(table: Table, j: int, style: str) -> list[str]:
    """The uncertainty sub-columns of column ``j``: ``ci_low``/``ci_high`` and/or ``std``."""
    if style == "none":
        return []
    cells = [row.cells[j] for row in table.rows]
    out = []
    if any(c.ci is not None for c in cells):
        out += ["ci_low", "ci_high"]
    if any(c.std is not None for c in cells):
        out.append("std")
    return out


def _csv_extra_value(cell: Cell, what: str) -> str:
    if cell.status != "ok":
        return ""
    if what == "std":
        return "" if cell.std is None else repr(cell.std)
    if cell.ci is None:
        return ""
    return repr(cell.ci.low if what == "ci_low" else cell.ci.high)


def _csv(table: Table, style: str = "interval") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extras = [_csv_extras(table, j, style) for j in range(len(table.columns))]
    pub = set(table.published_columns)
    header = ["suite", "encoder"]
    for j, (column, sub) in enumerate(zip(table.columns, extras)):
        header += [column.label] + [f"{column.label} {what}" for what in sub]
        if j in pub:
            label = column.published_label
            header += [label, f"{label} diff", f"{label} within_tolerance"]
    writer.writerow(header + ["notes"])
    for row in table.rows:
        values = []
        for j, (cell, sub) in enumerate(zip(row.cells, extras)):
            values += [_csv_value(cell)] + [_csv_extra_value(cell, what) for what in sub]
            if j in pub:
                p = cell.published
                values += (
                    ["", "", ""] if p is None else [repr(p.value), repr(p.diff), str(p.within_tolerance)]
                )
        writer.writerow([row.suite, row.encoder] + values + [_row_notes(table, row.cells)])
    legend = uncertainty_legend(table, style)
    table_notes = ([legend] if legend else []) + published_legend(table) + table.notes
    for note in table_notes:  # table-level: no suite, encoder or values
        writer.writerow(["", ""] + [""] * (len(header) - 2) + [note])
    return buf.getvalue()


# ---- LaTeX ---------------------------------------------------------------------------------


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_ % & # $ { } ~ ^ \\``)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_mark(mark: str) -> str:
    return "$^{" + "".join(_LATEX_MARKS.get(ch, ch) for ch in mark) + "}$"


def _latex_header(column: Column) -> str:
    """An escaped column label; a lower-is-better column says so with a down arrow."""
    return latex_escape(column.label) + ("" if column.higher_is_better else r" $\downarrow$")


def _latex_spread(text: str) -> str:
    r"""Uncertainty after a value, set smaller: ``{\scriptsize [a, b]}`` or ``{\scriptsize $\pm$ s}``."""
    text = text.replace("± ", r"$\pm$ ")
    return r" {\scriptsize " + text + "}"


def _latex(table: Table, style: str = "interval") -> str:
    pub = table.published_columns
    headers = _with_published(
        table,
        [_latex_header(c) for c in table.columns],
        [latex_escape(table.columns[j].published_label) for j in pub],
    )
    lines = [
        r"\begin{tabular}{l" + "r" * len(headers) + "}",
        r"\toprule",
        " & ".join(["encoder"] + headers) + r" \\",
        r"\midrule",
    ]
    styled = _styled_rows(
        table, bold=lambda t: r"\textbf{" + t + "}", mark=_latex_mark, extra=_latex_spread, style=style
    )
    decimals = {j: published_decimals(table, j) for j in pub}
    for row, texts in zip(table.rows, styled):
        extra = [_latex_published(row.cells[j], decimals[j]) for j in pub]
        # cell texts are numbers, markers and our own macros: only the dash needs translating
        cells = [t.replace(_MISSING, "--") for t in _with_published(table, texts, extra)]
        lines.append(" & ".join([latex_escape(row.label)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    below = [f"{_latex_mark(f.mark)} {latex_escape(f.text)}" for f in table.footnotes]
    if pub and any(_beyond(row.cells[j]) for row in table.rows for j in pub):
        below.append(f"{_latex_mark(PUBLISHED_MARK)} {latex_escape(_MARK_TEXT)}")
    if below:
        lines.append(r"\par\smallskip")
        lines.append(r"{\footnotesize " + r" \par ".join(below) + r"\par}")
    lines.extend(f"% {' '.join(note.split())}" for note in _notes(table, style))
    lines.append(r"% needs \usepackage{booktabs}")
    return "\n".join(lines) + "\n"


_MARK_TEXT = "in a (published) column: ours - published exceeds the tolerance of the protocol"


def _latex_published(cell: Cell, decimals: int) -> str:
    """A ``(published)`` cell in LaTeX: ``0.7110 ($-$0.0220)`` and the mark when beyond tolerance."""
    if cell.published is None:
        return _MISSING
    text = latex_escape(published_text(cell, decimals, minus="\x00")).replace("\x00", "$-$")
    return text + (_latex_mark(PUBLISHED_MARK) if _beyond(cell) else "")


# ---- JSON ----------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _column_json(column: Column) -> dict[str, Any]:
    return {
        "label": column.label,
        "task": column.task,
        "task_type": column.task_type,
        "main_metric": column.main_metric,
        "higher_is_better": column.higher_is_better,
        "protocol_version": column.protocol_version,
        "comparability_hash": column.comparability_hash,
    }


def _interval_json(cell: Cell) -> dict[str, Any] | None:
    if cell.ci is None:
        return None
    return {"low": cell.ci.low, "high": cell.ci.high, "level": cell.ci.level, "method": cell.ci.method}


def _cell_json(column: Column, cell: Cell) -> dict[str, Any]:
    return {
        "column": column.label,
        "task": column.task,
        "task_type": column.task_type,
        "status": cell.status,
        "main_metric": cell.main_metric,
        "main_value": cell.value,
        "ci": _interval_json(cell),
        "std": cell.std,
        "metrics": cell.metrics,
        "reason": cell.reason,
        "protocol_version": cell.protocol_version,
        "comparability_hash": cell.comparability_hash,
        "comparable": cell.comparable,
        "footnotes": list(cell.marks),
    }


def _published_column_json(column: Column) -> dict[str, Any]:
    return {
        "label": column.published_label,
        "task": column.task,
        "task_type": column.task_type,
        "published_for": column.label,
    }


def _published_cell_json(column: Column, cell: Cell) -> dict[str, Any]:
    p = cell.published
    out: dict[str, Any] = {
        "column": column.published_label,
        "task": column.task,
        "task_type": column.task_type,
        "status": "missing" if p is None else "ok",
    }
    if p is not None:
        out.update(
            {
                "published": p.value,
                "ours": cell.metrics.get(p.metric),
                "diff": p.diff,
                "tolerance": p.tolerance,
                "within_tolerance": p.within_tolerance,
                "metric": p.metric,
                "protocol": p.protocol,
                "source": p.source,
            }
        )
    return out


def _json(table: Table, style: str = "interval") -> str:
    pub = table.published_columns
    columns = _with_published(
        table,
        [_column_json(c) for c in table.columns],
        [_published_column_json(table.columns[j]) for j in pub],
    )
    doc: dict[str, Any] = {
        "columns": columns,
        "rows": [
            {
                "suite": row.suite,
                "encoder": row.encoder,
                "label": row.label,
                "cells": _with_published(
                    table,
                    [_cell_json(col, cell) for col, cell in zip(table.columns, row.cells)],
                    [_published_cell_json(table.columns[j], row.cells[j]) for j in pub],
                ),
            }
            for row in table.rows
        ],
        "footnotes": [{"mark": f.mark, "text": f.text} for f in table.footnotes],
        "notes": published_legend(table) + table.cell_notes + table.notes,
    }
    return json.dumps(_finite(doc), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
