"""Feature extraction and the content-addressed feature cache.

Features are extracted once per (encoder fingerprint, dataset fingerprint, split) and reused by
every task and every re-run. An entry is a folder ``<cache>/features/<kk>/<key>/`` holding
``x.npy`` (float32 [N, D], memory-mappable), ``y.npy`` (labels, when the split has them) and
``meta.json`` (shapes, checksums, fingerprints). Entries are written into a temporary folder and
renamed into place, so a reader sees a whole entry or none; a corrupt or truncated entry (bad
checksum, wrong size, unreadable) is detected on read, discarded and recomputed.

Temporary folders are named ``.tmp-<key>.<host>.<pid>.<random>``: those of processes of this host
that no longer run (a SIGKILL during a write) are removed by the next run; a temporary folder is
never read, since entries are looked up by key only. Concurrent runs extract an entry once: the
extractor holds ``.<key>.lock`` (:mod:`clbench.locks`); another process wanting that entry waits,
then reads it. A cache folder that cannot be written (read-only, full) is not fatal: features are
kept in memory for the run, with a warning, and recorded as ``cache_error`` in the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .locks import FileLock, LockBusy, remove_if_unlocked
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


def _owner() -> str:
    """``<host>.<pid>`` (dots in the host name replaced): whose temporary folder this is."""
    return f"{socket.gethostname().replace('.', '_')}.{os.getpid()}"


def _dead_owner(name: str) -> bool:
    """True when the temporary name ``.tmp-<key>.<host>.<pid>.<rand>`` (or ``.trash-...``) belongs to
    a process of this host that no longer runs; False for live, foreign or unparsable owners."""
    parts = name.split(".")
    if len(parts) != 5 or not parts[3].isdigit():
        return False
    if parts[2] != socket.gethostname().replace(".", "_"):
        return False
    pid = int(parts[3])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else: alive
        return False
    return False


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

    def lock(self, key: str) -> FileLock:
        """The lock serialising the extraction of ``key`` across processes."""
        return FileLock(self.entry(key).with_name(f".{key}.lock"))

    def sweep(self) -> int:
        """Remove temporary and trashed folders of dead processes of this host, and lock files no
        process holds; the number of folders removed. Never raises on a file-system error."""
        removed = 0
        features = self.root / "features"
        try:
            leftovers = list(features.glob("*/.tmp-*")) + list(features.glob("*/.trash-*"))
            locks = list(features.glob("*/.*.lock"))
        except OSError:
            return 0
        for path in leftovers:
            if _dead_owner(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed += not path.exists()
        for path in locks:
            remove_if_unlocked(path)
        return removed

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
        tmp = entry.parent / f".tmp-{key}.{_owner()}.{uuid.uuid4().hex[:8]}"
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
        trash = entry.parent / f".trash-{entry.name}.{_owner()}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def auto_workers(requested: int) -> int:
    """``requested``, or (-1) the CPUs this process may use, shared among the processes torchrun
    started on this machine (``LOCAL_WORLD_SIZE``), one left for the main loop, at most 8."""
    if requested >= 0:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(0, min(8, cpus // local - 1))


class _Preprocessed:
    """A torch-style dataset applying the encoder's per-sample preprocessing."""

    def __init__(self, items, encoder, modality: str):
        self.items, self.encoder, self.modality = items, encoder, modality

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.encoder.preprocess(self.items[i], self.modality)


def _worker_errors_unwrapped(loader):
    """Iterate ``loader``; an error re-raised from a DataLoader worker carries the worker's
    traceback in its message: raise it with only the original message (it names the file)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as err:
            text = str(err)
            if "DataLoader worker process" not in text or "Traceback" not in text:
                raise
            last = [line for line in text.splitlines() if line.strip()][-1]
            prefix = f"{type(err).__module__}.{type(err).__name__}: "
            message = last.removeprefix(prefix)
            try:
                clean = type(err)(message)
            except Exception:
                raise err from None
            raise clean from None
        yield batch


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
        for batch in _worker_errors_unwrapped(loader):
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

    def __init__(
        self, cache: FeatureCache, *, device: str = "cpu", progress_factory=None,
        warn: Callable[[str], None] | None = None,
    ):
        self.cache = cache
        self.device = device
        self.progress_factory = progress_factory
        self._warn = warn
        self._warned: set[str] = set()
        cache.sweep()  # leftovers of killed runs
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

    def setup_encoder(self, encoder) -> None:
        """Set ``encoder`` up on this store's device (once; a failure is re-raised for its other cells)."""
        self._setup(encoder)

    def put(self, key: str, encoder, dataset, split_name: str, x: np.ndarray, labels, **encoder_info: Any) -> None:
        """Store features extracted outside :meth:`get` (by the ranks of a torchrun run) under ``key``,
        with the same metadata :meth:`get` writes; ``encoder_info`` adds provenance."""
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x).all(axis=1)))
            raise ValueError(f"encoder {encoder.name!r} produced non-finite embeddings for {bad} samples")
        meta = {
            "encoder": self.fingerprint(encoder), "dataset": self.fingerprint(dataset), "split": split_name,
            "coverage": encoder.coverage, "encoder_info": {**encoder.info(), **encoder_info},
        }
        self.cache.store(key, x, labels, meta)

    def warn(self, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        if self._warn is not None:
            self._warn(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _hit(self, key: str, split_name: str, hit) -> tuple[np.ndarray, np.ndarray | None, dict]:
        STATS["cache_hits"] += 1
        x, y, meta = hit
        info = {
            "split": split_name, "key": key, "cached": True, "n": int(x.shape[0]), "dim": int(x.shape[1]),
            "coverage": meta.get("coverage"), "encoder_info": meta.get("encoder_info", {}),
        }
        if meta.get("dataset_info"):
            info["dataset_info"] = meta["dataset_info"]
        self.log.append(info)
        return x, y, info

    def _lock(self, key: str) -> FileLock | None:
        """Hold the extraction lock of ``key``, waiting for another process that holds it; None
        when the cache folder cannot hold a lock file (then extract without one)."""
        lock = self.cache.lock(key)
        try:
            try:
                return lock.acquire(blocking=False)
            except LockBusy as busy:
                who = f"{busy.holder.get('host', '?')} pid {busy.holder.get('pid', '?')}"
                self.warn(f"waiting for features being extracted by {who} ({key})")
                return lock.acquire(blocking=True)
        except OSError as err:
            self.warn(f"feature cache {self.cache.root} cannot be written ({err.strerror or err}): "
                      "features are kept in memory for this run")
            return None

    def get(self, encoder, dataset, split_name: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
        enc_fp = self.fingerprint(encoder)
        ds_fp = self.fingerprint(dataset)
        key = self.cache.key(enc_fp, ds_fp, split_name)
        hit = self.cache.load(key)
        if hit is not None:
            return self._hit(key, split_name, hit)
        lock = self._lock(key)
        try:
            hit = self.cache.load(key) if lock is not None else None  # written while we waited
            if hit is not None:
                return self._hit(key, split_name, hit)
            return self._extract(encoder, dataset, split_name, key, enc_fp, ds_fp)
        finally:
            if lock is not None:
                lock.release()

    def _extract(self, encoder, dataset, split_name: str, key: str, enc_fp: dict, ds_fp: dict):
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
        if len(x) and not np.any(x):  # a dead encoder (zeroed weights, wrong layer): every metric is noise
            raise ValueError(f"encoder {encoder.name!r} produced all-zero embeddings for all {len(x)} samples "
                             f"of {dataset.name}/{split_name}")
        meta = {
            "encoder": enc_fp, "dataset": ds_fp, "split": split_name,
            "coverage": encoder.coverage, "encoder_info": encoder.info(),
        }
        dataset_info = dataset.info() if hasattr(dataset, "info") else {}  # e.g. skipped undecodable files
        if dataset_info:
            meta["dataset_info"] = dataset_info
        cache_error = None
        try:
            self.cache.store(key, x, split.labels, meta)
        except OSError as err:  # read-only or full cache: the run goes on with in-memory features
            cache_error = f"{err.filename or self.cache.root}: {err.strerror or err}"
            self.warn(f"feature cache {self.cache.root} cannot be written ({err.strerror or err}): "
                      "features are kept in memory for this run")
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
        if cache_error:
            info["cache_error"] = cache_error
        if dataset_info:
            info["dataset_info"] = dataset_info
        self.log.append(info)
        return x, split.labels, info
