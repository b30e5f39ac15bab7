"""Several processes, one run: ``torchrun --nproc-per-node N -m clbench run suite.yaml``.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment, world size
above one) every process builds the same :class:`~clbench.runner.Runner`. Before any cell runs,
the ranks extract together every feature entry the pending cells need and that the cache lacks:

- each split is cut into ``world_size`` contiguous shards (:func:`shard_bounds`), aligned to the
  encoder's batch size, so rank ``r`` forwards exactly the batches a single process would have
  forwarded for those rows (same shapes, so the same numbers), and no sample is dropped or
  encoded twice whatever ``N`` is;
- the shards are all-gathered and put back in dataset order (:func:`reassemble`);
- rank 0 alone writes the cache entry; the other ranks wait on a barrier.

Rank 0 then runs the cells (every feature is a cache hit), writes every result file and prints;
the other ranks wait for its outcome and exit with the same status. A failure on any rank while
extracting an entry is shared with all ranks, which leave that entry to rank 0's cell, where it
is retried on one process and, if it fails again, recorded as the cell's failure as usual.

**Collective cells.** A task class with ``collective = True`` (the ``knn`` task) is run by all
ranks together when rank 0 computes one of its cells: rank 0 sends the other ranks the cell
(:class:`_Leader`), every rank calls the task's ``run`` with ``ctx.dist`` set to a
:class:`CellGroup`, and rank 0 alone returns the output the runner writes. The task first loads
its features through :meth:`CellGroup.load` (rank 0 first, which may extract and write the
cache, then the others read the cache entries rank 0 named); from there every step that may
fail on one rank is followed by :meth:`CellGroup.agree`, so a failure anywhere is raised on every
rank and no rank is left waiting in a collective. k-NN: :func:`knn_neighbours_on_ranks`.

The process group uses NCCL when the run's device is CUDA (each rank on ``cuda:LOCAL_RANK``) and
gloo on CPU. :func:`merge_topk` and :func:`sharded_topk` compute an exact top-k over a bank held
in shards (one per rank, or streamed through one device when it is larger than its memory).

Importing this module does not import torch.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ClbenchError

__all__ = [
    "CellGroup",
    "DistInfo",
    "Distributed",
    "detect",
    "is_main_process",
    "knn_neighbours_on_ranks",
    "merge_topk",
    "prefetch",
    "reassemble",
    "run_on_ranks",
    "shard_bounds",
    "sharded_topk",
    "start",
]

#: minutes a rank waits for the others at a collective (rank 0 may compute cells for hours)
TIMEOUT_ENV = "CLBENCH_DIST_TIMEOUT_MIN"


# ------------------------------------------------------------------------------ environment
@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ: dict[str, str] | None = None) -> DistInfo | None:
    """The torchrun environment of this process, or None for a plain single-process run."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ClbenchError(
            f"torch.distributed environment: RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r} are not integers"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world or local < 0:
        raise ClbenchError(f"torch.distributed environment: RANK={rank} outside [0, WORLD_SIZE={world})")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def is_main_process() -> bool:
    """True unless this process is a torchrun rank other than 0 (which must not print or write)."""
    info = detect()
    return info is None or info.is_main


# ------------------------------------------------------------------------------ pure helpers
def shard_bounds(n: int, world_size: int, rank: int, *, align: int = 1) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that ``rank`` handles: contiguous, in rank order, covering
    ``[0, n)`` exactly once. Shards are made of whole blocks of ``align`` rows (the last block may
    be shorter), spread so shard sizes differ by at most one block; a rank may get nothing.

    >>> [shard_bounds(10, 3, r) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    >>> [shard_bounds(10, 3, r, align=4) for r in range(3)]
    [(0, 4), (4, 8), (8, 10)]
    """
    if n < 0 or world_size < 1 or not 0 <= rank < world_size or align < 1:
        raise ValueError(f"invalid shard request n={n}, world_size={world_size}, rank={rank}, align={align}")
    blocks = -(-n // align)
    base, extra = divmod(blocks, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * align, n), min(last * align, n)


def reassemble(parts: Sequence[np.ndarray], bounds: Sequence[tuple[int, int]], n: int) -> np.ndarray:
    """Rows gathered from the ranks put back in dataset order; checks that they cover ``[0, n)``
    once (a shard of the wrong length, a gap or an overlap is an error, never a silent shift)."""
    if len(parts) != len(bounds):
        raise ValueError(f"{len(parts)} parts for {len(bounds)} shards")
    pos = 0
    for i, ((start, stop), part) in enumerate(zip(bounds, parts)):
        if start != pos:
            raise ValueError(f"shard {i} starts at row {start}, expected {pos} (gap or overlap)")
        if len(part) != stop - start:
            raise ValueError(f"shard {i} has {len(part)} rows for [{start}, {stop})")
        pos = stop
    if pos != n:
        raise ValueError(f"shards cover {pos} of {n} rows")
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        raise ValueError("no rows gathered")
    return np.concatenate(nonempty, axis=0)


def merge_topk(values: Sequence[Any], indices: Sequence[Any], k: int) -> tuple[Any, Any]:
    """The exact top-``k`` of a bank from the top-``k`` of each of its shards.

    ``values[s]`` / ``indices[s]``: the best scores [R, k_s] of shard ``s`` and their *global* bank
    indices, for the same R queries (k_s may be below k for a small shard). Returns (values,
    indices) [R, k], best first, equal scores in increasing index order. Any entry of the global
    top-k is in its own shard's top-k, so merging the shards' lists loses nothing. Takes and
    returns torch tensors, or NumPy arrays when given NumPy arrays.

    >>> import numpy as np
    >>> v, i = merge_topk([np.array([[0.9, 0.1]]), np.array([[0.5, 0.4]])], [np.array([[3, 0]]), np.array([[7, 6]])], 3)
    >>> v.tolist(), i.tolist()
    ([[0.9, 0.5, 0.4]], [[3, 7, 6]])
    """
    import torch

    if not values or len(values) != len(indices):
        raise ValueError("merge_topk: give one (values, indices) pair per shard")
    as_numpy = isinstance(values[0], np.ndarray)
    vals = torch.cat([torch.as_tensor(v) for v in values], dim=1)
    idx = torch.cat([torch.as_tensor(i).to(torch.int64) for i in indices], dim=1)
    if vals.shape != idx.shape:
        raise ValueError(f"merge_topk: values {tuple(vals.shape)} and indices {tuple(idx.shape)} differ in shape")
    if k > vals.shape[1]:
        raise ValueError(f"merge_topk: k={k} exceeds the {vals.shape[1]} candidates")
    # order by index, then (stable) by value: ties keep increasing index order
    by_idx = idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, by_idx), idx.gather(1, by_idx)
    order = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
    top_v, top_i = vals.gather(1, order), idx.gather(1, order)
    if as_numpy:
        return top_v.numpy(), top_i.numpy()
    return top_v, top_i


def sharded_topk(
    queries: Any, bank: Any, k: int, *, shard_rows: int, device: str = "cpu", bank_dtype: str = "fp32"
) -> tuple[Any, Any]:
    """Exact top-``k`` inner products of ``queries`` [R, D] against ``bank`` [N, D], the bank moved
    to ``device`` one shard of ``shard_rows`` rows at a time (a bank larger than device memory;
    a NumPy memory map is read shard by shard). ``bank_dtype="fp16"`` stores each shard in half
    precision; products are accumulated in float32. Returns (values, indices) tensors [R, k].
    """
    import torch

    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    n = bank.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must lie in [1, {n}]")
    dev = torch.device(device)
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32) if isinstance(queries, np.ndarray) else queries)
    q = q.to(dev, torch.float32)
    store = {"fp32": torch.float32, "fp16": torch.float16}[bank_dtype]
    vals, idxs = [], []
    for start in range(0, n, shard_rows):
        stop = min(start + shard_rows, n)
        part = bank[start:stop]
        part = torch.as_tensor(np.ascontiguousarray(part, dtype=np.float32) if isinstance(part, np.ndarray) else part)
        part = part.to(dev, store)
        sims = q @ part.to(torch.float32).T  # fp16 storage, fp32 accumulation
        kk = min(k, stop - start)
        v, i = sims.topk(kk, dim=1)
        vals.append(v)
        idxs.append(i + start)
    return merge_topk(vals, idxs, k)


# ------------------------------------------------------------------------------ process group
class Distributed:
    """The live process group of a torchrun run (created by :func:`start`)."""

    def __init__(self, info: DistInfo, device: str):
        self.info = info
        self.device = device
        self.backend = "nccl" if device.startswith("cuda") else "gloo"

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    @property
    def comm_device(self) -> str:
        return self.device if self.backend == "nccl" else "cpu"

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[int(self.device.split(":")[1])])
        else:
            dist.barrier()

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, local: np.ndarray | None, bounds: Sequence[tuple[int, int]], n: int, dim: int) -> np.ndarray:
        """Every rank's rows [stop - start, dim] (float32), all-gathered and reassembled in order."""
        import torch
        import torch.distributed as dist

        rows = max(stop - start for start, stop in bounds)
        buf = torch.zeros(rows, dim, dtype=torch.float32, device=self.comm_device)
        if local is not None and len(local):
            buf[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(buf.device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        parts = [o[: stop - start].cpu().numpy() for o, (start, stop) in zip(out, bounds)]
        return reassemble(parts, bounds, n)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def start(device: str) -> tuple[Distributed | None, str]:
    """Join the torchrun process group when there is one: (group or None, this rank's device).

    On CUDA each rank uses ``cuda:LOCAL_RANK`` (whatever CUDA device the suite names).
    """
    info = detect()
    if info is None:
        return None, device
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        if info.local_rank >= torch.cuda.device_count():
            raise ClbenchError(
                f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
    group = Distributed(info, device)
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV) or 24 * 60)
        kwargs: dict[str, Any] = {"backend": group.backend, "timeout": datetime.timedelta(minutes=minutes)}
        if group.backend == "nccl":
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(**kwargs)
        atexit.register(group.close)
    return group, device


# ------------------------------------------------------------------------------ sharded extraction
class _Rows(Sequence):
    """Rows ``[start, stop)`` of a sequence, without copying it (datasets may load lazily)."""

    def __init__(self, items: Sequence[Any], start: int, stop: int):
        self.items, self.start, self.stop = items, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.items[self.start + i]


def _shard_align(encoder: Any) -> int:
    # whole batches: each rank then runs exactly the batches one process would run for its rows
    return 1 if encoder.batches_internally else int(encoder.options.batch_size)


def extract_sharded(group: Distributed, encoder: Any, split: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """This rank's shard of ``split`` embedded, gathered from all ranks in dataset order.

    Called on every rank (collectively). A failure on any rank raises on all of them.
    """
    from .features import extract

    n = len(split)
    bounds = [shard_bounds(n, group.world_size, r, align=_shard_align(encoder)) for r in range(group.world_size)]
    start, stop = bounds[group.rank]
    local, error = None, None
    t0 = time.perf_counter()
    try:
        if stop > start:
            sub = dataclasses.replace(
                split,
                items=_Rows(split.items, start, stop),
                labels=None,
                ids=None,
            )
            local = extract(encoder, sub, device=group.device)
    except Exception as err:  # shared with the other ranks below, so none of them hangs
        error = f"rank {group.rank}: {type(err).__name__}: {err}"
    seconds = time.perf_counter() - t0
    status = group.all_gather_object((error, None if local is None else int(local.shape[1]), seconds))
    errors = [s[0] for s in status if s[0]]
    if errors:
        raise ClbenchError("distributed extraction failed: " + "; ".join(errors))
    dims = {s[1] for s in status if s[1] is not None}
    if len(dims) != 1:
        raise ClbenchError(f"distributed extraction: ranks produced different feature sizes {sorted(dims)}")
    x = group.gather_rows(local, bounds, n, dims.pop())
    info = {
        "world_size": group.world_size,
        "backend": group.backend,
        "shards": [list(b) for b in bounds],
        "seconds_per_rank": [s[2] for s in status],
    }
    return x, info


def _pending_entries(runner: Any, cells: Sequence[tuple[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(encoder, dataset, split, cache key) of the entries the runner's pending cells will read and
    the cache lacks, in first-use order (computed by rank 0)."""
    from .launch import pending_cells

    def fingerprint_of(kind: str, name: str) -> Any:  # the runner's objects, each fingerprinted once
        return runner.store.fingerprint(runner.encoder(name) if kind == "encoder" else runner.dataset(name))

    seen: dict[str, tuple[str, str, str, str] | None] = {}
    pending = pending_cells(runner.suite, list(cells), force=runner.force, fingerprint_of=fingerprint_of)
    for enc_name, task in pending:
        if not task.dataset or not task.cls.splits:
            continue
        try:
            encoder, dataset = runner.encoder(enc_name), runner.dataset(task.dataset)
            if not encoder.supports(dataset.modality):
                continue
            enc_fp, ds_fp = runner.store.fingerprint(encoder), runner.store.fingerprint(dataset)
        except Exception:  # noqa: S112 -- the cell itself reports it, on rank 0
            continue
        for split in task.cls.splits:
            key = runner.cache.key(enc_fp, ds_fp, split)
            if key not in seen:
                seen[key] = (enc_name, task.dataset, split, key) if runner.cache.load(key) is None else None
    return [entry for entry in seen.values() if entry is not None]


def prefetch(runner: Any, cells: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Extract, on all ranks together, the cache entries the pending ``cells`` need (collective).

    Rank 0 decides what is missing and writes each entry; the others wait on a barrier. Returns,
    on every rank, one record per entry (``error`` set when it failed: the cell retries it).
    """
    group: Distributed = runner.dist
    todo: list[tuple[str, str, str, str]] = []
    if group.is_main:
        try:
            todo = _pending_entries(runner, cells)
        except Exception as err:  # never leave the other ranks waiting: the cells extract on rank 0
            runner._print(f"[yellow]warning:[/yellow] no sharded extraction ({type(err).__name__}: {err})")
    todo = group.broadcast(todo)
    done = []
    for enc_name, ds_name, split_name, key in todo:
        record: dict[str, Any] = {"encoder": enc_name, "dataset": ds_name, "split": split_name, "key": key}
        try:
            encoder = dataset = split = error = None
            try:
                encoder, dataset = runner.encoder(enc_name), runner.dataset(ds_name)
                split = dataset.split(split_name)
                runner.store.setup_encoder(encoder)
            except Exception as err:
                error = f"rank {group.rank}: {type(err).__name__}: {err}"
            errors = [e for e in group.all_gather_object(error) if e]
            if errors:
                raise ClbenchError("; ".join(errors))
            x, info = extract_sharded(group, encoder, split)
            record["shards"] = info["shards"]
            if group.is_main:
                runner.store.put(key, encoder, dataset, split_name, x, split.labels, distributed=info)
        except Exception as err:  # rank 0's cell retries this entry on its own and reports it
            record["error"] = f"{type(err).__name__}: {err}"
        group.barrier()  # the entry is in the cache (or failed) for everyone
        done.append(record)
    return done


# ------------------------------------------------------------------------------ collective cells
class CellAbandoned(ClbenchError):
    """Raised on a rank other than 0 that leaves a collective cell early (rank 0 failed, or goes on
    alone); rank 0 records the cell's outcome."""


class CellGroup:
    """``ctx.dist`` of a collective cell (a task class with ``collective = True``) under torchrun.

    Every rank runs the task's ``run`` at once. The task calls :meth:`load` first; after it,
    :attr:`active` tells whether the ranks compute together (else rank 0 goes on alone, as in a
    single-process run, and :attr:`note` says why). Rank 0's output is the cell's result; the other
    ranks' outputs are discarded (a task returns None there).
    """

    def __init__(self, group: Distributed):
        self.group = group
        self.active = True
        self.note: str | None = None
        self.loaded = False

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world_size(self) -> int:
        return self.group.world_size

    @property
    def is_main(self) -> bool:
        return self.group.is_main

    def agree(self, error: BaseException | None, payload: Any = None) -> list[Any]:
        """Share every rank's outcome of the step just done (collective): each rank's ``payload``
        when all succeeded; else raise on every rank (the original error where it happened)."""
        message = None if error is None else f"{type(error).__name__}: {error}"
        statuses = self.group.all_gather_object((message, payload))
        failed = [f"rank {r}: {m}" for r, (m, _) in enumerate(statuses) if m]
        if failed:
            if error is not None:
                raise error
            raise (ClbenchError if self.is_main else CellAbandoned)("; ".join(failed))
        return [p for _, p in statuses]

    def load(self, fn: Any) -> Any:
        """``fn()`` (reading the cell's features) on rank 0 first, where it may extract and write
        the cache, then on the other ranks, which read the cache (collective). A failure on rank 0
        fails the cell on every rank; one on another rank leaves rank 0 to run the cell alone
        (:attr:`active` false, the reason in :attr:`note`; the other ranks raise
        :class:`CellAbandoned`)."""
        self.loaded = True
        value, error = None, None
        if self.is_main:
            try:
                value = fn()
            except Exception as err:
                error = err
        self.agree(error)  # rank 0's features are in the cache (or the cell fails everywhere)
        if not self.is_main:
            try:
                value = fn()
            except Exception as err:
                error = err
        message = None if error is None else f"rank {self.rank}: {type(error).__name__}: {error}"
        problems = [m for m in self.group.all_gather_object(message) if m]
        if problems:
            self.active = False
            self.note = "computed on rank 0 alone: " + "; ".join(problems)
            if not self.is_main:
                raise CellAbandoned(self.note)
        return value


class _Leader:
    """On rank 0 while it runs the cells: starts each collective cell on the other ranks."""

    def __init__(self, runner: Any, group: Distributed):
        self.runner, self.group = runner, group

    def open(self, enc_name: str, task: Any) -> CellGroup:
        """Send the other ranks the cell about to run, with the cache keys of its features."""
        keys: dict[str, str] = {}
        if task.dataset and task.cls.splits:
            runner = self.runner
            enc_fp = runner.store.fingerprint(runner.encoder(enc_name))
            ds_fp = runner.store.fingerprint(runner.dataset(task.dataset))
            keys = {split: runner.cache.key(enc_fp, ds_fp, split) for split in task.cls.splits}
        self.group.broadcast(("cell", enc_name, task.name, keys))
        return CellGroup(self.group)


def _read_entry(cache: Any, key: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A cache entry rank 0 has just read and verified, memory-mapped (rows are read when used:
    each rank touches its own shard); never modified or removed here."""
    entry = cache.entry(key)
    try:
        meta = json.loads((entry / "meta.json").read_text())
        x = np.load(entry / "x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(entry / "y.npy", allow_pickle=False) if "y.npy" in meta["files"] else None
    except (OSError, ValueError, KeyError) as err:
        raise ClbenchError(f"{where}: feature cache entry {entry} not readable ({err})") from None
    if meta.get("key") != key or list(x.shape) != meta.get("shape"):
        raise ClbenchError(f"{where}: feature cache entry {entry} does not match its metadata")
    return x, y


def _follow_cell(runner: Any, group: Distributed, enc_name: str, task_name: str, keys: dict[str, str]) -> None:
    """A rank other than 0 runs its part of a collective cell (rank 0 records the outcome)."""
    from .tasks.base import TaskContext

    cell = CellGroup(group)
    try:
        task = next(t for t in runner.suite.tasks if t.name == task_name)
        encoder = runner.encoder(enc_name)
        dataset = runner.dataset(task.dataset) if task.dataset else None

        def features(split: str) -> tuple[np.ndarray, np.ndarray | None]:
            if split not in keys:
                raise ClbenchError(f"split {split!r} of cell {enc_name} · {task_name} has no cache key")
            return _read_entry(runner.cache, keys[split], f"{enc_name} · {task_name} · {split}")

        ctx = TaskContext(
            features=features, dataset=dataset, encoder=encoder, device=runner.device, seed=runner.suite.seed,
            cache_dir=runner.cache.root, console=None, dist=cell,
        )
        task_obj = task.cls(task.options, name=task.name)
    except Exception as err:  # take part in the load step with this failure: rank 0 goes on alone
        failure = err

        def fail() -> Any:
            raise failure

        with contextlib.suppress(CellAbandoned):
            cell.load(fail)
        return
    with contextlib.suppress(Exception):  # shared with rank 0 by the task's agree steps; it records the cell
        task_obj.run(ctx)
    if not cell.loaded:  # a task that never reached its load step: release rank 0 (it goes on alone)

        def unloaded() -> Any:
            raise ClbenchError(f"task {task_name!r} did not load its features on rank {group.rank}")

        with contextlib.suppress(CellAbandoned):
            cell.load(unloaded)


def knn_neighbours_on_ranks(
    cell: CellGroup,
    train_x: Any,
    test_x: Any,
    k: int,
    *,
    chunk_size: int | None = None,
    device: str = "cpu",
    precision: str = "auto",
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`clbench.metrics.knn.knn_neighbours` with the training bank split across the ranks
    (collective; every rank passes the whole ``train_x``, of which it reads its shard only).

    Rank ``r`` takes the contiguous rows :func:`shard_bounds` gives it and computes their exact top
    ``min(k, shard rows)`` for every test row (same similarities pair by pair, ties to the lower
    global index: the shard's offset is passed); the partial lists are gathered to rank 0 in
    blocks of test rows and merged by :func:`merge_topk`. Rank 0 returns (similarities float32
    [M, k], global train indices int64 [M, k]), bit for bit what one process computes over the
    whole bank; the other ranks return None. ``stats`` (rank 0) sums the ranks' candidate counts
    and records the shards.
    """
    import torch
    import torch.distributed as dist

    from .metrics.knn import knn_neighbours

    group = cell.group
    n = int(train_x.shape[0])
    m = int(test_x.shape[0])
    world, rank = group.world_size, group.rank
    bounds = [shard_bounds(n, world, r) for r in range(world)]
    widths = [min(k, stop - start) for start, stop in bounds]
    local = None
    local_stats: dict[str, Any] = {}
    error = None
    try:
        if not 1 <= k <= n:
            raise ValueError(f"k must lie in [1, {n}], got {k}")
        start, stop = bounds[rank]
        if widths[rank]:
            local = knn_neighbours(
                train_x[start:stop], test_x, widths[rank], chunk_size=chunk_size, device=device,
                precision=precision, stats=local_stats, offset=start,
            )
    except Exception as err:
        error = err
    all_stats = cell.agree(error, local_stats)

    # gather in blocks of test rows (bounded memory on rank 0), each rank's list padded to k
    step = max(1, 2**22 // (k * world))
    comm = group.comm_device
    out_sims = np.empty((m, k), dtype=np.float32) if group.is_main else None
    out_idx = np.empty((m, k), dtype=np.int64) if group.is_main else None
    merge_error = None
    for s in range(0, m, step):
        e = min(s + step, m)
        vals = torch.full((e - s, k), -math.inf, dtype=torch.float32)
        idxs = torch.full((e - s, k), -1, dtype=torch.int64)
        if local is not None:
            vals[:, : widths[rank]] = torch.from_numpy(local[0][s:e])
            idxs[:, : widths[rank]] = torch.from_numpy(local[1][s:e])
        vals, idxs = vals.to(comm), idxs.to(comm)
        got_v = [torch.empty_like(vals) for _ in range(world)] if group.is_main else None
        got_i = [torch.empty_like(idxs) for _ in range(world)] if group.is_main else None
        dist.gather(vals, got_v, dst=0)
        dist.gather(idxs, got_i, dst=0)
        if group.is_main and merge_error is None:
            try:  # a failure here must not stop rank 0 taking part in the next gathers
                parts = [r for r in range(world) if widths[r]]
                v, i = merge_topk([got_v[r][:, : widths[r]].cpu() for r in parts],
                                  [got_i[r][:, : widths[r]].cpu() for r in parts], k)
                out_sims[s:e] = v.numpy()
                out_idx[s:e] = i.numpy()
            except Exception as err:
                merge_error = err
    if not group.is_main:
        return None
    if merge_error is not None:
        raise merge_error
    if stats is not None:
        done = [st for st in all_stats if st]
        stats.update(
            precision="/".join(sorted({st["precision"] for st in done})),
            candidates_per_row=sum(st["candidates_per_row"] for st in done),
            fp32_redone_rows=sum(st["fp32_redone_rows"] for st in done),
            shards=[list(b) for b in bounds],
        )
    return out_sims, out_idx


def run_on_ranks(runner: Any, only_encoders: Any = None, only_tasks: Any = None) -> Any:
    """``Runner.run`` under torchrun (called by it on every rank): the ranks extract the missing
    features together (:func:`prefetch`), then rank 0 runs the cells, writing every result and
    printing, and the other ranks join it in each collective cell it computes (a task class with
    ``collective = True``); every rank returns rank 0's :class:`~clbench.runner.RunSummary`."""
    from .runner import plan

    group: Distributed = runner.dist
    records = prefetch(runner, plan(runner.suite, only_encoders, only_tasks))
    if not group.is_main:
        while True:  # rank 0's commands: a collective cell to join, or the end of the run
            message = group.broadcast(None)
            if message[0] == "done":
                if message[2]:
                    raise ClbenchError(f"rank 0 stopped: {message[2]}")
                return message[1]
            _, enc_name, task_name, keys = message
            _follow_cell(runner, group, enc_name, task_name, keys)
    for r in records:
        if r.get("error"):
            runner._print(f"[yellow]warning:[/yellow] sharded extraction of {r['encoder']} · "
                          f"{r['dataset']}/{r['split']} failed ({r['error']}); its cells retry it on rank 0")
    runner.dist = None  # the cells run here, as in a single-process run; collective ones on all ranks
    runner.collective = _Leader(runner, group)
    try:
        summary = runner.run(only_encoders, only_tasks)
    except BaseException as err:
        with contextlib.suppress(Exception):
            group.broadcast(("done", None, f"{type(err).__name__}: {err}"))
        raise
    finally:
        runner.dist = group
        runner.collective = None
    group.broadcast(("done", summary, None))
    return summary
