"""A self-contained HTML report: ``clbench report DIR --format html --output report.html``.

One file that opens anywhere without a network: inline CSS and JavaScript, plots embedded as
``data:`` images (SVG by default), system fonts only, and a Content-Security-Policy that forbids
every request (``default-src 'none'``), so the page cannot load anything even by accident.

It holds:

- the encoders x tasks table of main values with their uncertainty, the best comparable value
  per column in bold (lowest for ``higher_is_better: false`` columns, marked ``↓``), footnote
  marks for incomparable cells, failed and skipped cells with their reason on hover (``title``);
  clicking a header sorts the rows by that column (best first, a second click reverses; cells
  without a number stay at the bottom), plain JavaScript on ``data-value`` attributes;
- with ``report --published``, a ``<task> (published)`` column after each task column that has
  a published number: the authors' value and ours - published, marked when beyond tolerance
  (class ``beyond``), source and tolerance on hover;
- footnotes and notes, as in the other formats;
- a provenance summary: suites, suite files, clbench and package versions (values that differ
  between results are all listed), git commits, devices, hosts, seeds, result timestamps;
- per-task plots (:mod:`clbench.results.plots`) when matplotlib is installed.

Every string from result files (names, reasons, versions) is HTML-escaped; numbers reach the
script only through ``data-`` attributes, never as code.
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter, defaultdict
from typing import Any

from .formats import (
    PUBLISHED_MARK,
    _best_texts,
    _cell_text,
    _column_decimals,
    _with_published,
    published_decimals,
    published_legend,
    published_text,
    uncertainty_legend,
    uncertainty_text,
)
from .table import Cell, Column, Table

__all__ = ["render_html"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.summary { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
thead th { border-bottom: 2px solid #333; text-align: right; white-space: nowrap; }
thead th:first-child, tbody th { text-align: left; }
#results thead th { cursor: pointer; user-select: none; }
#results thead th button { all: unset; cursor: pointer; }
#results thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: .7em; }
#results thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: .7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td .ci { color: #666; font-size: .85em; }
td.failed { color: #b00020; }
td.skipped { color: #8a6d00; }
td.failed, td.skipped { cursor: help; text-decoration: underline dotted; }
td.missing { color: #999; }
td.published .diff { color: #666; font-size: .85em; }
td.published.beyond .diff { color: #b00020; }
td.incomparable { background: #fff6e0; }
tbody tr:hover { background: #f5f7fa; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.prov dt { font-weight: 600; }
.scroll { overflow-x: auto; }
dl.prov dd { overflow-wrap: anywhere; margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: .5rem; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .85em; color: #555; }
ul.notes li { font-size: .9em; }
"""

# Sorting: numbers from data-value; rows without one stay at the bottom in either direction;
# ties keep encoder order. The first click on a metric column puts the best value first.
_JS = """
(function () {
  'use strict';
  var table = document.getElementById('results');
  if (!table) { return; }
  var headers = table.tHead.rows[0].cells;
  var body = table.tBodies[0];
  function key(row, col) {
    var cell = row.cells[col];
    if (col === 0) { return cell.textContent; }
    var raw = cell.getAttribute('data-value');
    return raw === null || raw === '' ? null : parseFloat(raw);
  }
  function sortBy(col) {
    var th = headers[col];
    var current = th.getAttribute('aria-sort');
    var bestFirst = th.getAttribute('data-higher') === '1' ? 'descending' : 'ascending';
    var first = col === 0 ? 'ascending' : bestFirst;
    var dir = current === first ? (first === 'ascending' ? 'descending' : 'ascending') : first;
    var sign = dir === 'ascending' ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row.setAttribute('data-order', row.getAttribute('data-order') || i); });
    rows.sort(function (a, b) {
      var ka = key(a, col), kb = key(b, col);
      if (ka === null && kb !== null) { return 1; }
      if (kb === null && ka !== null) { return -1; }
      if (ka !== null && kb !== null && ka !== kb) {
        if (col === 0) { return sign * ka.localeCompare(kb); }
        return sign * (ka - kb);
      }
      return parseInt(a.getAttribute('data-order'), 10) - parseInt(b.getAttribute('data-order'), 10);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    for (var i = 0; i < headers.length; i++) { headers[i].setAttribute('aria-sort', 'none'); }
    th.setAttribute('aria-sort', dir);
  }
  Array.prototype.forEach.call(headers, function (th, col) {
    th.addEventListener('click', function () { sortBy(col); });
  });
}());
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(
    table: Table,
    results: list[dict[str, Any]],
    *,
    uncertainty: str = "interval",
    plots: bool = True,
    plot_format: str = "svg",
) -> str:
    """The report page for ``table`` (built from ``results``) as one HTML string."""
    suites = sorted({str(r.get("suite")) for r in results})
    title = "clbench report" + (f": {', '.join(suites)}" if suites else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="summary">{_e(_summary(table))}</p>',
        "<h2>Results</h2>",
        _table_html(table, uncertainty),
        _notes_html(table, uncertainty),
        "<h2>Provenance</h2>",
        _provenance_html(results),
    ]
    if plots and table.rows:
        parts += ["<h2>Plots</h2>", _plots_html(results, plot_format)]
    parts += [f"<script>{_JS}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _summary(table: Table) -> str:
    counts = Counter(cell.status for row in table.rows for cell in row.cells)
    states = ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "skipped", "missing") if counts[s])
    return f"{len(table.rows)} encoder(s) × {len(table.columns)} task(s)" + (f": {states}" if states else "")


# ---- table ---------------------------------------------------------------------------------


def _header_html(column: Column) -> str:
    tip = [f"task {column.task}", f"type {column.task_type}", f"main metric {column.main_metric}"]
    tip.append("higher is better" if column.higher_is_better else "lower is better")
    if column.protocol_version is not None:
        tip.append(f"protocol {column.protocol_version}")
    arrow = "" if column.higher_is_better else " ↓"
    return (
        f'<th scope="col" aria-sort="none" data-higher="{1 if column.higher_is_better else 0}" '
        f'title="{_e("; ".join(tip))}"><button type="button">{_e(column.label + arrow)}</button></th>'
    )


def _cell_html(table: Table, column: Column, cell: Cell, decimals: int, best: set[str], style: str) -> str:
    text = _cell_text(cell, decimals)
    if cell.status != "ok":
        tip = (
            f"{cell.status}: {cell.reason or 'no reason given'}" if cell.status != "missing" else "no result"
        )
        return f'<td class="{cell.status}" data-value="" title="{_e(tip)}">{_e(text)}</td>'
    if cell.value is None or not math.isfinite(cell.value):
        return f'<td class="num ok" data-value="" title="ok but without a numeric main value">{_e(text)}</td>'
    shown = _e(text)
    if text in best and cell.comparable:
        shown = f"<strong>{shown}</strong>"
    tip = [f"{cell.main_metric} = {cell.value!r}"]
    if cell.ci is not None:
        level = "" if cell.ci.level is None else f"{100 * cell.ci.level:g}% "
        tip.append(
            f"{level}CI [{cell.ci.low!r}, {cell.ci.high!r}]"
            + (f" ({cell.ci.method})" if cell.ci.method else "")
        )
    if cell.std is not None:
        tip.append(f"std over seeds {cell.std!r}")
    for mark in cell.marks:
        tip.append(f"{mark} {table.footnote(mark).text}")
    marks = "".join(f"<sup>{_e(m)}</sup>" for m in cell.marks)
    spread = uncertainty_text(cell, decimals, style)
    spread_html = f' <span class="ci">{_e(spread)}</span>' if spread else ""
    classes = "num ok" + ("" if cell.comparable else " incomparable")
    return (
        f'<td class="{classes}" data-value="{cell.value!r}" title="{_e("; ".join(tip))}">'
        f'<span class="v">{shown}</span>{marks}{spread_html}</td>'
    )


def _published_header_html(column: Column) -> str:
    tip = f"published numbers of the zoo entries for {column.label}; in parentheses: ours - published"
    return (
        f'<th scope="col" aria-sort="none" data-higher="1" title="{_e(tip)}">'
        f'<button type="button">{_e(column.published_label)}</button></th>'
    )


def _published_cell_html(cell: Cell, decimals: int) -> str:
    p = cell.published
    if p is None:
        return '<td class="published missing" data-value="" title="no published number">–</td>'
    value, _, rest = published_text(cell, decimals).partition(" ")
    tip = [
        f"published {p.value!r} ({p.protocol}, {p.metric})",
        f"ours - published = {p.diff!r}",
        f"tolerance {p.tolerance:g}" + ("" if p.within_tolerance else ": beyond"),
        p.source,
    ]
    beyond = not p.within_tolerance
    mark = f"<sup>{_e(PUBLISHED_MARK)}</sup>" if beyond else ""
    return (
        f'<td class="num published{" beyond" if beyond else ""}" data-value="{p.value!r}" '
        f'data-diff="{p.diff!r}" title="{_e("; ".join(tip))}">'
        f'<span class="v">{_e(value)}</span> <span class="diff">{_e(rest)}</span>{mark}</td>'
    )


def _table_html(table: Table, style: str) -> str:
    if not table.rows:
        return "<p>No results.</p>"
    per_column = []
    for j in range(len(table.columns)):
        decimals = _column_decimals(table, j)
        per_column.append((decimals, _best_texts(table, j, decimals)))
    encoder = '<th scope="col" aria-sort="none"><button type="button">encoder</button></th>'
    lines = ['<div class="scroll">', '<table id="results">', "<thead><tr>", encoder]
    pub = table.published_columns
    lines += _with_published(
        table,
        [_header_html(c) for c in table.columns],
        [_published_header_html(table.columns[j]) for j in pub],
    )
    lines += ["</tr></thead>", "<tbody>"]
    pub_decimals = {j: published_decimals(table, j) for j in pub}
    for row in table.rows:
        cells = [
            _cell_html(table, column, cell, decimals, best, style)
            for column, cell, (decimals, best) in zip(table.columns, row.cells, per_column)
        ]
        cells = _with_published(
            table, cells, [_published_cell_html(row.cells[j], pub_decimals[j]) for j in pub]
        )
        lines.append(f'<tr><th scope="row">{_e(row.label)}</th>{"".join(cells)}</tr>')
    lines += ["</tbody>", "</table>", "</div>"]
    return "\n".join(lines)


def _notes_html(table: Table, style: str) -> str:
    out = []
    if table.footnotes:
        out.append('<ul class="notes footnotes">')
        out += [f"<li><sup>{_e(f.mark)}</sup> {_e(f.text)}</li>" for f in table.footnotes]
        out.append("</ul>")
    legend = uncertainty_legend(table, style)
    notes = ([legend] if legend else []) + published_legend(table) + table.cell_notes + table.notes
    if notes:
        out.append('<ul class="notes">')
        out += [f"<li>{_e(n)}</li>" for n in notes]
        out.append("</ul>")
    return "\n".join(out)


# ---- provenance ----------------------------------------------------------------------------


def _values(results: list[dict[str, Any]], get: Any) -> list[str]:
    """Distinct non-empty values of ``get(result)`` with how many results carry each."""
    counts: Counter[str] = Counter()
    for r in results:
        try:
            value = get(r)
        except (AttributeError, KeyError, TypeError):
            value = None
        if value not in (None, "", {}):
            counts[str(value)] += 1
    if len(counts) <= 1:
        return list(counts)
    return [f"{v} ({n} results)" for v, n in sorted(counts.items())]


def _git(r: dict[str, Any]) -> str | None:
    git = r.get("git")
    if not isinstance(git, dict) or not git.get("commit"):
        return None
    return str(git["commit"]) + (" (dirty)" if git.get("dirty") else "")


def _host(r: dict[str, Any]) -> str | None:
    host = r.get("host")
    if not isinstance(host, dict):
        return None
    return " ".join(str(host[k]) for k in ("node", "platform") if host.get(k)) or None


def _provenance_html(results: list[dict[str, Any]]) -> str:
    if not results:
        return "<p>No results.</p>"
    rows: list[tuple[str, list[str]]] = [
        ("suite", _values(results, lambda r: r.get("suite"))),
        ("suite file", _values(results, lambda r: r.get("suite_file"))),
        ("git commit", _values(results, _git)),
        ("device", _values(results, lambda r: r.get("device"))),
        ("host", _values(results, _host)),
        ("seed", _values(results, lambda r: r.get("seed"))),
        ("schema version", _values(results, lambda r: r.get("schema_version"))),
    ]
    stamps = sorted(str(r["timestamp"]) for r in results if r.get("timestamp"))
    if stamps:
        rows.append(
            ("results written", [stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} – {stamps[-1]}"])
        )
    packages: dict[str, None] = {}
    for r in results:
        if isinstance(r.get("versions"), dict):
            packages.update(dict.fromkeys(r["versions"]))
    for name in sorted(packages, key=lambda n: (n != "clbench", n)):
        rows.append((name, _values(results, lambda r, n=name: (r.get("versions") or {}).get(n))))
    out = ['<dl class="prov">']
    for label, values in rows:
        if values:
            out.append(f"<dt>{_e(label)}</dt><dd>{'<br>'.join(_e(v) for v in values)}</dd>")
    out.append("</dl>")
    return "\n".join(out)


# ---- plots ---------------------------------------------------------------------------------


def _plots_html(results: list[dict[str, Any]], fmt: str) -> str:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "<p>Plots omitted: matplotlib is not installed (<code>pip install 'clbench[plots]'</code>).</p>"
        )
    from .plots import draw, figure_bytes, plot_specs

    mime = {"svg": "image/svg+xml", "png": "image/png"}[fmt]
    by_column: dict[str, list[str]] = defaultdict(list)
    for spec in plot_specs(results):
        fig = draw(spec)
        data = base64.b64encode(figure_bytes(fig, fmt)).decode("ascii")
        caption = spec.title + (f" (bands / error bars: {spec.band})" if spec.band else "")
        by_column[spec.column].append(
            f'<figure data-plot="{_e(spec.kind)}"><img alt="{_e(spec.title)}" src="data:{mime};base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    if not by_column:
        return "<p>No plottable results.</p>"
    out = []
    for column, figures in by_column.items():
        out.append(f"<h3>{_e(column)}</h3>")
        out.append('<div class="plots">' + "".join(figures) + "</div>")
    return "\n".join(out)
