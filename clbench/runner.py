"""Expand a suite into (encoder, task) cells and run them.

Each cell is isolated: its failure is written to its result file and the run goes on. A cell
whose result already exists with the same options hash (and did not fail) is skipped and its
file left untouched; ``force`` recomputes. A result that cannot be written (full disk, read-only
folder) stops the run with a ClbenchError naming the file; earlier results stay intact.

Several runs may share the output and cache folders: a cell is computed under a lock file
(``.<task>.json.lock``, see :mod:`clbench.locks`). A run meeting a cell locked by a live process
reports it as ``waiting`` (running elsewhere), goes on with the other cells, and at the end waits
for each such lock and re-checks the cell: it reads the other run's result, or computes the cell
itself if the other run died or failed without writing it. So every run ends with every cell
done, and each cell is computed once. Features come from the shared cache, so tasks on the
same dataset share one extraction and a re-run does no forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CapabilityError, ClbenchError, DataError
from .features import FeatureCache, FeatureStore
from .locks import FileLock, LockBusy, lock_path_for, remove_if_unlocked
from .options import options_dict, stable_hash
from .provenance import folder_of, git_info, host, peak_rss_mb, utc_now, versions
from .results.store import SCHEMA_VERSION, atomic_write_bytes, cell_path, read_result, write_result
from .suite import NAME_RE, Suite, TaskSpec, build_dataset, build_encoder


@dataclasses.dataclass
class CellOutcome:
    encoder: str
    task: str
    status: str  # ok | failed | skipped | up-to-date (| waiting: locked by another run, retried at the end)
    main_metric: str | None = None
    main_value: float | None = None
    reason: str | None = None
    path: Path | None = None


@dataclasses.dataclass
class RunSummary:
    suite: str
    results_dir: Path
    cells: list[CellOutcome]

    @property
    def failed(self) -> list[CellOutcome]:
        return [c for c in self.cells if c.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


def resolve_device(device: str) -> str:
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ClbenchError(f"device {device!r} requested but CUDA is not available")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cell_options(suite: Suite, enc_name: str, task: TaskSpec) -> tuple[dict[str, Any], str, str]:
    """(resolved options, options hash, comparability hash) of one cell."""
    enc = suite.encoders[enc_name]
    ds = suite.datasets.get(task.dataset) if task.dataset else None
    resolved = {
        "encoder": {"type": enc.type, **options_dict(enc.options)},
        "dataset": {"type": ds.type, **options_dict(ds.options)} if ds else None,
        "task": {"type": task.type, **options_dict(task.options)},
    }
    protocol = getattr(task.cls, "protocol_version", "1")
    options_hash = stable_hash({"options": resolved, "seed": suite.seed, "protocol": protocol})
    execution = set(getattr(task.cls, "execution_options", ()))
    compared_task = {k: v for k, v in resolved["task"].items() if k not in execution}
    comparability = stable_hash(
        {"task": compared_task, "dataset": resolved["dataset"], "seed": suite.seed, "protocol": protocol}
    )
    return resolved, options_hash, comparability


def plan(suite: Suite, only_encoders=None, only_tasks=None) -> list[tuple[str, TaskSpec]]:
    cells = []
    for enc_name in suite.encoders:
        if only_encoders and enc_name not in only_encoders:
            continue
        for task in suite.tasks:
            if only_tasks and task.name not in only_tasks:
                continue
            if task.encoders is not None and enc_name not in task.encoders:
                continue
            cells.append((enc_name, task))
    return cells


class Runner:
    def __init__(
        self,
        suite: Suite,
        *,
        device: str | None = None,
        force: bool = False,
        cache_dir: Path | None = None,
        console: Any = None,
        progress: bool = True,
    ):
        self.suite = suite
        self.force = force
        self.device = resolve_device(device or suite.device)
        from .distributed import start

        # under torchrun: join the process group; ranks other than 0 neither print nor write
        self.dist, self.device = start(self.device)
        if self.dist is not None and not self.dist.is_main:
            console = None
        self.cache = FeatureCache(cache_dir or suite.cache)
        # a run writes only into its output and cache folders: matplotlib's font cache (diagnostics
        # plots) goes into the feature cache folder unless the user has chosen a place for it
        os.environ.setdefault("MPLCONFIGDIR", str(Path(self.cache.root).resolve() / "matplotlib"))
        self.console = console
        factory = None
        if progress and console is not None and console.is_terminal:
            from .ui import progress_factory

            factory = progress_factory(console)
        self.store = FeatureStore(
            self.cache, device=self.device, progress_factory=factory,
            warn=(lambda msg: self._print(f"[yellow]warning:[/yellow] {msg}")) if console is not None else None,
        )
        self._encoders: dict[str, Any] = {}
        #: under torchrun, on rank 0 while it runs the cells: starts collective cells on all ranks
        self.collective: Any = None
        self._started = time.time()  # results written after this by another run count as fresh
        self._datasets: dict[str, Any] = {}

    def _print(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def encoder(self, name: str):
        if name not in self._encoders:
            self._encoders[name] = build_encoder(self.suite, name)
        return self._encoders[name]

    def dataset(self, name: str):
        if name not in self._datasets:
            self._datasets[name] = build_dataset(self.suite, name)
        return self._datasets[name]

    def _fingerprints(self, enc_name: str, task: TaskSpec) -> dict | None:
        """Identity of the weights and data behind a cell (None when it cannot be computed)."""
        try:
            fps = {"encoder": self.store.fingerprint(self.encoder(enc_name))}
            if task.dataset:
                fps["dataset"] = self.store.fingerprint(self.dataset(task.dataset))
            return json.loads(json.dumps(fps, default=str))  # as it reads back from the file
        except Exception:
            return None

    def _name_sources(self, err: Exception, task: TaskSpec) -> str:
        """``str(err)``; for a DataError raised where the file is unknown (a task's label check), with
        the dataset's files appended, so every data problem names its file."""
        message = str(err)
        ds = self._datasets.get(task.dataset) if task.dataset else None
        if isinstance(err, DataError) and ds is not None:
            try:
                sources = [str(p) for p in ds.sources()]
            except Exception:
                sources = []
            if sources and not any(src in message for src in sources):
                message += f" (dataset {task.dataset!r}: {', '.join(sources)})"
        return message

    @staticmethod
    def _write_artifacts(path: Path, task_name: str, artifacts: dict[str, bytes]) -> list[str]:
        """Write a task's sidecar files next to its result (atomically); their names."""
        names = []
        for name, data in artifacts.items():
            if not NAME_RE.match(name) or "/" in name:
                raise ValueError(f"invalid artifact name {name!r}")
            target = path.with_name(f"{task_name}.{name}")
            atomic_write_bytes(target, data)
            names.append(target.name)
        return names

    def _record_samples(self, path: Path, out: Any, result: dict[str, Any]) -> None:
        """Write the task's per-sample outcomes next to the result (before the result itself) and
        put bootstrap CIs into it. Never fails the cell: a problem leaves ``ci`` null with the
        reason in ``ci_reason``."""
        result.update(samples=None, ci=None, ci_reason=None, metrics_ci={})
        samples = getattr(out, "samples", None)
        if not samples or "arrays" not in samples:
            why = samples.get("unavailable") if isinstance(samples, dict) else None
            result["ci_reason"] = str(why or "the task records no per-sample outcomes")
            return
        try:
            from .stats import cell_cis, write_sidecar

            result["samples"] = write_sidecar(path, out.samples)
            main, others, why = cell_cis(out.samples, result["main_metric"], seed=self.suite.seed)
            result.update(ci={"main": main} if main is not None else None, ci_reason=why, metrics_ci=others)
        except Exception as err:
            result["ci_reason"] = f"per-sample outcomes not usable: {type(err).__name__}: {err}"

    def run(self, only_encoders=None, only_tasks=None) -> RunSummary:
        """Run every planned cell. A cell another process is computing (its lock is held) is put
        off, and waited for after the other cells: then its result is read, or computed here when
        the other process died or failed without writing it. Either way each cell is computed once."""
        if self.dist is not None:  # torchrun: ranks extract together, then rank 0 runs the cells
            from .distributed import run_on_ranks

            return run_on_ranks(self, only_encoders, only_tasks)
        outcomes: list[CellOutcome] = []
        deferred: list[tuple[int, str, TaskSpec]] = []
        self._started = time.time()
        for enc_name, task in plan(self.suite, only_encoders, only_tasks):
            outcome = self.run_cell(enc_name, task)
            if outcome.status == "waiting":
                deferred.append((len(outcomes), enc_name, task))
            outcomes.append(outcome)
            self._print_outcome(outcome)
        for i, enc_name, task in deferred:
            outcomes[i] = self.run_cell(enc_name, task, wait=True)
            self._print_outcome(outcomes[i])
        return RunSummary(suite=self.suite.name, results_dir=self.suite.results_dir, cells=outcomes)

    def _print_outcome(self, outcome: CellOutcome) -> None:
        style = {"ok": "green", "failed": "red", "skipped": "yellow"}.get(outcome.status, "dim")
        value = f" {outcome.main_metric}={outcome.main_value:.4f}" if outcome.main_value is not None else ""
        why = f" ({outcome.reason})" if outcome.reason and outcome.status != "ok" else ""
        self._print(f"[{style}]{outcome.status:>10}[/{style}] {outcome.encoder} × {outcome.task}{value}{why}")

    def _up_to_date(
        self, path: Path, enc_name: str, task_name: str, options_hash: str, fingerprints, *, fresh: bool = False
    ) -> CellOutcome | None:
        """The outcome of a valid result at ``path`` for these options, or None. With ``fresh``, a
        result written since this run started counts whatever its status (another run just
        computed it, possibly failing: computing it again here would not change that)."""
        existing = read_result(path)
        statuses = ("ok", "skipped")
        if fresh:
            try:
                if path.stat().st_mtime >= self._started:
                    statuses = ("ok", "skipped", "failed")
            except OSError:
                pass
        if (
            existing
            and existing.get("options_hash") == options_hash
            and existing.get("status") in statuses
            and (fingerprints is None or existing.get("fingerprints") == fingerprints)
        ):
            if existing["status"] == "failed":
                return CellOutcome(enc_name, task_name, "failed", reason=f"{existing.get('reason')} (another run)",
                                   path=path)
            return CellOutcome(
                enc_name, task_name, "up-to-date", existing.get("main_metric"), existing.get("main_value"),
                existing.get("reason"), path,
            )
        return None

    def run_cell(self, enc_name: str, task: TaskSpec, *, wait: bool = False) -> CellOutcome:
        """Run one cell under its lock (``.<task>.json.lock`` next to the result). Without ``wait``
        a cell locked by another live process is not run: its outcome is ``waiting``."""
        suite = self.suite
        path = cell_path(suite.output, suite.name, enc_name, task.name)
        resolved, options_hash, comparability = cell_options(suite, enc_name, task)
        fingerprints = self._fingerprints(enc_name, task)
        lock_file = lock_path_for(path)
        if not self.force:
            done = self._up_to_date(path, enc_name, task.name, options_hash, fingerprints)
            if done is not None:
                remove_if_unlocked(lock_file)  # left by a run killed after writing this result
                return done
        lock = FileLock(lock_file)
        try:
            lock.acquire(blocking=wait)
        except LockBusy as busy:
            holder = f"{busy.holder.get('host', '?')} pid {busy.holder.get('pid', '?')}" if busy.holder else "?"
            return CellOutcome(enc_name, task.name, "waiting", reason=f"running elsewhere ({holder})", path=path)
        except OSError as err:
            raise ClbenchError(f"{lock_file.parent}: cannot write results here ({err.strerror or err})") from None
        try:
            # a result another process wrote while we waited (or since our first look) is kept
            if not self.force or wait:
                done = self._up_to_date(path, enc_name, task.name, options_hash, fingerprints, fresh=True)
                if done is not None:
                    return done
            return self._compute_cell(enc_name, task, path, resolved, options_hash, comparability, fingerprints)
        finally:
            lock.release()

    def _compute_cell(
        self, enc_name: str, task: TaskSpec, path: Path, resolved: dict[str, Any], options_hash: str,
        comparability: str, fingerprints: dict | None,
    ) -> CellOutcome:
        suite = self.suite
        result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "suite": suite.name,
            "encoder": enc_name,
            "task": task.name,
            "task_type": task.type,
            "dataset": task.dataset,
            "status": "ok",
            "reason": None,
            "error": None,
            "metrics": {},
            "main_metric": None,
            "main_value": None,
            "protocol_version": getattr(task.cls, "protocol_version", "1"),
            "options": resolved,
            "options_hash": options_hash,
            "comparability_hash": comparability,
            "coverage": None,
            "seed": suite.seed,
            "device": self.device,
            "timings": {},
            "throughput": None,
            "peak_memory": {},
            "versions": versions(),
            "git": git_info(folder_of(suite.path)),
            "host": host(),
            "suite_file": str(suite.path.resolve()),
            "fingerprints": {},
            "features": [],
            "details": {},
        }
        t0 = time.perf_counter()
        log_start = len(self.store.log)
        cuda = self.device.startswith("cuda")
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            encoder = self.encoder(enc_name)
            dataset = self.dataset(task.dataset) if task.dataset else None
            needed = task.cls.modalities or (task.cls.modality or (dataset.modality if dataset else None),)
            for modality in needed:
                if modality is not None and not encoder.supports(modality):
                    raise CapabilityError(
                        f"encoder {enc_name!r} ({suite.encoders[enc_name].type}) does not take {modality} inputs "
                        f"(it takes: {', '.join(sorted(encoder.modalities)) or 'nothing'})"
                    )
            result["fingerprints"] = fingerprints or {}
            from .tasks.base import TaskContext

            def features(split: str):
                x, y, _ = self.store.get(encoder, dataset, split)
                return x, y

            task_obj = task.cls(task.options, name=task.name)
            cell_dist = None
            if self.collective is not None and getattr(task.cls, "collective", False):
                cell_dist = self.collective.open(enc_name, task)  # the other ranks join this cell
            ctx = TaskContext(
                features=features, dataset=dataset, encoder=encoder, device=self.device, seed=suite.seed,
                cache_dir=self.cache.root, console=self.console, dist=cell_dist,
            )
            out = task_obj.run(ctx)
            metrics = {k: _number(v) for k, v in out.metrics.items()}
            main_value = metrics.get(out.main_metric)
            if main_value is None:
                raise ValueError(f"task did not produce its main metric {out.main_metric!r}")
            if isinstance(main_value, float) and math.isnan(main_value):  # NaN never reaches a table
                raise ValueError(f"main metric {out.main_metric!r} is NaN")
            result.update(metrics=metrics, main_metric=out.main_metric, main_value=main_value, details=out.details)
            result["artifacts"] = self._write_artifacts(path, task.name, out.artifacts)
            self._record_samples(path, out, result)
            result["timings"].update(out.timings)
            if getattr(task.cls, "higher_is_better", True) is False:
                result["higher_is_better"] = False
        except CapabilityError as err:
            result.update(status="skipped", reason=str(err))
        except Exception as err:  # one failing cell never stops the others
            result.update(
                status="failed",
                reason=f"{type(err).__name__}: {self._name_sources(err, task)}",
                error={"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()},
            )
        total = time.perf_counter() - t0
        feats = self.store.log[log_start:]
        extraction = sum(f.get("seconds", 0.0) for f in feats)
        result["features"] = [{k: v for k, v in f.items() if k not in ("coverage", "encoder_info")} for f in feats]
        for f in feats:
            if f.get("coverage") is not None:
                result["coverage"] = f["coverage"]
            if f.get("encoder_info"):
                result["details"].setdefault("encoder_info", f["encoder_info"])
        fit = result["timings"].pop("fit_s", None)
        result["timings"] = {
            "extraction_s": extraction,
            "fit_s": fit if fit is not None else max(0.0, total - extraction),
            "total_s": total,
            **result["timings"],
        }
        extracted = [f for f in feats if not f.get("cached")]
        if extracted:
            n = sum(f["n"] for f in extracted)
            result["throughput"] = {"samples": n, "samples_per_s": n / extraction if extraction > 0 else None}
        result["peak_memory"] = {"process_rss_mb": peak_rss_mb()}
        if cuda:
            import torch

            result["peak_memory"]["cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if resolved["encoder"]["type"] == "zoo":  # zoo entry, its source, and the published number
            from .zoo.published import annotate

            annotate(result)
        result["timestamp"] = utc_now()
        try:
            write_result(path, result)
        except OSError as err:  # full disk, read-only folder: stop; results written so far stay valid
            raise ClbenchError(
                f"{path}: cannot write the result ({err.strerror or err}); the run stops here, "
                "results written earlier are intact"
            ) from None
        return CellOutcome(
            enc_name, task.name, result["status"], result["main_metric"], result["main_value"], result["reason"], path
        )


def _number(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


__all__ = ["CellOutcome", "RunSummary", "Runner", "__version__", "cell_options", "plan", "resolve_device"]
