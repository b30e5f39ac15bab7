"""``sts``: sentence pairs with a gold similarity score (STS Benchmark, SemEval STS12-16, SICK, ...).

Formats (``format``, detected from the file when ``auto``):

- ``stsb``: the official STS Benchmark release (``sts-test.csv`` ...): tab-separated and *unquoted*
  (sentences contain quote characters), 7 or 9 columns: genre, file, year, id, score, sentence1,
  sentence2[, source1, source2]. Subsets: the genre (or ``subset_field``: genre, file or year).
- ``semeval``: SemEval STS12-16 ``STS.input.<name>.txt`` (sentence1<TAB>sentence2[...]) with
  ``STS.gs.<name>.txt`` (one score per line; an empty line marks an unscored pair, which is
  skipped). ``path`` is a folder (every ``STS.input.*.txt`` in it, one subset each) or one file.
- ``sick``: ``SICK.txt`` / ``SICK_test_annotated.txt`` with a header row; the score is
  ``relatedness_score``; ``sick_set`` keeps one ``SemEval_set`` (TRAIN, TRIAL or TEST).
- ``tsv`` / ``csv`` / ``jsonl``: a header row (or JSON objects) with the fields named by
  ``sentence1_field``, ``sentence2_field``, ``score_field`` and optionally ``subset_field``.
  TSV is split on tabs without quoting; CSV follows the usual quoting rules.

The dataset exposes one split, ``sentences``: the distinct texts of all pairs, in order of first
appearance, so each is embedded once. ``pairs_a``/``pairs_b`` index into it, ``scores`` holds
the gold scores and ``subsets`` the subset of each pair (or None).

Every malformed input raises :class:`DataError` naming the file and the line.

>>> ds = STSDataset(STSOptions(path="sts-test.csv"))
>>> ds.kind, ds.modality
('sts', 'text')
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Dataset, Split

Format = Literal["auto", "stsb", "semeval", "sick", "tsv", "csv", "jsonl"]

_STSB_COLUMNS = ("genre", "file", "year", "id", "score", "sentence1", "sentence2", "source1", "source2")
_SEMEVAL_INPUT = re.compile(r"STS\.input\.(.+)\.txt")


@dataclasses.dataclass
class STSOptions:
    path: str = option(
        help="file or folder: STS-B .csv, SemEval STS.input.*.txt (or their folder), SICK, TSV/CSV/JSONL"
    )
    format: Format = option("auto", "auto, stsb, semeval, sick, tsv, csv or jsonl")
    sentence1_field: str = option("sentence1", "first-sentence column or JSON field (tsv/csv/jsonl)")
    sentence2_field: str = option("sentence2", "second-sentence column or JSON field (tsv/csv/jsonl)")
    score_field: str = option("score", "gold-score column or JSON field (tsv/csv/jsonl)")
    subset_field: str | None = option(None, "column naming each pair's subset, for per-subset scores")
    score_range: tuple[float, float] | None = option(
        (0.0, 5.0), "allowed [low, high] of gold scores (null: any)"
    )
    sick_set: str | None = option(None, "SICK only: keep pairs of this SemEval_set (TRAIN, TRIAL, TEST)")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: expected a file or folder")
        if self.score_range is not None:
            if len(self.score_range) != 2 or not self.score_range[0] < self.score_range[1]:
                raise ValueError(
                    f"score_range: expected [low, high] with low < high, got {list(self.score_range)}"
                )
            self.score_range = (float(self.score_range[0]), float(self.score_range[1]))


@dataclasses.dataclass
class _Pairs:
    a: list[str]
    b: list[str]
    scores: list[float]
    subsets: list[str] | None


class STSDataset(Dataset):
    """Scored sentence pairs; see the module docstring for the formats."""

    Options = STSOptions
    modality = "text"
    kind = "sts"

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self._pairs: dict[str, Any] | None = None

    #: row-aligned splits whose rows are positive pairs (read by the ``diagnostics`` task)
    pair_splits = ("sentence1", "sentence2")

    def _get(self, name: str) -> Any:
        if self._pairs is None:
            self.split("sentences")  # reads the file
        assert self._pairs is not None
        return self._pairs[name]

    @property
    def pairs_a(self) -> np.ndarray:
        """Index into the ``sentences`` split of each pair's first sentence (int64 [P])."""
        return self._get("a")

    @property
    def pairs_b(self) -> np.ndarray:
        """Index into the ``sentences`` split of each pair's second sentence (int64 [P])."""
        return self._get("b")

    @property
    def scores(self) -> np.ndarray:
        """Gold score of each pair (float64 [P])."""
        return self._get("scores")

    @property
    def subsets(self) -> list[str] | None:
        """Subset name of each pair, or None when the data has no subsets."""
        return self._get("subsets")

    @property
    def format(self) -> str:
        """The format the file was read as (after ``auto`` detection)."""
        return self._get("format")

    def sources(self) -> list[Path]:
        return [self.resolve(self.options.path)]

    def check(self) -> None:
        super().check()
        self.split("sentences")  # small files: parse now, so a bad line fails before any model loads

    def load(self) -> dict[str, Split]:
        path = self.sources()[0]
        if not path.exists():
            raise DataError(f"{path}: file or folder not found (dataset {self.name!r})")
        fmt = self.options.format if self.options.format != "auto" else detect_format(path)
        if fmt != "semeval" and path.is_dir():
            raise DataError(f"{path}: is a folder; format {fmt!r} reads one file")
        pairs = _PARSERS[fmt](path, self.options)
        if not pairs.scores:
            raise DataError(f"{path}: no scored sentence pairs")
        index: dict[str, int] = {}
        a = np.empty(len(pairs.a), dtype=np.int64)
        b = np.empty(len(pairs.b), dtype=np.int64)
        for i, (s1, s2) in enumerate(zip(pairs.a, pairs.b)):
            a[i] = index.setdefault(s1, len(index))
            b[i] = index.setdefault(s2, len(index))
        self._pairs = {
            "a": a,
            "b": b,
            "scores": np.asarray(pairs.scores, dtype=np.float64),
            "subsets": pairs.subsets,
            "format": fmt,
        }
        sentences = list(index)
        return {
            "sentences": Split(items=sentences, modality="text"),
            # row-aligned views of the pairs: positive pairs for the alignment diagnostic
            "sentence1": Split(items=[sentences[i] for i in a], modality="text"),
            "sentence2": Split(items=[sentences[i] for i in b], modality="text"),
        }


# -- reading -------------------------------------------------------------------------------------
def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (BOM and CR stripped); DataError naming the line otherwise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for n, raw in enumerate(data.split(b"\n"), 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {n}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
                ) from None
        raise  # unreachable: some line failed above
    lines = text.split("\n")  # not splitlines(): sentences may hold \x0b, \x1c, \u2028 ...
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def parse_score(value: Any, where: str, score_range: tuple[float, float] | None) -> float:
    if isinstance(value, bool):
        raise DataError(f"{where}: score {value!r} is not a number")
    try:
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{where}: score {value!r} is not a finite number")
    if score_range is not None and not score_range[0] <= score <= score_range[1]:
        lo, hi = score_range
        raise DataError(
            f"{where}: score {score:g} is outside the range [{lo:g}, {hi:g}] (option score_range)"
        )
    return score


def _sentence(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {what} is not text: {value!r}")
    if not value.strip():
        raise DataError(f"{where}: {what} is empty")
    return value


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name and first line; DataError when it cannot tell."""
    if path.is_dir():
        if any(_SEMEVAL_INPUT.fullmatch(p.name) for p in path.iterdir()):
            return "semeval"
        raise DataError(f"{path}: a folder without STS.input.*.txt files (SemEval layout); give a file")
    if _SEMEVAL_INPUT.fullmatch(path.name):
        return "semeval"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    first = next((ln for ln in read_lines(path) if ln.strip()), "")
    cols = first.split("\t")
    if "sentence_A" in cols and "sentence_B" in cols:
        return "sick"
    if 7 <= len(cols) <= 9 and _is_number(cols[4]):
        return "stsb"
    if path.suffix.lower() == ".csv":
        return "csv"
    if len(cols) > 1:
        return "tsv"
    raise DataError(
        f"{path}: cannot tell the format from the first line; set `format` "
        "(stsb, semeval, sick, tsv, csv or jsonl)"
    )


def _parse_stsb(path: Path, o: STSOptions) -> _Pairs:
    subset_col = o.subset_field or "genre"
    if subset_col not in ("genre", "file", "year"):
        raise DataError(f"{path}: subset_field {subset_col!r}: STS-B subsets are genre, file or year")
    sub_i = _STSB_COLUMNS.index(subset_col)
    a, b, scores, subsets = [], [], [], []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        cols = line.split("\t")
        if not 7 <= len(cols) <= 9:
            raise DataError(
                f"{where}: expected 7 or 9 tab-separated columns (genre, file, year, id, score, sentence1, "
                f"sentence2[, source1, source2]), found {len(cols)}"
            )
        scores.append(parse_score(cols[4], where, o.score_range))
        a.append(_sentence(cols[5], where, "sentence1 (column 6)"))
        b.append(_sentence(cols[6], where, "sentence2 (column 7)"))
        subsets.append(cols[sub_i])
    return _Pairs(a, b, scores, subsets)


def _semeval_files(path: Path) -> list[tuple[str, Path, Path]]:
    if path.is_dir():
        inputs = sorted(p for p in path.iterdir() if _SEMEVAL_INPUT.fullmatch(p.name))
        if not inputs:
            raise DataError(f"{path}: no STS.input.*.txt files in this folder")
    else:
        if not _SEMEVAL_INPUT.fullmatch(path.name):
            raise DataError(f"{path}: a SemEval STS input file is named STS.input.<name>.txt")
        inputs = [path]
    out = []
    for inp in inputs:
        name = _SEMEVAL_INPUT.fullmatch(inp.name).group(1)  # type: ignore[union-attr]
        gs = inp.with_name(f"STS.gs.{name}.txt")
        if not gs.is_file():
            raise DataError(f"{inp}: its gold scores file {gs.name} is missing (looked for {gs})")
        out.append((name, inp, gs))
    return out


def _parse_semeval(path: Path, o: STSOptions) -> _Pairs:
    a, b, scores, subsets = [], [], [], []
    for name, inp, gs in _semeval_files(path):
        pairs, gold = read_lines(inp), read_lines(gs)
        if len(gold) != len(pairs):
            raise DataError(f"{gs}: {len(gold)} lines, but {inp.name} has {len(pairs)} sentence pairs")
        for n, (line, g) in enumerate(zip(pairs, gold), 1):
            if not g.strip():
                continue  # unscored pair
            where = f"{inp}, line {n}"
            cols = line.split("\t")
            if len(cols) < 2:
                raise DataError(f"{where}: expected sentence1<TAB>sentence2, found {len(cols)} column")
            score = parse_score(g, f"{gs}, line {n}", o.score_range)
            a.append(_sentence(cols[0], where, "sentence1"))
            b.append(_sentence(cols[1], where, "sentence2"))
            scores.append(score)
            subsets.append(name)
    return _Pairs(a, b, scores, subsets)


def _header_index(header: list[str], fields: dict[str, str | None], where: str) -> dict[str, int]:
    idx = {}
    for role, field in fields.items():
        if field is None:
            continue
        if field not in header:
            raise DataError(f"{where}: no column {field!r} ({role}); the header has: {', '.join(header)}")
        idx[role] = header.index(field)
    return idx


def _rows_to_pairs(
    rows, path: Path, header: list[str], fields: dict[str, str | None], o: STSOptions, keep=None
) -> _Pairs:
    idx = _header_index(header, fields, f"{path}, line 1")
    a, b, scores, subsets = [], [], [], []
    for n, cols in rows:
        if not any(c.strip() for c in cols):
            continue
        where = f"{path}, line {n}"
        if len(cols) < len(header):
            raise DataError(f"{where}: expected {len(header)} columns as in the header, found {len(cols)}")
        if keep is not None and not keep(cols):
            continue
        scores.append(parse_score(cols[idx["score"]], where, o.score_range))
        a.append(_sentence(cols[idx["sentence1"]], where, f"column {fields['sentence1']!r}"))
        b.append(_sentence(cols[idx["sentence2"]], where, f"column {fields['sentence2']!r}"))
        if "subset" in idx:
            subsets.append(cols[idx["subset"]])
    return _Pairs(a, b, scores, subsets if "subset" in idx else None)


def _parse_sick(path: Path, o: STSOptions) -> _Pairs:
    lines = read_lines(path)
    header = lines[0].split("\t")
    keep = None
    if o.sick_set is not None:
        if "SemEval_set" not in header:
            raise DataError(f"{path}, line 1: sick_set is set but the file has no SemEval_set column")
        col = header.index("SemEval_set")
        wanted = o.sick_set.strip().upper()
        present = {ln.split("\t")[col].strip().upper() for ln in lines[1:] if len(ln.split("\t")) > col}
        if wanted not in present:
            raise DataError(
                f"{path}: no pairs with SemEval_set {o.sick_set!r} (found: {', '.join(sorted(present))})"
            )

        def keep(cols: list[str]) -> bool:
            return cols[col].strip().upper() == wanted

    fields = {
        "sentence1": "sentence_A",
        "sentence2": "sentence_B",
        "score": "relatedness_score",
        "subset": o.subset_field,
    }
    rows = ((n, ln.split("\t")) for n, ln in enumerate(lines[1:], 2))
    return _rows_to_pairs(rows, path, header, fields, o, keep)


def _fields(o: STSOptions) -> dict[str, str | None]:
    return {
        "sentence1": o.sentence1_field,
        "sentence2": o.sentence2_field,
        "score": o.score_field,
        "subset": o.subset_field,
    }


def _parse_tsv(path: Path, o: STSOptions) -> _Pairs:
    lines = read_lines(path)
    rows = ((n, ln.split("\t")) for n, ln in enumerate(lines[1:], 2))
    return _rows_to_pairs(rows, path, lines[0].split("\t"), _fields(o), o)


def _parse_csv(path: Path, o: STSOptions) -> _Pairs:
    reader = csv.reader(io.StringIO("\n".join(read_lines(path))))
    try:
        header = next(reader)

        def rows():
            start = reader.line_num + 1
            for cols in reader:
                yield start, cols
                start = reader.line_num + 1

        return _rows_to_pairs(rows(), path, header, _fields(o), o)
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV: {err}") from None


def _parse_jsonl(path: Path, o: STSOptions) -> _Pairs:
    fields = _fields(o)
    a, b, scores, subsets = [], [], [], []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for role, field in fields.items():
            if field is not None and field not in obj:
                raise DataError(f"{where}: no field {field!r} ({role}); the object has: {', '.join(obj)}")
        scores.append(parse_score(obj[o.score_field], where, o.score_range))
        a.append(_sentence(obj[o.sentence1_field], where, f"field {o.sentence1_field!r}"))
        b.append(_sentence(obj[o.sentence2_field], where, f"field {o.sentence2_field!r}"))
        if o.subset_field is not None:
            subsets.append(str(obj[o.subset_field]))
    return _Pairs(a, b, scores, subsets if o.subset_field is not None else None)


_PARSERS = {
    "stsb": _parse_stsb,
    "semeval": _parse_semeval,
    "sick": _parse_sick,
    "tsv": _parse_tsv,
    "csv": _parse_csv,
    "jsonl": _parse_jsonl,
}
