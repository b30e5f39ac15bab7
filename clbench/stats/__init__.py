"""Statistics of results: bootstrap CIs, paired comparisons, seed aggregation, per-sample sidecars.

Pure numpy (never torch). The pieces:

- :mod:`.bootstrap`: :func:`bootstrap_ci` (percentile bootstrap, seeded, 1000 resamples, any
  level; resampling pairs for correlations, queries for retrieval), :class:`CI`;
- :mod:`.paired`: :func:`paired_difference` (paired bootstrap CI and p-value of ``b - a`` on the
  same samples), :func:`mcnemar_exact`, :func:`unpaired_difference`, :func:`difference_from_cis`;
- :mod:`.seeds`: :func:`seed_summary` / :func:`seed_metrics` (mean, std, Student-t CI over seeds);
- :mod:`.samples`: per-sample outcomes (``TaskOutput.samples``) and their sidecar
  ``<task>.samples.npz`` next to a result;
- :mod:`.dense`: statistics over resampled images (mIoU from per-image pixel counts, COCO AP
  re-accumulated from per-image detections).

What a result file holds (written by the runner; read these for tables and plots)::

    "ci": {"main": {"estimate", "low", "high", "level": 0.95, "n_resamples": 1000, "seed",
                    "method": "percentile", "std_error", "n"}}     # or null, with "ci_reason"
    "metrics_ci": {"<metric>": {same keys}, ...}                   # other metrics, where cheap
    "samples": {"file": "<task>.samples.npz", "kind", "n", "sha256", "arrays", "metrics", ...}
    "metrics": {..., "<metric>_mean", "<metric>_std", "<metric>_ci_low", "<metric>_ci_high"}
                                                                    # protocols with seeds

:func:`result_ci` reads a result's main-metric CI (None when there is none);
:func:`cell_cis` computes them from a task's samples (the runner's entry point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bootstrap import CI, bootstrap_ci, bootstrap_distributions, ci_from_distribution, evaluate_statistic
from .paired import (
    Difference,
    McNemar,
    difference_from_cis,
    mcnemar_exact,
    paired_difference,
    unpaired_difference,
)
from .samples import SamplesError, load_samples, make_samples, read_sidecar, sidecar_path, write_sidecar
from .seeds import SeedSummary, seed_metrics, seed_summary

__all__ = [
    "CI",
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "Difference",
    "McNemar",
    "SamplesError",
    "SeedSummary",
    "bootstrap_ci",
    "cell_cis",
    "difference_from_cis",
    "load_samples",
    "make_samples",
    "mcnemar_exact",
    "paired_difference",
    "read_sidecar",
    "result_ci",
    "seed_metrics",
    "seed_summary",
    "sidecar_path",
    "unpaired_difference",
    "write_sidecar",
]

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 1000
#: vectorised statistics are cheap enough to give every listed metric a CI; row-wise ones
#: (NMI, macro-F1, ...) loop over resamples in Python, and COCO AP re-accumulates every
#: resample's detections: they get one only as the main metric
_CHEAP = {"mean", "pearson", "spearman", "group_mean", "miou", "seg_pixel_accuracy", "seg_mean_accuracy"}


def cell_cis(
    samples: Mapping[str, Any],
    main_metric: str,
    *,
    level: float = DEFAULT_LEVEL,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], str | None]:
    """Bootstrap CIs of a cell's metrics from its samples (as :func:`make_samples` returns).

    Returns ``(main CI dict or None, {other metric: CI dict}, reason when main has none)``. All
    metrics are computed on the same resamples.
    """
    specs = dict(samples["metrics"])
    if main_metric not in specs:
        return None, {}, f"the task's per-sample outcomes do not determine {main_metric!r}"
    chosen = {main_metric: specs[main_metric]}
    for metric, (statistic, names) in specs.items():
        if metric != main_metric and statistic in _CHEAP:
            chosen[metric] = (statistic, names)
    arrays, groups = samples["arrays"], samples.get("groups")
    dists = bootstrap_distributions(arrays, chosen, n_resamples=n_resamples, seed=seed, groups=groups)
    n = len(next(iter(arrays.values())))
    out = {
        metric: ci_from_distribution(
            dists[metric], evaluate_statistic(arrays, chosen[metric], groups), level=level, seed=seed, n=n
        ).to_dict()
        for metric in chosen
    }
    main = out.pop(main_metric)
    return main, out, None


def result_ci(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored CI of a result's main metric (``{"low", "high", "level", ...}``), or None."""
    ci = result.get("ci")
    if not isinstance(ci, Mapping):
        return None
    main = ci.get("main")
    if not isinstance(main, Mapping) or main.get("low") is None or main.get("high") is None:
        return None
    return dict(main)
