"""``labels``: sample ids with labels from a CSV or JSONL file, for precomputed embeddings.

Each row names a sample (node, user, document, image) by ``id`` and gives its target, and
optionally its ``split`` (``train`` / ``test``; other values such as ``val`` become splits of
that name). The items of every split are the ids (modality ``id``), so the ``precomputed``
encoder serves them. ``target`` says what the label column holds:

- ``class`` (kind ``classification``): one class name per row; classes are numbered in sorted
  order (numerically when all are integers);
- ``multilabel``: several class names per row (a JSON list, or a string split on
  ``label_separator``), or one 0/1 column per label named in ``label_columns``; labels are a
  0/1 matrix [N, L];
- ``continuous``: a number per row (``regression_probe``).

Without a split column (or with ``split_column: null``) the rows are split into train and test
by ``test_fraction`` (seeded; stratified for ``class``). ``pairs`` names an optional CSV/JSONL
file of positive pairs (columns ``id_a``, ``id_b``), exposed as the aligned splits
``pairs_a`` / ``pairs_b`` for the alignment diagnostic.

The dataset kind is ``classification`` for every target (a suite checks kinds per dataset
type); tasks that need multi-label or continuous targets check ``target`` when they run.

Example::

    datasets:
      cora: {type: labels, path: cora_labels.csv}                 # id,label,split
      chexpert: {type: labels, path: labels.csv, target: multilabel, label_columns: [a, b, c]}
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option
from .base import ClassificationOptions, Dataset, Split, stratified_indices, stratified_split


@dataclasses.dataclass
class LabelsOptions(ClassificationOptions):
    path: str = option(help="CSV (with a header) or JSONL file of ids and labels", kw_only=True)
    target: Literal["class", "multilabel", "continuous"] = option("class", "what the label column holds")
    id_column: str = option("id", "column of sample ids")
    label_column: str = option("label", "column of labels")
    label_columns: list[str] = option([], "multilabel: one 0/1 column per label (instead of label_column)")
    label_separator: str = option("|", "multilabel: separator of class names in a CSV label cell")
    split_column: str | None = option("split", "column naming each row's split (used when present)")
    pairs: str | None = option(None, "CSV/JSONL of positive pairs (id_a, id_b) for the alignment diagnostic")

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: expected a CSV or JSONL file")
        if self.label_columns and self.target != "multilabel":
            raise ValueError("label_columns: only with target: multilabel")


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a CSV file with a header, or of a JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {n}: not valid JSON ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
                    rows.append((n, row))
            else:
                delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
                reader = csv.DictReader(f, delimiter=delimiter)
                if reader.fieldnames is None:
                    raise DataError(f"{path}: empty file (expected a header line)")
                for row in reader:
                    if None in row:
                        raise DataError(f"{path}: line {reader.line_num}: more fields than the header has")
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _field(row: dict[str, Any], key: str, path: Path, n: int) -> Any:
    value = row.get(key)
    if value is None or value == "":
        raise DataError(f"{path}: line {n}: missing {key!r} (has: {', '.join(map(str, row))})")
    return value


def _class_order(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(names)


class LabelsDataset(Dataset):
    """Ids with class, multi-label or continuous targets; splits ``train``/``test`` (+ pairs)."""

    Options = LabelsOptions
    modality = "id"
    kind = "classification"

    def __init__(self, options: Any, *, name: str = "dataset", root: Path | None = None, seed: int = 0):
        super().__init__(options, name=name, root=root, seed=seed)
        self.target = options.target
        #: the two aligned splits of positive pairs, when ``pairs`` is set
        self.pair_splits: tuple[str, str] | None = ("pairs_a", "pairs_b") if options.pairs else None

    def sources(self) -> list[Path]:
        out = [self.resolve(self.options.path)]
        if self.options.pairs:
            out.append(self.resolve(self.options.pairs))
        return out

    def _target(self, row: dict[str, Any], path: Path, n: int) -> Any:
        o = self.options
        if o.target == "multilabel" and o.label_columns:
            values = []
            for c in o.label_columns:
                v = _field(row, c, path, n)
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    f = -1.0
                if f not in (0.0, 1.0):
                    raise DataError(f"{path}: line {n}: {c!r} must be 0 or 1, got {v!r}")
                values.append(f)
            return values
        value = _field(row, o.label_column, path, n)
        if o.target == "continuous":
            try:
                f = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {n}: {o.label_column!r} must be a number, got {value!r}") from None
            if not np.isfinite(f):
                raise DataError(f"{path}: line {n}: {o.label_column!r} is not finite")
            return f
        if o.target == "multilabel":
            if isinstance(value, list):
                return [str(v) for v in value]
            return [s.strip() for s in str(value).split(o.label_separator) if s.strip()]
        if isinstance(value, (list, dict)):
            raise DataError(f"{path}: line {n}: {o.label_column!r} must be one class, got {value!r}")
        return str(value)

    def load(self) -> dict[str, Split]:
        o = self.options
        path = self.resolve(o.path)
        rows = read_rows(path)
        ids, targets, splits, seen = [], [], [], {}
        for n, row in rows:
            key = str(_field(row, o.id_column, path, n))
            if key in seen:
                raise DataError(f"{path}: line {n}: id {key!r} repeats line {seen[key]}")
            seen[key] = n
            ids.append(key)
            targets.append(self._target(row, path, n))
            split = row.get(o.split_column) if o.split_column else None
            splits.append(str(split).strip() if split not in (None, "") else None)
        y = self._encode(targets)
        has_split = [s is not None for s in splits]
        if any(has_split) and not all(has_split):
            n = rows[has_split.index(False)][0]
            raise DataError(f"{path}: line {n}: no {o.split_column!r} value (other rows have one)")
        ids_arr = np.asarray(ids, dtype=object)
        if all(has_split):
            names = np.asarray(splits)
            groups = {s: np.flatnonzero(names == s) for s in dict.fromkeys(splits)}
            if "train" not in groups or "test" not in groups:
                raise DataError(f"{path}: the {o.split_column!r} column needs train and test rows "
                                f"(found: {', '.join(groups)})")
        else:
            strat = y if o.target == "class" else np.zeros(len(y), dtype=np.int64)
            tr, te = stratified_split(strat, o.test_fraction, self.seed)
            groups = {"train": tr, "test": te}
        out: dict[str, Split] = {}
        for name, idx in groups.items():
            if o.limit is not None and o.limit < len(idx):
                strat = y[idx] if o.target == "class" else np.zeros(len(idx), dtype=np.int64)
                idx = idx[stratified_indices(strat, o.limit, self.seed)]
            out[name] = Split(items=[str(i) for i in ids_arr[idx]], modality="id", labels=y[idx],
                              ids=[str(i) for i in ids_arr[idx]])
        if o.pairs:
            out.update(self._pairs())
        return out

    def _encode(self, targets: list[Any]) -> np.ndarray:
        o = self.options
        if o.target == "continuous":
            self.classes = None
            return np.asarray(targets, dtype=np.float64)
        if o.target == "multilabel" and o.label_columns:
            self.classes = list(o.label_columns)
            return np.asarray(targets, dtype=np.int64)
        if o.target == "multilabel":
            self.classes = _class_order({c for t in targets for c in t})
            pos = {c: i for i, c in enumerate(self.classes)}
            y = np.zeros((len(targets), len(self.classes)), dtype=np.int64)
            for r, t in enumerate(targets):
                y[r, [pos[c] for c in t]] = 1
            return y
        self.classes = _class_order(set(targets))
        pos = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([pos[t] for t in targets], dtype=np.int64)

    def _pairs(self) -> dict[str, Split]:
        path = self.resolve(self.options.pairs)
        a, b = [], []
        for n, row in read_rows(path):
            a.append(str(_field(row, "id_a", path, n)))
            b.append(str(_field(row, "id_b", path, n)))
        return {
            "pairs_a": Split(items=a, modality="id", ids=a),
            "pairs_b": Split(items=b, modality="id", ids=b),
        }
