"""BEIR-format retrieval corpora: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Layout (as BEIR and MTEB publish it)::

    <path>/corpus.jsonl       {"_id": ..., "title": ..., "text": ...} per line
    <path>/queries.jsonl      {"_id": ..., "text": ...} per line
    <path>/qrels/test.tsv     query-id <TAB> corpus-id <TAB> score, after a header row

Splits: ``queries`` (role ``"query"``) holds only the queries judged in the chosen qrels split,
in ``queries.jsonl`` order; ``corpus`` (role ``"document"``) holds every document, its text
built as MTEB does: ``(title + " " + text).strip()`` when the title is non-empty, else
``text.strip()``. Query texts are used as written. ``qrels`` maps query id -> {doc id: grade}.

Every malformed input is a :class:`DataError` naming the file and line: invalid UTF-8 or JSON,
a missing or non-string field, a duplicate id, a qrels row naming an unknown query or document,
a non-integer grade, an empty file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..options import option
from .base import Dataset, Split


@dataclasses.dataclass
class BeirOptions:
    path: str = option(help="folder holding corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    split: str = option("test", "qrels split to evaluate (reads qrels/<split>.tsv)")
    limit_queries: int | None = option(None, "evaluate only the first N judged queries (queries.jsonl order)")

    def validate(self) -> None:
        if not self.path:
            raise ValueError("path: expected a folder")
        if not self.split or "/" in self.split or "\\" in self.split:
            raise ValueError(f"split: expected a plain qrels file name, got {self.split!r}")
        if self.limit_queries is not None and self.limit_queries < 1:
            raise ValueError("limit_queries: expected a positive integer")


class BeirDataset(Dataset):
    """A BEIR folder as ``queries`` and ``corpus`` splits plus ``qrels`` (see module doc)."""

    Options = BeirOptions
    modality = "text"
    kind = "retrieval"

    def __init__(self, options: BeirOptions, **kw: Any):
        super().__init__(options, **kw)
        self._qrels: dict[str, dict[str, int]] | None = None

    @property
    def folder(self) -> Path:
        return self.resolve(self.options.path)

    @property
    def files(self) -> dict[str, Path]:
        f = self.folder
        return {
            "corpus": f / "corpus.jsonl",
            "queries": f / "queries.jsonl",
            "qrels": f / "qrels" / f"{self.options.split}.tsv",
        }

    def sources(self) -> list[Path]:
        return list(self.files.values())

    def check(self) -> None:
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: folder not found (dataset {self.name!r}, type beir)")
        qrels = self.files["qrels"]
        if not qrels.is_file():
            have = sorted(p.stem for p in (self.folder / "qrels").glob("*.tsv"))
            extra = f" (qrels splits present: {', '.join(have)})" if have else ""
            raise DataError(f"{qrels}: file not found (dataset {self.name!r}, split {self.options.split!r}){extra}")
        super().check()

    @property
    def qrels(self) -> dict[str, dict[str, int]]:
        """Query id -> {document id: relevance grade} for the evaluated queries."""
        if self._qrels is None:
            self.split("queries")
        assert self._qrels is not None
        return self._qrels

    def load(self) -> dict[str, Split]:
        self.check()
        files = self.files
        corpus_ids, corpus_texts = [], []
        for doc_id, row, _ in _read_records(files["corpus"], required=("text",), optional=("title",)):
            title = row.get("title") or ""
            text = row["text"]
            corpus_ids.append(doc_id)
            corpus_texts.append((title + " " + text).strip() if title else text.strip())
        queries: dict[str, str] = {}
        for qid, row, _ in _read_records(files["queries"], required=("text",)):
            queries[qid] = row["text"]
        qrels = read_qrels(files["qrels"], queries=queries, docs=set(corpus_ids))

        q_ids = [qid for qid in queries if qid in qrels]
        if self.options.limit_queries is not None:
            q_ids = q_ids[: self.options.limit_queries]
        self._qrels = {qid: qrels[qid] for qid in q_ids}
        return {
            "queries": Split(items=[queries[q] for q in q_ids], modality="text", role="query", ids=q_ids),
            "corpus": Split(items=corpus_texts, modality="text", role="document", ids=corpus_ids),
        }


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoding UTF-8 line by line (errors name the line)."""
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{path}: line {lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
                    ) from None
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                if line.strip():
                    yield lineno, line
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_records(
    path: Path, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(id, object, line) for each JSON line of ``path``, checking fields and id uniqueness."""
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        where = f"{path}: line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "_id" not in row:
            raise DataError(f"{where}: missing field '_id'")
        doc_id = row["_id"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise DataError(f"{where}: field '_id' must be a string, got {doc_id!r}")
        doc_id = str(doc_id)
        if not doc_id:
            raise DataError(f"{where}: field '_id' is empty")
        for name in required:
            if name not in row:
                raise DataError(f"{where}: missing field {name!r} (record {doc_id!r})")
            if not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}")
        for name in optional:
            if row.get(name) is not None and not isinstance(row[name], str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}")
        if doc_id in seen:
            raise DataError(f"{where}: duplicate id {doc_id!r} (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        yield doc_id, row, lineno
    if not seen:
        raise DataError(f"{path}: the file is empty (expected one JSON object per line)")


def read_qrels(path: Path, *, queries: Any = None, docs: Any = None) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: grade}}`` from a BEIR qrels TSV (header row first).

    ``queries`` / ``docs``, when given, are the known ids: a row naming another id is an error.
    The header row is recognised by its non-numeric score column; a file whose first row is
    already a judgement is read whole (BEIR's own loader would silently drop that row).
    A pair listed twice with the same grade is accepted; with different grades it is an error.
    """
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    first = True
    for lineno, line in _lines(path):
        where = f"{path}: line {lineno}"
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 3:
            raise DataError(
                f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(fields)}"
            )
        qid, doc_id, raw = (x.strip() for x in fields)
        if first:
            first = False
            if _grade(raw) is None:
                continue  # the header row
        grade = _grade(raw)
        if grade is None:
            raise DataError(f"{where}: relevance score {raw!r} is not an integer")
        if not qid or not doc_id:
            raise DataError(f"{where}: empty query or corpus id")
        if queries is not None and qid not in queries:
            raise DataError(f"{where}: query id {qid!r} is not in queries.jsonl")
        if docs is not None and doc_id not in docs:
            raise DataError(f"{where}: corpus id {doc_id!r} is not in corpus.jsonl")
        known = qrels.setdefault(qid, {})
        if doc_id in known and known[doc_id] != grade:
            raise DataError(
                f"{where}: ({qid!r}, {doc_id!r}) judged {grade} here but {known[doc_id]} on line "
                f"{first_line[(qid, doc_id)]}"
            )
        first_line.setdefault((qid, doc_id), lineno)
        known[doc_id] = grade
    if not qrels:
        raise DataError(f"{path}: no judgements (expected a header row, then query-id, corpus-id, score rows)")
    return qrels


def _grade(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


__all__ = ["BeirDataset", "BeirOptions", "read_qrels"]
