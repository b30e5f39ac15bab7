"""Compare two sets of results cell by cell: the difference of each main metric, its CI, its p-value.

``compare(A, B)`` matches the cells of two results folders by ``(suite, encoder, task)``;
``compare(folder, encoders=("a", "b"))`` matches encoder ``a``'s cells with encoder ``b``'s in
one folder by ``(suite, task)`` (``compare(A, B, encoders=("a", "b"))`` takes ``a`` from A and
``b`` from B). Every difference is ``B - A``.

How the CI of a difference is measured, best first (:func:`cell_difference`):

1. ``paired-bootstrap``: both cells have per-sample outcomes (sidecars) over the same samples
   (same count, same dataset fingerprint, same gold labels/scores where stored): resampling the
   samples jointly cancels the difficulty both encoders share. For accuracy cells (0/1
   correctness) McNemar's exact test is reported too.
2. ``unpaired-bootstrap``: both have sidecars, but over different samples.
3. ``normal-from-cis``: only the stored CIs of the two main values are known; their half-widths
   combine as independent errors (rescaled to the requested level).
4. none: the difference alone, without CI or p-value.

Significance marks: ``*`` p < 0.05, ``**`` p < 0.01; the p-value is McNemar's where it applies,
else the bootstrap (or normal) p-value. Numpy is imported only when a CI is computed; torch never.

Example::

    >>> out = compare("results/run1", "results/run2")           # doctest: +SKIP
    >>> print(out.markdown())                                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .formats import decimals_for, format_number
from .store import iter_result_files, read_result
from .table import higher_is_better, main_value

__all__ = [
    "CellDifference",
    "Comparison",
    "cell_difference",
    "compare",
    "load_with_paths",
    "significance_mark",
]

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000


@dataclasses.dataclass
class CellDifference:
    """``b - a`` of one cell's main metric with what is known of its uncertainty."""

    suite: str
    task: str
    encoder_a: str
    encoder_b: str
    metric: str | None
    a: float | None
    b: float | None
    delta: float | None = None
    low: float | None = None
    high: float | None = None
    level: float | None = None
    p_value: float | None = None
    method: str | None = None
    mcnemar_p: float | None = None
    mcnemar_discordant: tuple[int, int] | None = None
    status: str = "ok"  # ok | missing | failed | skipped | incomparable | invalid
    note: str = ""
    higher_is_better: bool = True

    @property
    def p(self) -> float | None:
        """The p-value behind the significance mark (McNemar's where it applies)."""
        return self.mcnemar_p if self.mcnemar_p is not None else self.p_value

    @property
    def mark(self) -> str:
        return significance_mark(self.p)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mark"] = self.mark
        if self.mcnemar_discordant is not None:
            out["mcnemar_discordant"] = list(self.mcnemar_discordant)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def significance_mark(p: float | None) -> str:
    """``**`` for p < 0.01, ``*`` for p < 0.05, else empty."""
    if p is None or not math.isfinite(p):
        return ""
    return "**" if p < 0.01 else ("*" if p < 0.05 else "")


@dataclasses.dataclass
class Comparison:
    label_a: str
    label_b: str
    cells: list[CellDifference]
    level: float
    notes: list[str] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        return _markdown(self)

    def json(self) -> str:
        return json.dumps(
            {
                "a": self.label_a,
                "b": self.label_b,
                "level": self.level,
                "cells": [c.to_dict() for c in self.cells],
                "notes": self.notes,
            },
            indent=2,
            sort_keys=True,
        ) + "\n"


# ------------------------------------------------------------------------------------ loading
def load_with_paths(root: Path) -> tuple[list[tuple[dict[str, Any], Path]], list[Path]]:
    """Like :func:`clbench.results.store.load_results`, keeping each result's path (sidecars are
    found next to it). Raises FileNotFoundError when ``root`` does not exist."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such results folder")
    good, bad = [], []
    for path in iter_result_files(root):
        data = read_result(path)
        if data is None:
            bad.append(path)
        else:
            good.append((data, path))
    return good, bad


# ------------------------------------------------------------------------------ one difference
def _samples_of(result: dict[str, Any], path: Path, metric: str):
    """(LoadedSamples, None) when usable for ``metric``, else (None, why)."""
    if not result.get("samples"):
        return None, "no per-sample outcomes"
    from ..stats.samples import SamplesError, load_samples

    try:
        loaded = load_samples(result, path)
    except SamplesError as err:
        return None, str(err)
    if loaded.spec(metric) is None:
        return None, f"per-sample outcomes do not determine {metric}"
    return loaded, None


def _same_samples(ra: dict, sa: Any, rb: dict, sb: Any) -> str | None:
    """Why the two sidecars are not over the same samples, or None when they are."""
    import numpy as np

    if sa.n != sb.n:
        return f"different sample counts ({sa.n} vs {sb.n})"
    if sa.kind != sb.kind:
        return f"different kinds of outcomes ({sa.kind} vs {sb.kind})"
    fa = (ra.get("fingerprints") or {}).get("dataset")
    fb = (rb.get("fingerprints") or {}).get("dataset")
    if fa is not None and fb is not None and fa != fb:
        return "different dataset fingerprints"
    for ref in ("gold", "y_true"):
        if ref in sa.arrays and ref in sb.arrays and not np.array_equal(sa.arrays[ref], sb.arrays[ref]):
            return f"different {ref} arrays"
    if (sa.groups is None) != (sb.groups is None) or (
        sa.groups is not None and not np.array_equal(sa.groups, sb.groups)
    ):
        return "different sample groups"
    return None


def _rescaled(ci: dict[str, Any], level: float) -> dict[str, Any]:
    """A stored CI's half-width rescaled to ``level`` (normal approximation)."""
    from ..stats.paired import _normal_quantile

    stored = float(ci["level"])
    if math.isclose(stored, level):
        return ci
    centre = (float(ci["low"]) + float(ci["high"])) / 2
    half = (float(ci["high"]) - float(ci["low"])) / 2
    half *= _normal_quantile(0.5 + level / 2) / _normal_quantile(0.5 + stored / 2)
    return {"low": centre - half, "high": centre + half, "level": level}


def _stored_ci(result: dict[str, Any]) -> dict[str, Any] | None:
    ci = result.get("ci")
    main = ci.get("main") if isinstance(ci, dict) else None
    if not isinstance(main, dict):
        return None
    try:
        low, high, level = float(main["low"]), float(main["high"]), float(main.get("level", 0.95))
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < level < 1 and low <= high):
        return None
    return {"low": low, "high": high, "level": level}


def cell_difference(
    ra: dict[str, Any],
    pa: Path,
    rb: dict[str, Any],
    pb: Path,
    *,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> CellDifference:
    """``b - a`` of the main metric of two ``ok``, comparable results (paths locate sidecars)."""
    metric = ra.get("main_metric")
    va, vb = main_value(ra), main_value(rb)
    out = CellDifference(
        suite=str(ra["suite"]), task=str(ra["task"]), encoder_a=str(ra["encoder"]), encoder_b=str(rb["encoder"]),
        metric=metric, a=va, b=vb, higher_is_better=higher_is_better(ra),
    )
    if va is None or vb is None or not (math.isfinite(va) and math.isfinite(vb)):
        out.status, out.note = "invalid", "a main value is not a number"
        return out
    out.delta = vb - va
    sa, why_a = _samples_of(ra, pa, metric)
    sb, why_b = _samples_of(rb, pb, metric)
    notes = []
    if sa is not None and sb is not None:
        from ..stats.paired import mcnemar_exact, paired_difference, unpaired_difference

        spec_a, spec_b = sa.spec(metric), sb.spec(metric)
        why = _same_samples(ra, sa, rb, sb)
        if why is None:
            d = paired_difference(
                sa.arrays, sb.arrays, spec_a, statistic_b=spec_b, level=level, n_resamples=n_resamples,
                seed=seed, groups=sa.groups,
            )
            if sa.kind == "correct" and spec_a[0] == "mean" and spec_b[0] == "mean":
                ca, cb = sa.arrays[spec_a[1][0]], sb.arrays[spec_b[1][0]]
                try:
                    m = mcnemar_exact(ca, cb)
                    out.mcnemar_p, out.mcnemar_discordant = m.p_value, (m.b01, m.b10)
                except ValueError:  # averaged over seeds: not 0/1, McNemar does not apply
                    pass
        else:
            notes.append(f"unpaired: {why}")
            d = unpaired_difference(
                sa.arrays, sb.arrays, spec_a, statistic_b=spec_b, groups_a=sa.groups, groups_b=sb.groups,
                level=level, n_resamples=n_resamples, seed=seed,
            )
        # the bootstrap recomputes the metric from the sidecar; the stored values stay the reference
        out.low, out.high = out.delta + (d.low - d.delta), out.delta + (d.high - d.delta)
        out.level, out.p_value, out.method = level, d.p_value, d.method
    else:
        ca, cb = _stored_ci(ra), _stored_ci(rb)
        if ca is not None and cb is not None:
            from ..stats.paired import difference_from_cis

            d = difference_from_cis(va, _rescaled(ca, level), vb, _rescaled(cb, level))
            out.low, out.high, out.level, out.p_value, out.method = d.low, d.high, level, d.p_value, d.method
            notes.append(f"no paired outcomes ({why_a if sa is None else why_b})")
        else:
            notes.append(f"no CI: {why_a if sa is None else why_b}")
    out.note = "; ".join(notes)
    return out


def _incomparable(ra: dict, rb: dict) -> list[str]:
    out = []
    for field in ("main_metric", "protocol_version", "comparability_hash", "task_type"):
        a, b = ra.get(field), rb.get(field)
        if field == "protocol_version":
            a, b = (None if a is None else str(a)), (None if b is None else str(b))
        if a != b:
            out.append(f"{field} differs: {a} vs {b}")
    if higher_is_better(ra) != higher_is_better(rb):
        out.append("higher_is_better differs")
    return out


# --------------------------------------------------------------------------------- comparison
def compare(
    a: str | Path,
    b: str | Path | None = None,
    *,
    encoders: tuple[str, str] | None = None,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Comparison:
    """Per-cell ``B - A`` differences of main metrics, with CIs and p-values.

    ``b`` None compares two ``encoders`` within folder ``a``. Raises ValueError when neither a
    second folder nor two encoders are given, FileNotFoundError for a missing folder.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if b is None and encoders is None:
        raise ValueError("compare needs two results folders, or one folder and two encoders")
    results_a, bad_a = load_with_paths(Path(a))
    results_b, bad_b = (results_a, bad_a) if b is None else load_with_paths(Path(b))
    notes = [f"not a valid clbench result file, ignored: {p}" for p in dict.fromkeys(bad_a + bad_b)]
    if encoders is not None:
        enc_a, enc_b = encoders
        cells_a = _index((r for r in results_a if r[0]["encoder"] == enc_a), notes, with_encoder=False)
        cells_b = _index((r for r in results_b if r[0]["encoder"] == enc_b), notes, with_encoder=False)
        for enc, cells, folder in ((enc_a, cells_a, a), (enc_b, cells_b, b or a)):
            if not cells:
                notes.append(f"no results of encoder {enc!r} in {folder}")
        label_a = f"{a}:{enc_a}" if b is not None else enc_a
        label_b = f"{b}:{enc_b}" if b is not None else enc_b
    else:
        cells_a = _index(results_a, notes, with_encoder=True)
        cells_b = _index(results_b, notes, with_encoder=True)
        label_a, label_b = str(a), str(b)
    rows = []
    for key in sorted(set(cells_a) | set(cells_b)):
        rows.append(_compare_cell(key, cells_a.get(key), cells_b.get(key), level, seed, n_resamples))
    return Comparison(label_a=label_a, label_b=label_b, cells=rows, level=level, notes=notes)


def _index(results: Iterable[tuple[dict, Path]], notes: list[str], *, with_encoder: bool):
    cells: dict[tuple[str, ...], tuple[dict, Path]] = {}
    for result, path in results:
        key = (str(result["suite"]), str(result["task"])) + ((str(result["encoder"]),) if with_encoder else ())
        if key in cells:
            notes.append(f"duplicate result for {'/'.join(key)} ignored: {path}")
            continue
        cells[key] = (result, path)
    return cells


def _compare_cell(key, ca, cb, level, seed, n_resamples) -> CellDifference:
    some = (ca or cb)[0]
    if ca is None or cb is None:
        which = "A" if ca is None else "B"
        return CellDifference(
            suite=key[0], task=key[1], encoder_a=str(ca[0]["encoder"]) if ca else "",
            encoder_b=str(cb[0]["encoder"]) if cb else "", metric=some.get("main_metric"),
            a=main_value(ca[0]) if ca else None, b=main_value(cb[0]) if cb else None,
            status="missing", note=f"no result in {which}",
        )
    (ra, pa), (rb, pb) = ca, cb
    base = CellDifference(
        suite=key[0], task=key[1], encoder_a=str(ra["encoder"]), encoder_b=str(rb["encoder"]),
        metric=ra.get("main_metric"), a=None, b=None,
    )
    for which, r in (("A", ra), ("B", rb)):
        if r.get("status") != "ok":
            base.status = str(r.get("status")) if r.get("status") in ("failed", "skipped") else "invalid"
            base.note = f"{which} {r.get('status')}: {r.get('reason') or 'no reason given'}"
            base.a = main_value(ra) if ra.get("status") == "ok" else None
            base.b = main_value(rb) if rb.get("status") == "ok" else None
            return base
    differences = _incomparable(ra, rb)
    if differences:
        base.status, base.note = "incomparable", "; ".join(differences)
        base.a, base.b = main_value(ra), main_value(rb)
        return base
    return cell_difference(ra, pa, rb, pb, level=level, seed=seed, n_resamples=n_resamples)


# ----------------------------------------------------------------------------------- markdown
def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _p_text(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _markdown(c: Comparison) -> str:
    pct = f"{100 * c.level:g}%"
    lines = [
        f"**clbench compare**: B = {_md(c.label_b)} minus A = {_md(c.label_a)}; {pct} CIs; "
        + "`*` p < 0.05, `**` p < 0.01.",
        "",
        f"| cell | metric | A | B | B - A | {pct} CI | p | McNemar p | method / note |",
        "|:--|:--|--:|--:|--:|:--|--:|--:|:--|",
    ]
    for d in c.cells:
        cell = f"{d.suite}/{d.task}" + (f" ({d.encoder_a} vs {d.encoder_b})" if d.encoder_a != d.encoder_b else
                                        f" ({d.encoder_a})")
        decimals = decimals_for([v for v in (d.a, d.b) if v is not None])
        delta = "" if d.delta is None else format_number(d.delta, decimals, signed=True) + d.mark
        ci = (
            f"[{format_number(d.low, decimals, signed=True)}, {format_number(d.high, decimals, signed=True)}]"
            if d.low is not None and d.high is not None and math.isfinite(d.low) and math.isfinite(d.high)
            else ""
        )
        what = d.method or ""
        if d.status != "ok":
            what = f"{d.status}: {d.note}"
        elif d.note:
            what = f"{what}; {d.note}" if what else d.note
        if not d.higher_is_better:
            what = f"{what}; lower is better" if what else "lower is better"
        row = [
            cell, d.metric or "",
            "" if d.a is None else format_number(d.a, decimals),
            "" if d.b is None else format_number(d.b, decimals),
            delta, ci, _p_text(d.p_value), _p_text(d.mcnemar_p), what,
        ]
        lines.append("| " + " | ".join(_md(x) for x in row) + " |")
    if c.notes:
        lines += ["", "**Notes**", ""]
        lines.extend(f"- {_md(n)}" for n in c.notes)
    return "\n".join(lines) + "\n"
