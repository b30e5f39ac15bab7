"""`clbench plot`: valid PNG/SVG files whose plotted numbers are the results' own numbers."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clbench.cli import app
from clbench.results.plots import draw, figure_bytes, plot_specs, write_plots
from clbench.results.store import SCHEMA_VERSION, cell_path, write_result

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(encoder, task, task_type, metrics, main, *, status="ok", reason=None, **extra):
    r = {
        "schema_version": SCHEMA_VERSION,
        "suite": "s",
        "encoder": encoder,
        "task": task,
        "task_type": task_type,
        "status": status,
        "reason": reason,
        "metrics": metrics,
        "main_metric": main,
        "main_value": metrics.get(main),
        "protocol_version": "1",
        "comparability_hash": f"h-{task}",
    }
    r.update(extra)
    return r


def knn(encoder, values, **extra):
    """k-NN result with top1@k<k> for each k in ``values`` (main k=20) and decoy top5 values."""
    metrics = {f"top1@k{k}": v for k, v in values.items()}
    metrics.update({f"top5@k{k}": 0.999 for k in values})
    return result(encoder, "cls-knn", "knn", metrics, "top1@k20", **extra)


def probe(encoder, per_fraction, seeds=3, ci=None):
    """Linear-probe result: per fraction (mean, std) over ``seeds`` seeds; headline = fraction 1;
    ``ci``: fraction -> (low, high), the seed-aggregation interval (``_ci_low``/``_ci_high``)."""
    metrics, fractions = {}, {}
    for f, (low, high) in (ci or {}).items():
        metrics[f"top1@frac{f:g}_ci_low"], metrics[f"top1@frac{f:g}_ci_high"] = low, high
    for f, (mean, std) in per_fraction.items():
        metrics[f"top1@frac{f:g}_mean"] = mean
        metrics[f"top1@frac{f:g}_std"] = std
        metrics[f"top5@frac{f:g}_mean"] = 0.5  # a decoy: must not be what is plotted
        n = 1 if f == 1.0 else seeds
        fractions[f"frac{f:g}"] = [{"seed": s, "top1": mean} for s in range(n)]
    metrics["top1"] = per_fraction[1.0][0]
    return result(
        encoder,
        "cls-linear",
        "linear_probe",
        metrics,
        "top1",
        details={"fractions": fractions, "headline_fraction": 1.0},
    )


RESULTS = [
    knn(
        "alpha",
        {10: 0.61, 20: 0.64, 50: 0.66},
        ci={"main": {"low": 0.60, "high": 0.68, "level": 0.95}},
        metrics_ci={"top1@k10": {"low": 0.58, "high": 0.63, "level": 0.95}},
    ),
    knn("beta", {10: 0.71, 20: 0.73, 50: 0.70}),
    knn("gamma", {20: 0.5}, status="failed", reason="boom"),
    probe("alpha", {0.01: (0.30, 0.02), 0.1: (0.55, 0.01), 1.0: (0.80, 0.0)}),
    probe("beta", {0.1: (0.60, 0.03), 1.0: (0.85, 0.0)}, ci={0.1: (0.5, 0.7)}),
]


def by_name(specs):
    return {s.name: s for s in specs}


def test_specs_carry_the_results_numbers():
    specs = by_name(plot_specs(RESULTS))
    assert sorted(specs) == ["cls-knn.bars", "cls-knn.k", "cls-linear.bars", "cls-linear.label_efficiency"]

    bars = specs["cls-knn.bars"].series[0]
    assert bars.x == ["alpha", "beta"]  # the failed cell is not drawn
    assert bars.y == [0.64, 0.73]  # main metric top1@k20, not top5
    assert bars.low == [0.60, None] and bars.high == [0.68, None]

    k = {s.label: s for s in specs["cls-knn.k"].series}
    assert k["alpha"].x == [10, 20, 50] and k["alpha"].y == [0.61, 0.64, 0.66]
    assert k["beta"].y == [0.71, 0.73, 0.70]
    assert k["alpha"].low == [0.58, 0.60, None]  # per-k interval, main interval at k=20
    assert specs["cls-knn.k"].band == "95% CI"

    le = {s.label: s for s in specs["cls-linear.label_efficiency"].series}
    assert le["alpha"].x == [0.01, 0.1, 1.0] and le["alpha"].y == [0.30, 0.55, 0.80]
    # mean ± std where several seeds ran; fraction 1 ran once: no band there
    assert le["alpha"].low[:2] == pytest.approx([0.28, 0.54]) and le["alpha"].high[:2] == pytest.approx(
        [0.32, 0.56]
    )
    assert le["alpha"].low[2] is None
    assert le["beta"].x == [0.1, 1.0] and le["beta"].y == [0.60, 0.85]
    assert le["beta"].low == [0.5, None] and le["beta"].high == [0.7, None]  # its CI, not ± std
    band = specs["cls-linear.label_efficiency"].band
    assert band == "CI (t over seeds); ± std over seeds where no interval is recorded"


def test_drawn_artists_hold_the_same_numbers():
    specs = by_name(plot_specs(RESULTS))
    ax = draw(specs["cls-knn.bars"]).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.64, 0.73])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["alpha", "beta"]
    from matplotlib.container import ErrorbarContainer

    (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segment,) = errorbars.lines[2][0].get_segments()  # alpha's interval only; beta has none
    assert segment.ravel().tolist() == pytest.approx([0, 0.60, 0, 0.68])

    ax = draw(specs["cls-knn.k"]).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines["alpha"].get_xdata()) == [10, 20, 50]
    assert list(lines["alpha"].get_ydata()) == pytest.approx([0.61, 0.64, 0.66])
    assert list(lines["beta"].get_ydata()) == pytest.approx([0.71, 0.73, 0.70])
    assert len(ax.collections) == 1  # one CI band: alpha's (beta has none)

    ax = draw(specs["cls-linear.label_efficiency"]).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert list(lines["alpha"].get_ydata()) == pytest.approx([0.30, 0.55, 0.80])
    assert ax.get_xscale() == "log"


def test_files_are_valid_png_and_svg(tmp_path):
    folder = tmp_path / "results"
    for r in RESULTS:
        write_result(cell_path(folder, r["suite"], r["encoder"], r["task"]), r)
    png = write_plots(folder, tmp_path / "png", fmt="png")
    assert sorted(p.name for p in png) == [
        "cls-knn.bars.png",
        "cls-knn.k.png",
        "cls-linear.bars.png",
        "cls-linear.label_efficiency.png",
    ]
    for path in png:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 100 and height > 100

    res = CliRunner().invoke(
        app, ["plot", str(folder), "--output-dir", str(tmp_path / "svg"), "--format", "svg"]
    )
    assert res.exit_code == 0, res.output
    svgs = sorted((tmp_path / "svg").glob("*.svg"))
    assert len(svgs) == 4
    for path in svgs:
        root = ET.fromstring(path.read_bytes())
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert b"<text" not in path.read_bytes()  # glyphs as paths: no fonts needed
    # equal figures give equal bytes (no timestamps), so regenerated plots diff cleanly
    spec = plot_specs(RESULTS)[0]
    assert figure_bytes(draw(spec), "svg") == figure_bytes(draw(spec), "svg")


def test_user_names_with_dollars_do_not_break_mathtext(tmp_path):
    weird = [knn("pay$5 $x^2$", {10: 0.5, 20: 0.6}), knn("b", {10: 0.4, 20: 0.45})]
    for spec in plot_specs(weird):
        assert figure_bytes(draw(spec), "png").startswith(PNG_MAGIC)


def test_no_plottable_results_and_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert write_plots(tmp_path / "empty", tmp_path / "out") == []
    with pytest.raises(ValueError, match="png"):
        write_plots(tmp_path / "empty", tmp_path / "out", fmt="jpg")
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such results folder" in res.output


def test_plot_and_report_do_not_import_torch(tmp_path):
    folder = tmp_path / "results"
    for r in RESULTS:
        write_result(cell_path(folder, r["suite"], r["encoder"], r["task"]), r)
    code = (
        "import sys; from clbench.cli import app; from typer.testing import CliRunner; "
        f"r = CliRunner().invoke(app, ['plot', {str(folder)!r}, '-o', {str(tmp_path / 'p')!r}]); "
        "assert r.exit_code == 0, r.output; "
        f"r = CliRunner().invoke(app, ['report', {str(folder)!r}, '-f', 'html', '-o', {str(tmp_path / 'r.html')!r}]); "
        "assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Path(tmp_path / "r.html").read_text().count("data:image/svg+xml;base64,") == 4
