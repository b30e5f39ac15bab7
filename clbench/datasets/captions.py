"""Image-caption datasets (kind ``image-text``) for image-text retrieval.

Three on-disk formats:

- ``coco-captions``: a folder of images and a COCO captions JSON (``captions_val2017.json``:
  ``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``caption``);
- ``karpathy``: the Karpathy split JSON of COCO or Flickr30k (``dataset_coco.json``: ``images``
  with ``filepath`` (COCO only), ``filename``, ``split`` and ``sentences[].raw``), one ``split``;
- ``image-captions``: a CSV (header row) or JSONL file of image paths and captions. CSV: columns
  ``image_column`` and ``caption_column``; a repeated image adds captions, and further columns
  whose names start with ``caption_column`` (``caption_2``, ...) hold more captions of the row.
  JSONL: one object per line, ``{"image": "a.jpg", "caption": "..."}`` or a list of captions.
  Relative image paths resolve against ``images`` (default: the file's folder).

Every dataset has two splits: ``images`` (modality image, ids, each item read from disk only
when indexed, as an RGB uint8 array) and ``captions`` (modality text, ids), and the array
``caption_to_image`` (the index of each caption's image in ``images``). Images keep the order
of the annotation file; captions follow their image. ``limit`` keeps the first images.

Suite example::

    datasets:
      coco: {type: coco-captions, images: data/coco/val2017,
             annotations: data/coco/annotations/captions_val2017.json}
      flickr: {type: karpathy, path: data/flickr30k/dataset_flickr30k.json,
               images: data/flickr30k/images, split: test}

A missing image file, malformed JSON/CSV/JSONL or an image without captions raises
:class:`clbench.errors.DataError` naming the file (and line).
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
from .base import Dataset, Split
from .imagefolder import ImageFiles


@dataclasses.dataclass
class CaptionsOptions:
    limit: int | None = option(None, "keep only the first N images (in file order) and their captions")

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: expected a positive integer")


@dataclasses.dataclass
class CocoCaptionsOptions(CaptionsOptions):
    images: str = option(help="folder of the images (e.g. val2017/)", kw_only=True)
    annotations: str = option(help="COCO captions JSON (e.g. captions_val2017.json)", kw_only=True)


@dataclasses.dataclass
class KarpathyOptions(CaptionsOptions):
    path: str = option(help="Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json)", kw_only=True)
    images: str = option(help="image root: holds <filepath>/<filename> (COCO) or <filename> (Flickr)", kw_only=True)
    split: Literal["train", "restval", "val", "test"] = option("test", "which Karpathy split")


@dataclasses.dataclass
class ImageCaptionsOptions(CaptionsOptions):
    path: str = option(help="CSV (with a header row) or JSONL file of image paths and captions", kw_only=True)
    images: str | None = option(None, "folder relative image paths resolve against (default: the file's folder)")
    image_column: str = option("image", "column / key holding the image path")
    caption_column: str = option("caption", "column / key holding the caption(s)")
    format: Literal["auto", "csv", "jsonl"] = option("auto", "file format (auto: from the extension)")


class CaptionsDataset(Dataset):
    """Base of the caption datasets: subclasses implement ``_read() -> [(image path, [captions], id)]``."""

    modality = "image"
    kind = "image-text"

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.caption_to_image: np.ndarray | None = None
        self._records: list[tuple[Path, list[str], str]] | None = None

    # -- to implement ------------------------------------------------------------------------
    def _read(self) -> list[tuple[Path, list[str], str]]:
        raise NotImplementedError

    def _source_file(self) -> Path:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def records(self) -> list[tuple[Path, list[str], str]]:
        """(image path, captions, image id) per image, after ``limit``; images checked to exist."""
        if self._records is None:
            recs = self._read()
            if self.options.limit is not None:
                recs = recs[: self.options.limit]
            if not recs:
                raise DataError(f"{self._source_file()}: no images with captions")
            for path, caps, _ in recs:
                if not caps:
                    raise DataError(f"{self._source_file()}: image {path.name} has no caption")
                if not path.is_file():
                    raise DataError(f"{path}: image file not found (listed in {self._source_file()})")
            self._records = recs
        return self._records

    def check(self) -> None:
        super().check()
        self.records()

    def load(self) -> dict[str, Split]:
        recs = self.records()
        captions = [c for _, caps, _ in recs for c in caps]
        c2i = np.repeat(np.arange(len(recs), dtype=np.int64), [len(caps) for _, caps, _ in recs])
        caption_ids = [f"{iid}#{j}" for _, caps, iid in recs for j in range(len(caps))]
        self.caption_to_image = c2i
        return {
            "images": Split(items=ImageFiles([str(p) for p, _, _ in recs]), modality="image",
                            ids=[iid for _, _, iid in recs]),
            "captions": Split(items=captions, modality="text", ids=caption_ids),
        }

    def image_text(self) -> tuple[Split, Split, np.ndarray]:
        """(images split, captions split, caption_to_image), loading the annotations if needed."""
        images, captions = self.split("images"), self.split("captions")
        assert self.caption_to_image is not None
        return images, captions, self.caption_to_image


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno}: malformed JSON ({err.msg})") from None


def _caption(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected a non-empty caption string, got {value!r}")
    return value.strip()


class CocoCaptionsDataset(CaptionsDataset):
    """COCO captions: an image folder and ``captions_*.json``."""

    Options = CocoCaptionsOptions

    def _source_file(self) -> Path:
        return self.resolve(self.options.annotations)

    def sources(self) -> list[Path]:
        return [self.resolve(self.options.images), self._source_file()]

    def _read(self) -> list[tuple[Path, list[str], str]]:
        path, folder = self._source_file(), self.resolve(self.options.images)
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise DataError(f"{path}: expected a COCO captions JSON object with 'images' and 'annotations' lists")
        caps: dict[Any, list[str]] = {}
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise DataError(f"{path}: annotations[{n}]: expected 'image_id' and 'caption'")
            caps.setdefault(ann["image_id"], []).append(_caption(ann["caption"], f"{path}: annotations[{n}]"))
        out, seen = [], set()
        for n, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
                raise DataError(f"{path}: images[{n}]: expected 'id' and 'file_name'")
            if img["id"] in seen:
                raise DataError(f"{path}: images[{n}]: duplicate image id {img['id']!r}")
            seen.add(img["id"])
            if img["id"] in caps:  # COCO lists images without captions in some files: skip them
                out.append((folder / img["file_name"], caps[img["id"]], str(img["id"])))
        unknown = [k for k in caps if k not in seen]
        if unknown:
            raise DataError(f"{path}: captions refer to unknown image ids, e.g. {unknown[0]!r}")
        return out


class KarpathyDataset(CaptionsDataset):
    """One split of a Karpathy split JSON (COCO or Flickr30k)."""

    Options = KarpathyOptions

    def _source_file(self) -> Path:
        return self.resolve(self.options.path)

    def sources(self) -> list[Path]:
        return [self._source_file(), self.resolve(self.options.images)]

    def _read(self) -> list[tuple[Path, list[str], str]]:
        path, root = self._source_file(), self.resolve(self.options.images)
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{path}: expected a Karpathy split JSON object with an 'images' list")
        out = []
        for n, img in enumerate(data["images"]):
            where = f"{path}: images[{n}]"
            if not isinstance(img, dict) or not isinstance(img.get("filename"), str) or "split" not in img:
                raise DataError(f"{where}: expected 'filename', 'split' and 'sentences'")
            if img["split"] != self.options.split:
                continue
            sents = img.get("sentences")
            if not isinstance(sents, list):
                raise DataError(f"{where}: expected a 'sentences' list")
            caps = []
            for j, s in enumerate(sents):
                if not isinstance(s, dict) or "raw" not in s:
                    raise DataError(f"{where}.sentences[{j}]: expected an object with 'raw'")
                caps.append(_caption(s["raw"], f"{where}.sentences[{j}]"))
            file = root / img.get("filepath", "") / img["filename"]
            iid = img.get("cocoid", img.get("imgid", img["filename"]))
            out.append((file, caps, str(iid)))
        if not out:
            raise DataError(f"{path}: no image in split {self.options.split!r}")
        return out


class ImageCaptionsDataset(CaptionsDataset):
    """A CSV or JSONL file of image paths and captions."""

    Options = ImageCaptionsOptions

    def _source_file(self) -> Path:
        return self.resolve(self.options.path)

    def _image_root(self) -> Path:
        return self.resolve(self.options.images) if self.options.images else self._source_file().parent

    def sources(self) -> list[Path]:
        return [self._source_file()] + ([self._image_root()] if self.options.images else [])

    def _format(self) -> str:
        if self.options.format != "auto":
            return self.options.format
        suffix = self._source_file().suffix.lower()
        if suffix in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        if suffix in (".csv", ".tsv"):
            return "csv"
        raise DataError(f"{self._source_file()}: unknown extension {suffix!r}; set format: csv or jsonl")

    def _read(self) -> list[tuple[Path, list[str], str]]:
        path = self._source_file()
        try:
            # list(): the readers are generators, their errors surface while iterating
            rows = list(self._rows_jsonl(path) if self._format() == "jsonl" else self._rows_csv(path))
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err})") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        grouped: dict[str, list[str]] = {}
        for image, caps in rows:
            grouped.setdefault(image, []).extend(caps)
        root = self._image_root()
        return [(Path(image) if Path(image).is_absolute() else root / image, caps, image)
                for image, caps in grouped.items()]

    def _rows_csv(self, path: Path):
        o = self.options
        with open(path, encoding="utf-8", newline="") as f:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            reader = csv.reader(f, dialect=dialect)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}: empty file (expected a header row)") from None
            except csv.Error as err:
                raise DataError(f"{path}: line 1: malformed CSV ({err})") from None
            if o.image_column not in header or o.caption_column not in header:
                raise DataError(
                    f"{path}: line 1: header needs columns {o.image_column!r} and {o.caption_column!r}, "
                    f"got {header}"
                )
            img_col = header.index(o.image_column)
            cap_cols = [i for i, h in enumerate(header) if h.startswith(o.caption_column)]
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                where = f"{path}: line {reader.line_num}"
                if not row[img_col].strip():
                    raise DataError(f"{where}: empty image path")
                caps = [_caption(row[i], where) for i in cap_cols if row[i].strip() or i == cap_cols[0]]
                yield row[img_col].strip(), caps

    def _rows_jsonl(self, path: Path):
        o = self.options
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: malformed JSON ({err.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(o.image_column), str):
                    raise DataError(f"{where}: expected an object with a string {o.image_column!r}")
                caps = obj.get(o.caption_column)
                if caps is None:
                    raise DataError(f"{where}: missing {o.caption_column!r}")
                caps = caps if isinstance(caps, list) else [caps]
                if not caps:
                    raise DataError(f"{where}: empty caption list")
                yield obj[o.image_column], [_caption(c, where) for c in caps]
