"""Run a suite's cells as cluster jobs through submitit, and tell what state each cell is in.

``clbench run suite.yaml --launcher slurm`` (or ``local``: the same jobs as processes of this
machine, for testing) submits one job per encoder (``group_by: encoder``: its features are
extracted once and shared by its tasks) or one per cell (``group_by: cell``). A job runs the
ordinary :class:`~clbench.runner.Runner` restricted to its cells, so results are written one file
per cell as each finishes (a job that dies keeps the cells it finished), and only the cells
without an up-to-date result are submitted: resubmitting the same command runs what is missing
or failed. While it runs, a job keeps a marker ``<results>/.jobs/<job id>.job`` (host, pid, job
id, its cells); each cell being computed holds its lock file (:mod:`clbench.locks`).

:func:`cell_states` (``clbench status RESULTS_DIR [--suite S]``) reads result files, lock files
and job markers, never importing torch: ``done``, ``skipped``, ``failed`` (with the reason),
``running`` (lock held, or listed by a live job), ``stale`` (a lock or job marker left by a
process of this host that no longer runs), ``missing`` (planned by the suite, no result).

Options come from the suite's optional ``launcher:`` mapping (:class:`LauncherOptions`), then
the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Literal

from .errors import ClbenchError
from .locks import is_locked
from .options import option
from .results.store import atomic_write_text, cell_path, read_result

LAUNCHERS = ("inline", "local", "slurm")
JOBS_DIR = ".jobs"


@dataclasses.dataclass
class LauncherOptions:
    """How ``clbench run`` executes the suite's cells (the suite's ``launcher:`` mapping)."""

    type: Literal["inline", "local", "slurm"] = option(
        "inline", "inline: in this process; local: submitit jobs on this machine; slurm: SLURM jobs"
    )
    group_by: Literal["encoder", "cell"] = option(
        "encoder", "one job per encoder (its features shared by its tasks) or per (encoder, task) cell"
    )
    partition: str | None = option(None, "SLURM partition")
    gpus_per_node: int = option(0, "GPUs per job")
    cpus_per_task: int | None = option(None, "CPUs per job")
    mem_gb: int | None = option(None, "memory per job, GB")
    time: int = option(240, "time limit per job, minutes")
    array_parallelism: int = option(64, "most jobs of the array running at once (SLURM)")
    slurm: dict[str, str | int | float | bool] = option(
        {}, "further sbatch options, e.g. {account: abc, constraint: a100, qos: high}"
    )
    logs: str | None = option(None, "submitit folder for job logs (default: <results>/.submitit)")

    def validate(self) -> None:
        for name in ("gpus_per_node", "cpus_per_task", "mem_gb", "time", "array_parallelism"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "gpus_per_node" else 1):
                raise ValueError(f"{name}: expected a {'non-negative' if name == 'gpus_per_node' else 'positive'} "
                                 f"integer, got {value}")
        if self.partition is not None and not self.partition.strip():
            raise ValueError("partition: expected a partition name")
        for key in self.slurm:
            if not key or not all(c.isalnum() or c in "-_" for c in key):
                raise ValueError(f"slurm: invalid sbatch option name {key!r}")


def parse_slurm_options(pairs: list[str]) -> dict[str, str]:
    """``key=value`` strings from ``--slurm-option`` as a mapping (ClbenchError on a bad one)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ClbenchError(f"--slurm-option: expected key=value, got {pair!r}")
        out[key] = value
    return out


# ------------------------------------------------------------------------------ what to submit
def pending_cells(
    suite: Any, cells: list[tuple[str, Any]], *, force: bool = False, fingerprint_of: Any = None
) -> list[tuple[str, Any]]:
    """The cells a run would compute: those without an ``ok``/``skipped`` result of the same
    options and (when they can be computed here) the same weights and data fingerprints.
    ``fingerprint_of(kind, name)`` fingerprints an encoder / dataset (default: built anew here)."""
    from .runner import cell_options
    from .suite import build_dataset, build_encoder

    if force:
        return list(cells)
    fps: dict[tuple[str, str], Any] = {}

    def fingerprint(kind: str, name: str) -> Any:
        if (kind, name) not in fps:
            try:
                if fingerprint_of is not None:
                    fp = fingerprint_of(kind, name)
                else:
                    fp = (build_encoder(suite, name) if kind == "encoder" else build_dataset(suite, name)).fingerprint()
                fps[kind, name] = json.loads(json.dumps(fp, default=str))
            except Exception:  # the job reports it
                fps[kind, name] = None
        return fps[kind, name]

    out = []
    for enc_name, task in cells:
        existing = read_result(cell_path(suite.output, suite.name, enc_name, task.name))
        _, options_hash, _ = cell_options(suite, enc_name, task)
        done = (
            existing is not None
            and existing.get("options_hash") == options_hash
            and existing.get("status") in ("ok", "skipped")
        )
        if done:
            want = {"encoder": fingerprint("encoder", enc_name)}
            if task.dataset:
                want["dataset"] = fingerprint("dataset", task.dataset)
            if None not in want.values() and existing.get("fingerprints") != want:
                done = False
        if not done:
            out.append((enc_name, task))
    return out


def group_cells(cells: list[tuple[str, Any]], group_by: str) -> list[list[tuple[str, str]]]:
    """Jobs as lists of (encoder, task) names: one per encoder (in suite order) or one per cell."""
    if group_by == "cell":
        return [[(e, t.name)] for e, t in cells]
    jobs: dict[str, list[tuple[str, str]]] = {}
    for e, t in cells:
        jobs.setdefault(e, []).append((e, t.name))
    return list(jobs.values())


# ------------------------------------------------------------------------------ the job
def _job_id() -> str:
    try:
        import submitit

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not inside a submitit job (called directly)
        return os.environ.get("SLURM_JOB_ID") or f"pid{os.getpid()}"


def run_job(suite_path: str, cells: list[tuple[str, str]], *, force: bool = False, device: str | None = None,
            cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Run ``cells`` of the suite at ``suite_path`` (inside a job); their outcomes as dicts."""
    from rich.console import Console

    from .runner import Runner
    from .suite import load_suite

    suite = load_suite(suite_path)
    marker = suite.results_dir / JOBS_DIR / f"{_job_id()}.job"  # not *.json: never read as a result
    record = {"job_id": _job_id(), "host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
              "cells": [list(c) for c in cells]}
    atomic_write_text(marker, json.dumps(record))
    try:
        runner = Runner(suite, device=device, force=force, cache_dir=Path(cache_dir) if cache_dir else None,
                        console=Console(), progress=False)
        by_encoder: dict[str, list[str]] = {}
        for enc, task in cells:
            by_encoder.setdefault(enc, []).append(task)
        outcomes = []
        for enc, tasks in by_encoder.items():  # one runner: an encoder is set up once per job
            outcomes += runner.run([enc], tasks).cells
        return [{"encoder": c.encoder, "task": c.task, "status": c.status, "reason": c.reason} for c in outcomes]
    finally:
        try:
            marker.unlink()
        except OSError:
            pass


@dataclasses.dataclass
class Submitted:
    job_id: str
    cells: list[tuple[str, str]]
    job: Any = None
    error: str | None = None
    outcomes: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def submit(
    suite: Any,
    opts: LauncherOptions,
    *,
    only_encoders: list[str] | None = None,
    only_tasks: list[str] | None = None,
    force: bool = False,
    device: str | None = None,
    cache_dir: Path | None = None,
    wait: bool = False,
) -> list[Submitted]:
    """Submit the pending cells of ``suite`` as jobs (``opts.type``: local or slurm)."""
    from .runner import plan

    try:
        import submitit
    except ImportError:
        raise ClbenchError("--launcher local/slurm needs submitit: pip install 'clbench[slurm]'") from None
    if opts.type not in ("local", "slurm"):
        raise ClbenchError(f"submit: launcher type {opts.type!r} does not submit jobs")
    from .distributed import detect

    if detect() is not None:  # every rank would submit the same jobs
        raise ClbenchError(f"--launcher {opts.type} under torchrun: submit from one process, or use --launcher inline")
    todo = pending_cells(suite, plan(suite, only_encoders, only_tasks), force=force)
    groups = group_cells(todo, opts.group_by)
    if not groups:
        return []
    folder = Path(opts.logs).expanduser() if opts.logs else suite.results_dir / ".submitit"
    if not folder.is_absolute():
        folder = suite.root / folder
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=opts.type)
    except RuntimeError as err:  # e.g. no srun: not on a SLURM cluster
        raise ClbenchError(f"cannot submit {opts.type} jobs: {err}") from None
    params: dict[str, Any] = {"name": f"clbench-{suite.name}", "timeout_min": opts.time}
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.type == "slurm":
        params.update(cpus_per_task=opts.cpus_per_task, mem_gb=opts.mem_gb, slurm_partition=opts.partition,
                      slurm_array_parallelism=opts.array_parallelism)
        if opts.slurm:
            params["slurm_additional_parameters"] = dict(opts.slurm)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    suite_path = str(Path(suite.path).resolve())
    kw = {"force": force, "device": device, "cache_dir": str(cache_dir) if cache_dir else None}
    try:
        with executor.batch():
            jobs = [executor.submit(run_job, suite_path, cells, **kw) for cells in groups]
    except Exception as err:  # sbatch refused (bad partition, account...): its message, no traceback
        raise ClbenchError(f"{opts.type} submission failed: {str(err).strip()}") from None
    out = [Submitted(job_id=str(j.job_id), cells=cells, job=j) for j, cells in zip(jobs, groups)]
    if wait:
        for s in out:
            try:
                s.outcomes = s.job.result()
            except Exception as err:  # the job died: its finished cells are on disk, the others missing
                s.error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    return out


# ------------------------------------------------------------------------------ status
@dataclasses.dataclass
class CellState:
    encoder: str
    task: str
    state: str  # done | skipped | failed | running | stale | missing
    detail: str = ""


def _alive(host: str | None, pid: Any) -> bool | None:
    """Whether ``pid`` runs, when it is a process of this host; None for another host."""
    if host != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True



def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _who(rec: dict[str, Any], job: str | None = None) -> str:
    parts = [f"job {job}"] if job else []
    parts.append(f"{rec.get('host', '?')} pid {rec.get('pid', '?')}")
    return ", ".join(parts)


def cell_states(results_dir: Path, suite: Any = None) -> list[CellState]:
    """The state of every cell found under ``results_dir`` (results, locks, job markers), plus,
    with ``suite``, every cell it plans (``missing`` when nothing is known of it)."""
    results_dir = Path(results_dir)
    jobs = []
    for path in sorted((results_dir / JOBS_DIR).glob("*.job")):
        rec = _read_json(path)
        if rec is not None:
            jobs.append(rec)
    by_proc = {(j.get("host"), j.get("pid")): str(j.get("job_id")) for j in jobs}
    states: dict[tuple[str, str], CellState] = {}
    order: list[tuple[str, str]] = []
    if suite is not None:
        from .runner import plan

        order = [(e, t.name) for e, t in plan(suite)]
    for path in sorted(results_dir.glob("*/*.json")):
        if path.name.startswith("."):
            continue
        res = read_result(path)
        if res is None:
            continue
        key = (res["encoder"], res["task"])
        state = {"ok": "done", "skipped": "skipped", "failed": "failed"}.get(res["status"], res["status"])
        states[key] = CellState(*key, state, "" if state == "done" else (res.get("reason") or ""))
    # locks: .<task>.json.lock next to where the result goes
    for lock in sorted(results_dir.glob("*/.*.json.lock")):
        key = (lock.parent.name, lock.name[1 : -len(".json.lock")])
        rec = _read_json(lock) or {}
        alive = _alive(rec.get("host"), rec.get("pid"))
        job = by_proc.get((rec.get("host"), rec.get("pid")))
        if is_locked(lock) and alive is not False:
            states[key] = CellState(*key, "running", _who(rec, job))
        elif key not in states or states[key].state == "failed":
            states[key] = CellState(*key, "stale", f"lock left by {_who(rec, job)}, which no longer runs")
    # job markers: cells of a live job without a result yet are running (queued in the job);
    # a marker of a dead local process means that job died
    for rec in jobs:
        alive = _alive(rec.get("host"), rec.get("pid"))
        for cell in rec.get("cells") or []:
            if not (isinstance(cell, list) and len(cell) == 2 and all(isinstance(c, str) for c in cell)):
                continue
            key = (cell[0], cell[1])
            if key in states and states[key].state in ("done", "skipped", "running"):
                continue
            if alive is False:
                if key not in states:
                    states[key] = CellState(*key, "stale", f"{_who(rec, str(rec.get('job_id')))} no longer runs")
            elif key not in states or states[key].state == "failed":
                states[key] = CellState(*key, "running", f"queued in {_who(rec, str(rec.get('job_id')))}")
    for key in order:
        states.setdefault(key, CellState(*key, "missing"))
    rank = {k: i for i, k in enumerate(order)}
    return sorted(states.values(), key=lambda s: (rank.get((s.encoder, s.task), len(rank)), s.encoder, s.task))


__all__ = [
    "CellState",
    "LauncherOptions",
    "Submitted",
    "cell_states",
    "group_cells",
    "parse_slurm_options",
    "pending_cells",
    "resolve_launcher",
    "run_job",
    "submit",
]


def resolve_launcher(suite_options: LauncherOptions | None, **overrides: Any) -> LauncherOptions:
    """The suite's ``launcher:`` options with the command line's (non-None) values on top,
    validated as the suite key is (a ConfigError naming the ``--flag``)."""
    from .errors import ConfigError
    from .options import options_dict, parse_options

    base = options_dict(suite_options) if suite_options is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None and v != {}}
    if "slurm" in given:
        given["slurm"] = {**base.get("slurm", {}), **given["slurm"]}
    try:
        return parse_options(LauncherOptions, {**base, **given})
    except ConfigError as err:
        key, message = err.key, err.message
        head, sep, rest = message.partition(": ")
        if not key and sep and head in {f.name for f in dataclasses.fields(LauncherOptions)}:
            key, message = head, rest  # from validate(): "time: expected ..."
        flag = f"--{key.split('.')[0].replace('_', '-')}" if key else "launcher"
        flag = {"--type": "--launcher", "--slurm": "--slurm-option"}.get(flag, flag)
        raise ConfigError(message, key=flag) from None
