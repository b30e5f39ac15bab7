"""Feature extraction and the content-addressed feature cache.

Features are extracted once per (encoder fingerprint, dataset fingerprint, split) and reused by
every task and every re-run. An entry is a folder ``<cache>/features/<kk>/<key>/`` holding
``x.npy`` (float32 [N, D], memory-mappable), ``y.npy`` (labels, when the split has them) and
``meta.json`` (shapes, checksums, fingerprints). Entries are written into a temporary folder and
renamed into place, so a reader sees a whole entry or none; a corrupt or truncated entry (bad
checksum, wrong size, unreadable) is detected on read, discarded and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .options import stable_hash

CACHE_ENV = "CLBENCH_CACHE_DIR"
CACHE_FORMAT = 1

#: counters for tests and provenance: forward passes run by this process
STATS = {"forward_batches": 0, "samples_encoded": 0, "cache_hits": 0, "cache_misses": 0, "recomputed_corrupt": 0}


def default_cache_dir() -> Path:
    """``$CLBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/clbench``, else ``~/.cache/clbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clbench"


def _checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, encoder_fp: dict, dataset_fp: dict, split: str) -> str:
        return stable_hash(
            {"format": CACHE_FORMAT, "encoder": encoder_fp, "dataset": dataset_fp, "split": split}, n=32
        )

    def entry(self, key: str) -> Path:
        return self.root / "features" / key[:2] / key

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
        """The cached (x, y, meta) for ``key``; None when absent or invalid (then removed)."""
        entry = self.entry(key)
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                raise ValueError("key mismatch")
            for fname, info in meta["files"].items():
                p = entry / fname
                if p.stat().st_size != info["size"] or _checksum(p) != info["checksum"]:
                    raise ValueError(f"{fname} checksum mismatch")
            x = np.load(entry / "x.npy", mmap_mode="r", allow_pickle=False)
            if list(x.shape) != meta["shape"]:
                raise ValueError("shape mismatch")
            y = np.load(entry / "y.npy", allow_pickle=False) if "y.npy" in meta["files"] else None
        except (OSError, ValueError, KeyError, TypeError):
            STATS["recomputed_corrupt"] += 1
            self._discard(entry)
            return None
        return x, y, meta

    def store(self, key: str, x: np.ndarray, y: np.ndarray | None, meta: dict) -> Path:
        entry = self.entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()  # inside the try: an interrupt right after it still removes the folder
            files = {}
            arrays = {"x.npy": np.ascontiguousarray(x, dtype=np.float32)}
            if y is not None:
                arrays["y.npy"] = np.asarray(y)
            for fname, arr in arrays.items():
                with open(tmp / fname, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                files[fname] = {"size": (tmp / fname).stat().st_size, "checksum": _checksum(tmp / fname)}
            full = dict(meta, key=key, format=CACHE_FORMAT, shape=list(x.shape), files=files, created=time.time())
            (tmp / "meta.json").write_text(json.dumps(full, indent=1, sort_keys=True, default=str))
            if entry.exists():
                if self.load(key) is not None:  # an equal, valid entry (a concurrent run): keep it
                    shutil.rmtree(tmp, ignore_errors=True)
                    return entry
                self._discard(entry)  # load() discarded a corrupt one already; a no-op then
            try:
                os.rename(tmp, entry)
            except OSError:  # another process won the race with an equal entry
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    def _discard(self, entry: Path) -> None:
        trash = entry.parent / f".trash-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def auto_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class _Preprocessed:
    """A torch-style dataset applying the encoder's per-sample preprocessing."""

    def __init__(self, items, encoder, modality: str):
        self.items, self.encoder, self.modality = items, encoder, modality

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.encoder.preprocess(self.items[i], self.modality)


def _to_numpy(out: Any) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out.astype(np.float32, copy=False)
    return out.detach().float().cpu().numpy()


def extract(encoder, split, *, device: str = "cpu", progress: Any = None, description: str = "") -> np.ndarray:
    """Embed every sample of ``split`` with ``encoder`` (set up on ``device``): float32 [N, D]."""
    import torch

    modality = split.modality
    n = len(split)
    if n == 0:
        raise ValueError("cannot extract features from an empty split")
    task_id = progress.add_task(description or "extracting", total=n) if progress is not None else None

    def advance(k: int, total: int | None = None) -> None:
        if progress is not None:
            if total is not None:
                progress.update(task_id, total=total)
            progress.advance(task_id, k)

    out_arr: np.ndarray | None = None
    with torch.inference_mode():
        if encoder.batches_internally:
            items = list(split.items)
            # encode each distinct input once (texts repeat across pairs and queries)
            index: dict[Any, int] = {}
            inverse = np.empty(n, dtype=np.int64)
            for i, item in enumerate(items):
                inverse[i] = index.setdefault(item, len(index))
            unique = list(index)
            advance(0, total=len(unique))
            chunks = []
            for start in range(0, len(unique), encoder.chunk_size):
                part = unique[start : start + encoder.chunk_size]
                chunks.append(_to_numpy(encoder.encode(part, modality, split.role)))
                STATS["forward_batches"] += 1
                STATS["samples_encoded"] += len(part)
                advance(len(part))
            return np.concatenate(chunks)[inverse]

        workers = auto_workers(encoder.options.num_workers)
        if modality == "array":
            workers = 0  # nothing to preprocess: workers would only add start-up cost
        loader = torch.utils.data.DataLoader(
            _Preprocessed(split.items, encoder, modality),
            batch_size=encoder.options.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=lambda batch: encoder.collate(batch, modality),
            pin_memory=device.startswith("cuda"),
            persistent_workers=False,
        )
        pos = 0
        for batch in loader:
            if isinstance(batch, torch.Tensor):
                batch = batch.to(device, non_blocking=True)
            emb = _to_numpy(encoder.encode(batch, modality, split.role))
            STATS["forward_batches"] += 1
            STATS["samples_encoded"] += len(emb)
            if emb.ndim != 2:
                emb = emb.reshape(len(emb), -1)
            if out_arr is None:
                out_arr = np.empty((n, emb.shape[1]), dtype=np.float32)
            out_arr[pos : pos + len(emb)] = emb
            pos += len(emb)
            advance(len(emb))
    if pos != n:
        raise RuntimeError(f"extraction produced {pos} embeddings for {n} samples")
    return out_arr


class FeatureStore:
    """Features for a run: cache look-up, extraction on a miss, and provenance of what happened."""

    def __init__(self, cache: FeatureCache, *, device: str = "cpu", progress_factory=None):
        self.cache = cache
        self.device = device
        self.progress_factory = progress_factory
        self.log: list[dict] = []
        self._setup_errors: dict[int, BaseException] = {}
        self._fingerprints: dict[int, tuple[Any, dict]] = {}

    def fingerprint(self, obj: Any) -> dict:
        """``obj.fingerprint()``, computed once per object for the run (it may walk a folder or hash
        weights: doing that for every split of every cell is wasted I/O)."""
        hit = self._fingerprints.get(id(obj))
        if hit is None or hit[0] is not obj:
            hit = (obj, obj.fingerprint())
            self._fingerprints[id(obj)] = hit
        return hit[1]

    def _setup(self, encoder) -> None:
        """Set the encoder up once; a failure is remembered and re-raised for its other cells."""
        if id(encoder) in self._setup_errors:
            raise self._setup_errors[id(encoder)]
        try:
            encoder.setup(self.device)
        except Exception as err:
            self._setup_errors[id(encoder)] = err
            raise

    def get(self, encoder, dataset, split_name: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
        enc_fp = self.fingerprint(encoder)
        ds_fp = self.fingerprint(dataset)
        key = self.cache.key(enc_fp, ds_fp, split_name)
        hit = self.cache.load(key)
        if hit is not None:
            STATS["cache_hits"] += 1
            x, y, meta = hit
            info = {
                "split": split_name, "key": key, "cached": True, "n": int(x.shape[0]), "dim": int(x.shape[1]),
                "coverage": meta.get("coverage"), "encoder_info": meta.get("encoder_info", {}),
            }
            self.log.append(info)
            return x, y, info
        STATS["cache_misses"] += 1
        split = dataset.split(split_name)
        self._setup(encoder)
        t0 = time.perf_counter()
        desc = f"{encoder.name} · {dataset.name}/{split_name}"
        if self.progress_factory is not None:
            with self.progress_factory() as progress:
                x = extract(encoder, split, device=self.device, progress=progress, description=desc)
        else:
            x = extract(encoder, split, device=self.device)
        seconds = time.perf_counter() - t0
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x).all(axis=1)))
            raise ValueError(f"encoder {encoder.name!r} produced non-finite embeddings for {bad} samples")
        meta = {
            "encoder": enc_fp, "dataset": ds_fp, "split": split_name,
            "coverage": encoder.coverage, "encoder_info": encoder.info(),
        }
        self.cache.store(key, x, split.labels, meta)
        info = {
            "split": split_name,
            "key": key,
            "cached": False,
            "n": int(x.shape[0]),
            "dim": int(x.shape[1]),
            "seconds": seconds,
            "samples_per_s": x.shape[0] / seconds if seconds > 0 else None,
            "coverage": encoder.coverage,
            "encoder_info": encoder.info(),
        }
        self.log.append(info)
        return x, split.labels, info
