"""Plots of result folders: per-task bars, accuracy against k, label-efficiency curves.

Three kinds, each drawn from the numbers the result files hold (never recomputed):

- ``bars``: every task column, one bar per encoder at its main value, with the confidence
  interval of the result as error bars (else the std over seeds, else none);
- ``k``: cells whose main metric is ``<name>@k<k>`` (k-NN) with several k: ``<name>@k<k>``
  against k, one line per encoder, with CI bands when the results record them;
- ``label_efficiency``: cells with ``<main>@frac<f>_mean`` metrics for two or more label
  fractions (``linear_probe``, ``multilabel_probe``): the mean against the fraction (log axis),
  one line per encoder, the band being the recorded CI of that mean, else mean ± std over seeds
  (when there were several seeds), else none.

:func:`plot_specs` turns results into :class:`PlotSpec` (the exact numbers to draw: tests and
the HTML report read them), :func:`draw` turns one into a matplotlib ``Figure`` and
:func:`figure_bytes` renders it as PNG or SVG. matplotlib is imported only inside those two, with
the Agg canvas and no pyplot state; this module never imports torch.

Example::

    >>> from clbench.results.plots import write_plots
    >>> write_plots("results/quickstart", "plots/", fmt="svg")   # doctest: +SKIP
    [PosixPath('plots/digits-knn.bars.svg'), PosixPath('plots/digits-knn.k.svg'), ...]
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Any

from .store import atomic_write_bytes, load_results
from .table import Column, Interval, build_table, metric_ci

__all__ = ["PLOT_FORMATS", "PlotSpec", "Series", "draw", "figure_bytes", "plot_specs", "write_plots"]

PLOT_FORMATS = ("png", "svg")

_K_METRIC = re.compile(r"^(?P<name>.+)@k(?P<k>\d+)$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass
class Series:
    """One encoder's points: ``y`` at ``x``; ``low``/``high`` bound the band or error bar of each
    point (None where the result records no uncertainty)."""

    label: str
    x: list[Any]
    y: list[float]
    low: list[float | None]
    high: list[float | None]

    @property
    def has_band(self) -> bool:
        return any(v is not None for v in self.low)


@dataclasses.dataclass
class PlotSpec:
    """Everything one figure shows. ``name`` is a file stem; ``kind`` is ``bars``, ``k`` or
    ``label_efficiency``; ``band`` says what the bands or error bars are (None: there are none)."""

    name: str
    kind: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    band: str | None = None
    column: str = ""


# ---- data ----------------------------------------------------------------------------------


def plot_specs(results: list[dict[str, Any]]) -> list[PlotSpec]:
    """The plots that ``results`` support, per table column in table order: bars, then k, then
    label efficiency. Only ``ok`` cells with numbers appear; an incomparable cell keeps its
    footnote mark in its label."""
    table = build_table(results)
    by_key = {}
    for r in results:  # the table keeps the first of duplicates; so do we
        by_key.setdefault((str(r["suite"]), str(r["encoder"]), str(r["task"]), r.get("task_type")), r)
    specs: list[PlotSpec] = []
    for j, column in enumerate(table.columns):
        cells = []
        for row in table.rows:
            cell = row.cells[j]
            result = by_key.get((row.suite, row.encoder, column.task, column.task_type))
            if cell.status == "ok" and cell.value is not None and result is not None:
                cells.append((row.label + "".join(cell.marks), cell, result))
        if not cells:
            continue
        stem = _file_stem(column)
        better = "" if column.higher_is_better else " (lower is better)"
        specs.append(_bars(column, stem, better, cells))
        for spec in (_k_curve(column, stem, better, cells), _label_efficiency(column, stem, better, cells)):
            if spec is not None:
                specs.append(spec)
    seen: dict[str, int] = {}
    for spec in specs:  # two task names that sanitise alike must not overwrite each other's files
        seen[spec.name] = seen.get(spec.name, 0) + 1
        if seen[spec.name] > 1:
            spec.name = f"{spec.name}-{seen[spec.name]}"
    return specs


def _file_stem(column: Column) -> str:
    stem = column.task + (f"-{column.task_type}" if column.show_type else "")
    return _SAFE.sub("_", stem).strip("._") or "task"


def _band_name(intervals: list[Interval | None], stds: list[float | None]) -> str | None:
    kinds = {(iv.level, iv.method) for iv in intervals if iv is not None}
    parts = []
    if kinds:
        shown = ", ".join(
            ("" if level is None else f"{100 * level:g}% ") + "CI" + (f" ({method})" if method else "")
            for level, method in sorted(kinds, key=lambda k: (k[0] is None, k[0] or 0, k[1] or ""))
        )
        parts.append(shown)
    if any(s is not None for s in stds):
        parts.append("± std over seeds" + (" where no interval is recorded" if parts else ""))
    return "; ".join(parts) or None


def _bars(column: Column, stem: str, better: str, cells: list) -> PlotSpec:
    labels, values, lows, highs, cis, stds = [], [], [], [], [], []
    for label, cell, _ in cells:
        labels.append(label)
        values.append(cell.value)
        low, high = _bounds(cell.value, cell.ci, cell.std)
        lows.append(low)
        highs.append(high)
        cis.append(cell.ci)
        stds.append(cell.std if cell.ci is None else None)
    return PlotSpec(
        name=f"{stem}.bars",
        kind="bars",
        title=column.label,
        xlabel="encoder",
        ylabel=f"{column.main_metric}{better}",
        series=[Series(label=column.label, x=labels, y=values, low=lows, high=highs)],
        band=_band_name(cis, stds),
        column=column.label,
    )


def _bounds(value: float, ci: Interval | None, std: float | None) -> tuple[float | None, float | None]:
    if ci is not None:
        return ci.low, ci.high
    if std is not None:
        return value - std, value + std
    return None, None


def _k_curve(column: Column, stem: str, better: str, cells: list) -> PlotSpec | None:
    match = _K_METRIC.match(column.main_metric or "")
    if match is None:
        return None
    name = match["name"]
    series, cis = [], []
    for label, _, result in cells:
        points = []
        for metric, value in (result.get("metrics") or {}).items():
            m = _K_METRIC.match(metric)
            if m and m["name"] == name and _finite_number(value):
                points.append((int(m["k"]), float(value), metric_ci(result, metric)))
        if len(points) < 2:
            continue
        points.sort(key=lambda p: p[0])
        cis += [p[2] for p in points]
        series.append(
            Series(
                label=label,
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                low=[p[2].low if p[2] else None for p in points],
                high=[p[2].high if p[2] else None for p in points],
            )
        )
    if not series:
        return None
    return PlotSpec(
        name=f"{stem}.k",
        kind="k",
        title=f"{column.task}: {name} against k",
        xlabel="k (neighbours)",
        ylabel=f"{name}{better}",
        series=series,
        band=_band_name(cis, []),
        column=column.label,
    )


def _label_efficiency(column: Column, stem: str, better: str, cells: list) -> PlotSpec | None:
    metric = column.main_metric
    if not metric:
        return None
    pattern = re.compile(r"^" + re.escape(metric) + r"@frac(?P<f>[0-9.eE+-]+)_mean$")
    series, cis, stds = [], [], []
    for label, _, result in cells:
        metrics = result.get("metrics") or {}
        runs = (
            (result.get("details") or {}).get("fractions")
            if isinstance(result.get("details"), dict)
            else None
        )
        points = []
        for key, value in metrics.items():
            m = pattern.match(key)
            if m is None or not _finite_number(value):
                continue
            try:
                fraction = float(m["f"])
            except ValueError:
                continue
            ci = metric_ci(result, key)
            std = metrics.get(f"{metric}@frac{m['f']}_std")
            n_runs = len(runs.get(f"frac{m['f']}") or []) if isinstance(runs, dict) else 0
            std = float(std) if ci is None and _finite_number(std) and n_runs > 1 else None
            points.append((fraction, float(value), ci, std))
        if len(points) < 2:
            continue
        points.sort(key=lambda p: p[0])
        bounds = [_bounds(p[1], p[2], p[3]) for p in points]
        cis += [p[2] for p in points]
        stds += [p[3] for p in points]
        series.append(
            Series(
                label=label,
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                low=[b[0] for b in bounds],
                high=[b[1] for b in bounds],
            )
        )
    if not series:
        return None
    return PlotSpec(
        name=f"{stem}.label_efficiency",
        kind="label_efficiency",
        title=f"{column.task}: label efficiency",
        xlabel="fraction of training labels",
        ylabel=f"{metric} (mean over seeds){better}",
        series=series,
        band=_band_name(cis, stds),
        column=column.label,
    )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- drawing -------------------------------------------------------------------------------


def _text(value: Any, limit: int = 0) -> str:
    """``value`` as matplotlib text: a ``$`` in a user's name must not start mathtext; ``limit``
    shortens a long name with an ellipsis."""
    text = str(value)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def draw(spec: PlotSpec) -> Any:
    """A matplotlib ``Figure`` (no pyplot state) drawing ``spec``; bars are ``ax.patches`` in
    ``spec.series[0].x`` order, each line a ``Line2D`` labelled with its series label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    if spec.kind == "bars":
        (s,) = spec.series
        positions = list(range(len(s.x)))
        ax.bar(positions, s.y, color="#4c72b0")
        banded = [i for i, lo in enumerate(s.low) if lo is not None]  # no bar for a cell without one
        if banded:
            ax.errorbar(
                [positions[i] for i in banded],
                [s.y[i] for i in banded],
                yerr=[
                    [max(s.y[i] - s.low[i], 0.0) for i in banded],
                    [max(s.high[i] - s.y[i], 0.0) for i in banded],
                ],
                fmt="none",
                capsize=4,
                ecolor="#222222",
            )
        tilt = len(s.x) > 3 or max(len(str(label)) for label in s.x) > 12
        ax.set_xticks(
            positions,
            [_text(label, 24) for label in s.x],
            rotation=30 if tilt else 0,
            ha="right" if tilt else "center",
            rotation_mode="anchor",
        )
    else:
        for s in spec.series:
            (line,) = ax.plot(s.x, s.y, marker="o", label=_text(s.label, 40))
            if s.has_band:
                xs = [x for x, lo in zip(s.x, s.low) if lo is not None]
                los = [lo for lo in s.low if lo is not None]
                his = [hi for hi in s.high if hi is not None]
                ax.fill_between(xs, los, his, alpha=0.2, color=line.get_color(), linewidth=0)
        if spec.kind == "label_efficiency":
            ax.set_xscale("log")
        xs = sorted({x for s in spec.series for x in s.x})
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.legend(fontsize="small")
    title = _text(spec.title) + (
        f"\n(bands: {_text(spec.band)})" if spec.band and spec.kind != "bars" else ""
    )
    if spec.kind == "bars" and spec.band:
        title += f"\n(error bars: {_text(spec.band)})"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(_text(spec.xlabel))
    ax.set_ylabel(_text(spec.ylabel))
    ax.grid(axis="y", alpha=0.3)
    return fig


def figure_bytes(fig: Any, fmt: str) -> bytes:
    """``fig`` rendered as ``png`` or ``svg`` (text as paths: the SVG needs no fonts; no
    timestamps in the metadata, so equal figures give equal bytes)."""
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}; choose one of: {', '.join(PLOT_FORMATS)}")
    import matplotlib

    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "clbench"}):
        fig.savefig(buf, format=fmt, dpi=100, metadata=metadata, bbox_inches="tight", pad_inches=0.05)
    return buf.getvalue()


def write_plots(results_dir: str | Path, output_dir: str | Path, *, fmt: str = "png") -> list[Path]:
    """Draw every plot that the results below ``results_dir`` support into ``output_dir`` as
    ``<task>.<kind>.<fmt>`` files (written atomically); returns their paths.

    Raises FileNotFoundError when ``results_dir`` does not exist, ValueError for an unknown format.
    """
    if fmt not in PLOT_FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}; choose one of: {', '.join(PLOT_FORMATS)}")
    results, _ = load_results(Path(results_dir))
    written = []
    for spec in plot_specs(results):
        path = Path(output_dir) / f"{spec.name}.{fmt}"
        atomic_write_bytes(path, figure_bytes(draw(spec), fmt))
        written.append(path)
    return written
