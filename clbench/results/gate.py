"""Compare a results folder with a baseline folder and decide whether CI may pass.

Cells are matched by ``(suite, encoder, task)``. For every baseline cell the gate fails when

- the current folder has no such cell (``missing``);
- the current cell failed (``failed``), or was skipped while the baseline cell was ok
  (``skipped``);
- both are ok but not comparable: a different ``main_metric``, ``protocol_version``,
  ``comparability_hash``, ``task_type`` or ``higher_is_better`` (``incomparable``);
- the main value fell by more than ``max(max_drop, noise)`` (absolute, in the metric's own
  units; a metric whose result says ``higher_is_better: false`` "falls" when it rises)
  (``regression``). ``noise`` is measured (``noise=True``, the default): the distance from the
  observed difference to the bound of its CI on the "no drop" side, so a drop fails only when it
  exceeds the tolerance *and* the CI of the difference excludes zero. The CI is the paired
  bootstrap CI when both cells have per-sample sidecars over the same samples, else an unpaired
  one (independent bootstraps of both sidecars, or the two stored CIs combined); with neither,
  the noise is unknown and only ``max_drop`` applies (the row says so);
- the current main value is not a finite number while the baseline's is (``invalid``).

Cells only in the current folder are reported as ``new`` and never fail. A baseline folder
without any valid result, or with files that are not valid results, fails the gate: a gate that
silently checks nothing would pass anything. Differences within floating-point rounding
(a relative 1e-9) do not count as drops.

Plain Python at import (no torch, no numpy): numpy is imported only when a cell's noise is
computed from per-sample outcomes; torch never.

Example::

    >>> outcome = gate("results/", "baselines/", max_drop=0.005)   # doctest: +SKIP
    >>> outcome.passed, outcome.markdown                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from .compare import load_with_paths
from .formats import decimals_for, format_number
from .table import higher_is_better, main_value

__all__ = ["GateResult", "GateRow", "gate"]

_REL_TOL = 1e-9


@dataclasses.dataclass
class GateRow:
    """The gate's verdict on one cell.

    ``verdict`` is one of ``pass``, ``new``, ``regression``, ``missing``, ``failed``, ``skipped``,
    ``incomparable``, ``invalid``; ``passed`` says whether the cell lets the gate pass (a
    ``skipped`` cell passes when its baseline was not ok either).
    """

    suite: str
    encoder: str
    task: str
    metric: str | None
    baseline: float | None
    current: float | None
    delta: float | None
    passed: bool
    verdict: str
    reason: str = ""
    baseline_status: str | None = None
    current_status: str | None = None
    #: the measured noise (see the module doc), the CI of ``delta`` and how it was measured
    noise: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str | None = None
    p_value: float | None = None

    @property
    def cell(self) -> str:
        return f"{self.suite}/{self.encoder}/{self.task}"


@dataclasses.dataclass
class GateResult:
    passed: bool
    rows: list[GateRow]
    markdown: str
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[GateRow]:
        return [r for r in self.rows if not r.passed]


def gate(
    current_dir: str | Path,
    baseline_dir: str | Path,
    *,
    max_drop: float = 0.0,
    noise: bool = True,
    level: float = 0.95,
    seed: int = 0,
    n_resamples: int = 1000,
) -> GateResult:
    """Check the results in ``current_dir`` against those in ``baseline_dir``.

    ``noise``: allow drops within the measured noise (the CI of the difference at ``level``,
    ``n_resamples`` bootstrap resamples drawn from ``seed``) as well as within ``max_drop``.
    Raises FileNotFoundError when a folder does not exist and ValueError for a negative or
    non-finite ``max_drop`` or a level outside (0, 1).
    """
    max_drop = float(max_drop)
    if not math.isfinite(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop must be a finite number >= 0, got {max_drop}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    noise_opts = {"level": level, "seed": seed, "n_resamples": n_resamples} if noise else None
    current_paths, current_bad = load_with_paths(Path(current_dir))
    baseline_paths, baseline_bad = load_with_paths(Path(baseline_dir))
    paths = {id(r): p for r, p in current_paths + baseline_paths}
    current = [r for r, _ in current_paths]
    baseline = [r for r, _ in baseline_paths]
    notes: list[str] = []
    current_cells = _index(current, "current", notes)
    baseline_cells = _index(baseline, "baseline", notes)
    notes += [f"current: not a valid clbench result file, ignored: {p}" for p in current_bad]
    folder_ok = True
    if baseline_bad:
        folder_ok = False
        notes += [f"baseline: not a valid clbench result file (gate fails): {p}" for p in baseline_bad]
    if not baseline_cells:
        folder_ok = False
        notes.append(
            f"baseline folder {baseline_dir} holds no results: nothing to compare against (gate fails)"
        )

    rows = []
    for key, base in sorted(baseline_cells.items()):
        cur = current_cells.get(key)
        opts = None if noise_opts is None else {**noise_opts, "paths": (paths[id(base)], paths.get(id(cur)))}
        rows.append(_compare(key, base, cur, max_drop, opts))
    for key in sorted(set(current_cells) - set(baseline_cells)):
        cur = current_cells[key]
        rows.append(
            _row(
                key,
                None,
                cur,
                passed=True,
                verdict="new",
                reason="not in the baseline",
                metric=cur.get("main_metric"),
            )
        )
    passed = folder_ok and all(r.passed for r in rows)
    return GateResult(
        passed=passed, rows=rows, markdown=_markdown(rows, passed, max_drop, notes, noise_opts), notes=notes
    )


def _index(results: list[dict[str, Any]], which: str, notes: list[str]) -> dict[tuple[str, str, str], dict]:
    cells: dict[tuple[str, str, str], dict] = {}
    for result in results:
        key = (str(result["suite"]), str(result["encoder"]), str(result["task"]))
        if key in cells:
            notes.append(
                f"{which}: duplicate result for {'/'.join(key)} ignored (the first one read is used)"
            )
            continue
        cells[key] = result
    return cells


def _row(key, base, cur, *, passed: bool, verdict: str, reason: str, metric=None, delta=None, **extra) -> GateRow:
    def value(r):
        return main_value(r) if r is not None and r.get("status") == "ok" else None

    return GateRow(
        suite=key[0],
        encoder=key[1],
        task=key[2],
        metric=metric if metric is not None else (base or cur or {}).get("main_metric"),
        baseline=value(base),
        current=value(cur),
        delta=delta,
        passed=passed,
        verdict=verdict,
        reason=reason,
        baseline_status=None if base is None else base.get("status"),
        current_status=None if cur is None else cur.get("status"),
        **extra,
    )


def _compare(key, base: dict, cur: dict | None, max_drop: float, noise_opts: dict | None = None) -> GateRow:
    if cur is None:
        return _row(key, base, cur, passed=False, verdict="missing", reason="no current result for this cell")
    b_status, c_status = base.get("status"), cur.get("status")
    if c_status == "failed":
        why = cur.get("reason") or (cur.get("error") or {}).get("message") or "no reason given"
        return _row(key, base, cur, passed=False, verdict="failed", reason=f"current run failed: {why}")
    if c_status == "skipped":
        why = cur.get("reason") or "no reason given"
        if b_status == "ok":
            return _row(key, base, cur, passed=False, verdict="skipped", reason=f"baseline was ok: {why}")
        return _row(key, base, cur, passed=True, verdict="skipped", reason=f"as in the baseline: {why}")
    if c_status != "ok":
        return _row(
            key, base, cur, passed=False, verdict="invalid", reason=f"unknown current status {c_status!r}"
        )
    if b_status != "ok":
        return _row(key, base, cur, passed=True, verdict="pass", reason=f"baseline was {b_status}; now ok")

    differences = _incomparable(base, cur)
    if differences:
        return _row(key, base, cur, passed=False, verdict="incomparable", reason="; ".join(differences))
    b_value, c_value = main_value(base), main_value(cur)
    if b_value is None or not math.isfinite(b_value):
        return _row(key, base, cur, passed=True, verdict="pass", reason="baseline has no numeric main value")
    if c_value is None or not math.isfinite(c_value):
        return _row(
            key, base, cur, passed=False, verdict="invalid", reason="current main value is not a number"
        )
    delta = c_value - b_value
    drop = -delta if higher_is_better(base) else delta
    tolerance = _REL_TOL * max(1.0, abs(b_value), abs(c_value))
    decimals = decimals_for([b_value, c_value])
    extra: dict[str, Any] = {}
    noise_note = ""
    allowed = max_drop
    if noise_opts is not None and drop - max_drop > tolerance:  # only a drop beyond the tolerance
        extra, noise_note = _noise(base, cur, delta, noise_opts)
        if extra.get("noise") is not None:
            allowed = max(max_drop, extra["noise"])
    if drop - allowed > tolerance:
        direction = "fell" if higher_is_better(base) else "rose (lower is better)"
        limit = f"the allowed {format_number(max_drop, decimals)}"
        if extra.get("noise") is not None:
            limit = (
                f"max(tolerance {format_number(max_drop, decimals)}, "
                f"noise {format_number(extra['noise'], decimals)})"
            )
        reason = f"{direction} by {format_number(abs(delta), decimals)}, more than {limit}"
        if noise_note:
            reason += f" ({noise_note})"
        return _row(key, base, cur, passed=False, verdict="regression", reason=reason, delta=delta, **extra)
    reason = ""
    if allowed > max_drop:
        reason = f"within the noise ({format_number(extra['noise'], decimals)}, {extra['ci_method']})"
    return _row(key, base, cur, passed=True, verdict="pass", reason=reason, delta=delta, **extra)


def _noise(base: dict, cur: dict, delta: float, opts: dict) -> tuple[dict[str, Any], str]:
    """The noise of ``cur - base`` (GateRow fields) and a note when it could not be measured."""
    from .compare import cell_difference

    base_path, cur_path = opts["paths"]
    try:
        d = cell_difference(
            base, base_path, cur, cur_path, level=opts["level"], seed=opts["seed"], n_resamples=opts["n_resamples"]
        )
    except Exception as err:  # a broken sidecar must not decide the gate: fall back to the tolerance
        return {}, f"noise not measured: {type(err).__name__}: {err}"
    if d.low is None or d.high is None or not (math.isfinite(d.low) and math.isfinite(d.high)):
        return {}, f"noise not measured: {d.note or 'no CI'}"
    # distance from the observed difference to the CI bound on the "no drop" side
    noise = (d.high - delta) if higher_is_better(base) else (delta - d.low)
    fields = {
        "noise": max(0.0, noise), "ci_low": d.low, "ci_high": d.high, "ci_method": d.method, "p_value": d.p_value,
    }
    return fields, ""


def _incomparable(base: dict, cur: dict) -> list[str]:
    out = []
    for field in ("main_metric", "protocol_version", "comparability_hash", "task_type"):
        b, c = base.get(field), cur.get(field)
        if field == "protocol_version":
            b, c = (None if b is None else str(b)), (None if c is None else str(c))
        if b != c:
            out.append(f"{field} differs: baseline {b}, current {c}")
    if higher_is_better(base) != higher_is_better(cur):
        out.append(
            f"higher_is_better differs: baseline {higher_is_better(base)}, current {higher_is_better(cur)}"
        )
    return out


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _shown(row: GateRow, which: str, decimals: int) -> str:
    value, status = (
        (row.baseline, row.baseline_status) if which == "baseline" else (row.current, row.current_status)
    )
    if status is None:
        return "missing" if which == "current" else "–"
    if status != "ok":
        return status
    return format_number(value, decimals)


def _markdown(
    rows: list[GateRow], passed: bool, max_drop: float, notes: list[str], noise_opts: dict | None = None
) -> str:
    failing = [r for r in rows if not r.passed]
    order = {"new": 2}
    shown = sorted(rows, key=lambda r: (r.passed, order.get(r.verdict, 1)))  # failures first; stable
    checked = sum(1 for r in rows if r.verdict != "new")
    head = "**clbench gate: PASSED**" if passed else "**clbench gate: FAILED**"
    rule = f"max drop {max_drop:g}"
    if noise_opts is not None:
        rule += f", or the noise: the {100 * noise_opts['level']:g}% CI of the difference, if larger"
    lines = [
        f"{head}: {len(failing)} of {checked} baseline cells fail ({rule}).",
        "",
        "| cell | metric | baseline | current | delta | verdict |",
        "|:--|:--|--:|--:|--:|:--|",
    ]
    for r in shown:
        decimals = decimals_for([v for v in (r.baseline, r.current) if v is not None])
        delta = "" if r.delta is None else format_number(r.delta, decimals, signed=True)
        if r.delta is not None and r.ci_low is not None and r.ci_high is not None:
            delta += (
                f" [{format_number(r.ci_low, decimals, signed=True)}, "
                f"{format_number(r.ci_high, decimals, signed=True)}]"
            )
        verdict = r.verdict if r.passed else f"**FAIL** {r.verdict}"
        if r.reason:
            verdict += f": {r.reason}"
        cells = [
            r.cell,
            r.metric or "",
            _shown(r, "baseline", decimals),
            _shown(r, "current", decimals),
            delta,
            verdict,
        ]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if notes:
        lines += ["", "**Notes**", ""]
        lines.extend(f"- {_md(n)}" for n in notes)
    return "\n".join(lines) + "\n"
