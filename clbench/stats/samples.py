"""Per-sample outcomes of a cell: what a task hands the runner, and the sidecar file next to a result.

A task returns ``TaskOutput.samples`` (see :func:`make_samples`)::

    {
        "kind": "correct",                  # what the arrays are (KINDS)
        "arrays": {"top1@k20": bool [n], "top1@k10": bool [n], ...},   # one length n (rows: [n, ...])
        "metrics": {"top1@k20": ("mean", ["top1@k20"]), ...},          # metric -> statistic spec
        "groups": None,                     # optional int [n]: strata, resampled within themselves
    }

``metrics`` says how each metric follows from the arrays (a statistic of
:mod:`clbench.stats.bootstrap` and the arrays it reads): ``mean`` of per-sample correctness is an
accuracy, ``spearman`` of ``gold``/``pred`` a correlation over pairs, ``group_mean`` of per-query
hits the mean of two directions' recalls. Only metrics listed there get a CI. An array may hold one
row per sample (``[n, C]``: a segmentation image's per-class pixel counts, a detection image's
padded detections); resampling draws whole rows.

The runner writes the arrays to ``<task>.samples.npz`` next to ``<task>.json`` (plain ``.npz``,
no pickle: read with ``np.load(allow_pickle=False)``; arrays stored as ``a0``, ``a1``, ... in the
order of ``spec["arrays"]``, plus ``groups``) and records the spec in the result::

    "samples": {"file": "knn.samples.npz", "kind": "correct", "n": 540, "sha256": "...",
                "arrays": ["top1@k20", ...], "metrics": {"top1@k20": {"statistic": "mean",
                "arrays": ["top1@k20"]}}, "groups": false}

:func:`read_sidecar` checks the file's size, checksum and array lengths against the spec and
raises :class:`SamplesError` for a missing, stale or mismatched sidecar, so statistics are never
computed from outcomes of another run.

>>> import numpy as np
>>> s = make_samples("correct", {"top1": np.array([1, 0, 1], bool)}, {"top1": ("mean", ["top1"])})
>>> sorted(s), s["arrays"]["top1"].dtype
(['arrays', 'groups', 'kind', 'metrics'], dtype('bool'))
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "SIDECAR_SUFFIX",
    "LoadedSamples",
    "SamplesError",
    "encode_sidecar",
    "load_samples",
    "make_samples",
    "read_sidecar",
    "sidecar_path",
    "task_samples",
    "write_sidecar",
]

SIDECAR_SUFFIX = ".samples.npz"
#: correct: 0/1 per test sample (accuracy-type metrics; McNemar applies);
#: per_query: a score per query (retrieval metrics, means over queries);
#: pairs: gold and predicted similarity per pair (correlations);
#: labels: true and predicted labels or scores per sample (metrics recomputed on each resample)
#: pixel_counts: per image, per-class intersection / union / target pixels (segmentation: mIoU
#: from summed counts); detections: per image, its scored detections and their matches
#: (detection: COCO AP re-accumulated over the resampled images)
KINDS = ("correct", "per_query", "pairs", "labels", "pixel_counts", "detections")


class SamplesError(ValueError):
    """A sidecar is missing, unreadable, stale (checksum differs) or does not match its spec."""


@dataclasses.dataclass
class LoadedSamples:
    """Per-sample arrays read back from a sidecar, with what they mean."""

    kind: str
    arrays: dict[str, np.ndarray]
    metrics: dict[str, tuple[str, list[str]]]
    groups: np.ndarray | None
    path: Path | None = None

    @property
    def n(self) -> int:
        return len(next(iter(self.arrays.values())))

    def spec(self, metric: str) -> tuple[str, list[str]] | None:
        return self.metrics.get(metric)


def make_samples(
    kind: str,
    arrays: Mapping[str, Any],
    metrics: Mapping[str, tuple[str, Sequence[str]]],
    groups: Any = None,
) -> dict[str, Any]:
    """Validate and normalise a task's per-sample outcomes into the ``TaskOutput.samples`` form.

    Raises ValueError for an unknown kind, arrays of different lengths or dimensions, object
    arrays, a metric naming an unknown array or statistic.
    """
    from .bootstrap import _known

    if kind not in KINDS:
        raise ValueError(f"samples kind must be one of {KINDS}, got {kind!r}")
    if not arrays:
        raise ValueError("samples: no arrays")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"samples: invalid array name {name!r}")
        arr = np.asarray(value)
        if arr.dtype == object or arr.ndim < 1:
            raise ValueError(
                f"samples: array {name!r} must be a 1-D numeric array (or one row per sample), got {arr.dtype} {arr.shape}"
            )
        out[name] = arr
    lengths = {k: v.shape[0] for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"samples: arrays of different lengths {lengths}")
    n = next(iter(lengths.values()))
    if n < 1:
        raise ValueError("samples: arrays are empty")
    specs: dict[str, tuple[str, list[str]]] = {}
    for metric, (statistic, names) in metrics.items():
        names = [str(a) for a in names]
        if not _known(statistic):
            raise ValueError(f"samples: metric {metric!r}: unknown statistic {statistic!r}")
        missing = [a for a in names if a not in out]
        if missing:
            raise ValueError(f"samples: metric {metric!r} reads arrays {missing} that are not given")
        specs[str(metric)] = (str(statistic), names)
    g = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,) or not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"samples: groups must be integers of shape ({n},), got {g.dtype} {g.shape}")
    if any(s == "group_mean" for s, _ in specs.values()) and g is None:
        raise ValueError("samples: statistic group_mean needs groups")
    return {"kind": kind, "arrays": out, "metrics": specs, "groups": g}


def task_samples(
    kind: str,
    arrays: Mapping[str, Any],
    metrics: Mapping[str, tuple[str, Sequence[str]]],
    groups: Any = None,
) -> dict[str, Any]:
    """:func:`make_samples` for tasks: outcomes that do not validate never fail the cell; they
    become ``{"unavailable": reason}`` (the result then has ``ci: null`` and that reason)."""
    try:
        return make_samples(kind, arrays, metrics, groups)
    except ValueError as err:
        return {"unavailable": f"per-sample outcomes not recorded: {err}"}


def sidecar_path(result_path: Path) -> Path:
    """``<dir>/<task>.samples.npz`` for the result ``<dir>/<task>.json``."""
    result_path = Path(result_path)
    return result_path.with_name(result_path.stem + SIDECAR_SUFFIX)


def encode_sidecar(samples: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The ``.npz`` bytes of ``samples`` (as :func:`make_samples` returns) and its spec (without
    ``file``)."""
    samples = make_samples(samples["kind"], samples["arrays"], samples["metrics"], samples.get("groups"))
    names = list(samples["arrays"])
    payload = {f"a{i}": samples["arrays"][name] for i, name in enumerate(names)}
    if samples["groups"] is not None:
        payload["groups"] = samples["groups"]
    buf = io.BytesIO()
    np.savez_compressed(buf, **payload)
    data = buf.getvalue()
    spec = {
        "kind": samples["kind"],
        "n": len(samples["arrays"][names[0]]),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "arrays": names,
        "metrics": {m: {"statistic": s, "arrays": list(a)} for m, (s, a) in samples["metrics"].items()},
        "groups": samples["groups"] is not None,
    }
    return data, spec


def write_sidecar(result_path: Path, samples: Mapping[str, Any]) -> dict[str, Any]:
    """Write the sidecar of the result at ``result_path`` atomically; return its spec."""
    from ..results.store import atomic_write_bytes

    data, spec = encode_sidecar(samples)
    target = sidecar_path(result_path)
    atomic_write_bytes(target, data)
    return {"file": target.name, **spec}


def read_sidecar(result_path: Path, spec: Mapping[str, Any]) -> LoadedSamples:
    """Read and check the sidecar described by ``spec`` (a result's ``samples`` entry)."""
    try:
        name = str(spec["file"])
        names = [str(a) for a in spec["arrays"]]
        n = int(spec["n"])
        digest = str(spec["sha256"])
        metrics = {str(m): (str(v["statistic"]), [str(a) for a in v["arrays"]]) for m, v in spec["metrics"].items()}
        kind = str(spec["kind"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SamplesError(f"{result_path}: malformed 'samples' spec ({type(err).__name__}: {err})") from None
    if "/" in name or "\\" in name or not name.endswith(SIDECAR_SUFFIX):
        raise SamplesError(f"{result_path}: samples.file {name!r} is not a sidecar next to the result")
    path = Path(result_path).with_name(name)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SamplesError(f"{path}: sidecar missing or unreadable ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise SamplesError(f"{path}: sidecar is stale: its sha256 differs from the one recorded in {result_path}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {a: npz[f"a{i}"] for i, a in enumerate(names)}
            groups = npz["groups"] if spec.get("groups") else None
    except (KeyError, ValueError, OSError) as err:
        raise SamplesError(f"{path}: not a valid sidecar ({type(err).__name__}: {err})") from None
    for a, arr in arrays.items():
        if arr.ndim < 1 or arr.shape[0] != n:
            raise SamplesError(f"{path}: array {a!r} has shape {arr.shape}, spec says ({n}, ...)")
    if groups is not None and groups.shape != (n,):
        raise SamplesError(f"{path}: groups have shape {groups.shape}, spec says ({n},)")
    return LoadedSamples(kind=kind, arrays=arrays, metrics=metrics, groups=groups, path=path)


def load_samples(result: Mapping[str, Any], result_path: Path) -> LoadedSamples:
    """The per-sample outcomes of ``result`` (read from ``result_path``'s folder).

    Raises :class:`SamplesError` when the result records none (its ``ci.reason`` then says why)
    or the sidecar is missing, stale or mismatched.
    """
    spec = result.get("samples")
    if not spec:
        why = ((result.get("ci") or {}).get("reason")) if isinstance(result.get("ci"), dict) else None
        raise SamplesError(f"{result_path}: no per-sample outcomes recorded" + (f" ({why})" if why else ""))
    return read_sidecar(Path(result_path), spec)
