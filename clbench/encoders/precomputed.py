"""``precomputed``: embeddings read from files and looked up by sample id.

For any model clbench cannot run itself: embed the data elsewhere, save the vectors with their
sample ids, and pair the encoder with a dataset of modality ``id`` (``labels``,
``interactions``), whose items are those ids. Supported files:

- ``.npz`` with arrays ``ids`` and ``embeddings`` (names set by ``ids_key`` / ``embeddings_key``);
- ``.npy`` holding the matrix; ids from ``ids_path`` (a text file, one id a line), else row
  ``i`` has id ``"i"``;
- ``.parquet`` with an ``ids`` (or ``id``) column and either an ``embeddings`` (or
  ``embedding``) column of lists or one numeric column per dimension (needs ``pyarrow``);
- ``.pt`` holding a dict ``{"ids": [...], "embeddings": tensor}`` or a bare tensor (row index as
  id), read with ``torch.load(weights_only=True)``;
- ``.safetensors`` with tensors ``embeddings`` and optionally integer ``ids`` (else
  ``ids_path`` or the row index).

Ids are compared as strings (``7`` and ``"7"`` are the same id). ``role_paths`` gives a
different file per split role, e.g. ``{item: items.npz}`` for the item split of an
``interactions`` dataset, whose user and item ids may overlap.

Example suite entry::

    encoders:
      node2vec: {type: precomputed, path: emb/node2vec.npz}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Encoder, EncoderOptions

FORMATS = (".npz", ".npy", ".parquet", ".pt", ".safetensors")


@dataclasses.dataclass
class PrecomputedOptions(EncoderOptions):
    path: str = option(help="embeddings file: .npz, .npy, .parquet, .pt or .safetensors", kw_only=True)
    ids_path: str | None = option(None, "text file of ids, one a line, in row order, for the file at path (.npy / .safetensors)")
    role_paths: dict[str, str] = option({}, "a file per split role (e.g. {item: items.npz}); others use path")
    ids_key: str = option("ids", "name of the ids array / column / entry")
    embeddings_key: str = option("embeddings", "name of the embeddings array / column / entry")
    batch_size: int = 4096

    def validate(self) -> None:
        super().validate()
        for p in [self.path, *self.role_paths.values()]:
            if not p:
                raise ValueError("path: expected an embeddings file")
            if Path(p).suffix.lower() not in FORMATS:
                raise ValueError(f"path: {p!r} is not one of {', '.join(FORMATS)}")


class _Table:
    """Embeddings [N, D] float32 and an id -> row map for one file."""

    def __init__(self, path: Path, ids: list[str], emb: np.ndarray):
        if emb.ndim != 2:
            raise DataError(f"{path}: embeddings must be a matrix [N, D], got shape {emb.shape}")
        if len(ids) != len(emb):
            raise DataError(f"{path}: {len(ids)} ids but {len(emb)} embedding rows")
        if not np.all(np.isfinite(emb)):
            bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))[:3]
            raise DataError(f"{path}: NaN or infinite embeddings (ids {[ids[i] for i in bad]})")
        self.path = path
        self.emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.row: dict[str, int] = {}
        for i, key in enumerate(ids):
            if key in self.row:
                raise DataError(f"{path}: id {key!r} occurs twice (rows {self.row[key]} and {i})")
            self.row[key] = i

    def lookup(self, ids: list[Any]) -> np.ndarray:
        keys = [str(i) for i in ids]
        missing = [k for k in keys if k not in self.row]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            raise DataError(
                f"{self.path}: no embedding for {len(missing)} of {len(keys)} requested ids (e.g. {shown})"
            )
        return self.emb[[self.row[k] for k in keys]]


def _ids_from(values: Any, path: Path, what: str) -> list[str]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{path}: {what} must be one-dimensional, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{path}: {what} are non-integer numbers; use integer or string ids")
        arr = arr.astype(np.int64)
    return [str(v) for v in arr.tolist()]


def read_ids_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: ids file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    ids = [line.strip() for line in lines]
    if ids and ids[-1] == "":
        ids = ids[:-1]
    for i, v in enumerate(ids):
        if not v:
            raise DataError(f"{path}: line {i + 1}: empty id")
    return ids


def load_embeddings(path: Path, opts: PrecomputedOptions, ids_path: Path | None) -> _Table:
    """Read one embeddings file into a :class:`_Table` (DataError naming the file on any problem)."""
    if not path.is_file():
        raise DataError(f"{path}: embeddings file not found")
    suffix = path.suffix.lower()
    ids: list[str] | None = None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                for key in (opts.ids_key, opts.embeddings_key):
                    if key not in npz.files:
                        raise DataError(f"{path}: missing array {key!r} (found: {', '.join(npz.files) or 'none'})")
                emb, ids = npz[opts.embeddings_key], _ids_from(npz[opts.ids_key], path, repr(opts.ids_key))
        elif suffix == ".npy":
            emb = np.load(path, allow_pickle=False)
        elif suffix == ".parquet":
            emb, ids = _read_parquet(path, opts)
        elif suffix == ".pt":
            emb, ids = _read_pt(path, opts)
        else:
            emb, ids = _read_safetensors(path, opts)
    except DataError:
        raise
    except Exception as err:  # unreadable or malformed file
        raise DataError(f"{path}: cannot read embeddings ({type(err).__name__}: {err})") from None
    emb = np.asarray(emb)
    if not np.issubdtype(emb.dtype, np.number) or np.issubdtype(emb.dtype, np.complexfloating):
        raise DataError(f"{path}: embeddings must be real numbers, got dtype {emb.dtype}")
    if ids is None:
        ids = read_ids_file(ids_path) if ids_path is not None else [str(i) for i in range(len(emb))]
    elif ids_path is not None:
        raise DataError(f"{path}: holds its own ids; drop ids_path ({ids_path})")
    return _Table(path, ids, emb)


def _read_parquet(path: Path, opts: PrecomputedOptions) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    cols = table.column_names
    # the npz-style names, or their singular forms (the usual column names)
    id_col = next((c for c in (opts.ids_key, opts.ids_key.rstrip("s")) if c in cols), None)
    if id_col is None:
        raise DataError(f"{path}: no id column {opts.ids_key!r} (columns: {', '.join(cols[:10])})")
    ids = _ids_from(table.column(id_col).to_numpy(zero_copy_only=False), path, f"column {id_col!r}")
    emb_col = next((c for c in (opts.embeddings_key, opts.embeddings_key.rstrip("s")) if c in cols), None)
    if emb_col is not None:
        rows = table.column(emb_col).to_pylist()
        if any(r is None for r in rows):
            raise DataError(f"{path}: column {emb_col!r} has empty rows")
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise DataError(f"{path}: embeddings of different lengths {sorted(lengths)[:3]}")
        return np.asarray(rows, dtype=np.float64), ids
    rest = [c for c in cols if c != id_col]
    if not rest:
        raise DataError(f"{path}: no embedding columns besides {id_col!r}")
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in rest], axis=1), ids


def _read_pt(path: Path, opts: PrecomputedOptions) -> tuple[np.ndarray, list[str] | None]:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return obj.detach().float().numpy(), None
    if not isinstance(obj, dict) or opts.embeddings_key not in obj:
        raise DataError(
            f"{path}: expected a tensor or a dict with {opts.embeddings_key!r} (and {opts.ids_key!r}), "
            f"got {type(obj).__name__}"
        )
    emb = obj[opts.embeddings_key]
    emb = emb.detach().float().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    ids = obj.get(opts.ids_key)
    if ids is None:
        return emb, None
    if isinstance(ids, torch.Tensor):
        ids = ids.numpy()
    return emb, _ids_from(np.asarray(ids) if not isinstance(ids, list) else np.asarray(ids, dtype=object), path,
                          repr(opts.ids_key))


def _read_safetensors(path: Path, opts: PrecomputedOptions) -> tuple[np.ndarray, list[str] | None]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise DataError(f"{path}: reading .safetensors needs safetensors (pip install safetensors)") from None
    tensors = load_file(str(path))
    if opts.embeddings_key not in tensors:
        raise DataError(f"{path}: no tensor {opts.embeddings_key!r} (found: {', '.join(tensors) or 'none'})")
    ids = tensors.get(opts.ids_key)
    return tensors[opts.embeddings_key], (None if ids is None else _ids_from(ids, path, repr(opts.ids_key)))


class PrecomputedEncoder(Encoder):
    """Looks sample ids up in embedding files; no model, no forward pass."""

    Options = PrecomputedOptions
    modalities = frozenset({"id"})
    batches_internally = True
    chunk_size = 1 << 20

    def __init__(self, options: Any, *, name: str = "encoder", root: Path | None = None, seed: int = 0):
        super().__init__(options, name=name, root=root, seed=seed)
        self._tables: dict[Path, _Table] = {}

    def _path(self, role: str | None) -> Path:
        return self.resolve(self.options.role_paths.get(role, self.options.path) if role else self.options.path)

    def _files(self) -> list[Path]:
        paths = [self.resolve(self.options.path), *(self.resolve(p) for p in self.options.role_paths.values())]
        if self.options.ids_path:
            paths.append(self.resolve(self.options.ids_path))
        return paths

    def check(self) -> None:
        for p in self._files():
            if not p.is_file():
                raise DataError(f"{p}: file not found (encoder {self.name!r})")

    def fingerprint(self) -> dict[str, Any]:
        from ..datasets.base import file_identity

        fp = super().fingerprint()
        fp["files"] = [file_identity(p) for p in self._files()]
        return fp

    def table(self, role: str | None = None) -> _Table:
        path = self._path(role)
        if path not in self._tables:
            main = path == self.resolve(self.options.path)
            ids_path = self.resolve(self.options.ids_path) if self.options.ids_path and main else None
            self._tables[path] = load_embeddings(path, self.options, ids_path)
        return self._tables[path]

    def encode(self, batch: Any, modality: str, role: str | None = None) -> np.ndarray:
        if modality != "id":
            raise ValueError(f"the precomputed encoder looks up ids, not {modality} inputs")
        return self.table(role).lookup(list(batch))

    def info(self) -> dict[str, Any]:
        return {"embedding_files": [str(p) for p in self._tables]}
