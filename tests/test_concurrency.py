"""Concurrent runs on the same output and cache folders: each cell and each feature entry is
computed exactly once, every run ends with every cell done, no corrupt or leftover file.

End to end: two ``clbench run`` processes, instrumented to log every cell computation and every
feature extraction (pid, cell / cache key) to a shared append-only file. Deterministic: a helper
process holds a cell or feature lock while an in-process run meets it (live holder: the cell is
put off and waited for; killed holder: the lock is taken over at once).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _reliability import record

from clbench.features import FeatureCache, FeatureStore, extract
from clbench.locks import FileLock, LockBusy, lock_path_for, read_holder
from clbench.results.store import cell_path, load_results, read_result
from clbench.runner import Runner
from clbench.suite import build_dataset, build_encoder, load_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = """
suite: conc
device: cpu
output: results
cache: cache
encoders:
  pixels: {type: identity}
  mock-a: {type: mock, dim: 32, num_workers: 0}
  mock-b: {type: mock, dim: 48, num_workers: 0}
datasets:
  syn-a: {type: synthetic, kind: vectors, n_train: 1200, n_test: 400, num_classes: 6, dim: 64}
  syn-b: {type: synthetic, kind: vectors, n_train: 1000, n_test: 300, num_classes: 4, dim: 40, seed: 3}
tasks:
  - {name: a-knn5, type: knn, dataset: syn-a, k: [5]}
  - {name: a-knn10, type: knn, dataset: syn-a, k: [10]}
  - {name: b-knn, type: knn, dataset: syn-b, k: [10]}
"""
CELLS = [(e, t) for e in ("pixels", "mock-a", "mock-b") for t in ("a-knn5", "a-knn10", "b-knn")]

# runs `clbench run` with every cell computation and feature extraction logged (and the mock
# encoder slowed down, so that the two runs overlap)
DRIVER = """
import os, sys, time
from clbench import features, runner
from clbench.encoders import mock

LOG = os.environ["CONC_LOG"]

def log(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")

compute = runner.Runner._compute_cell
def logged_compute(self, enc_name, task, *args, **kwargs):
    log(f"cell {os.getpid()} {enc_name} {task.name}")
    return compute(self, enc_name, task, *args, **kwargs)
runner.Runner._compute_cell = logged_compute

extract_ = features.FeatureStore._extract
def logged_extract(self, encoder, dataset, split_name, key, *args, **kwargs):
    log(f"extract {os.getpid()} {key}")
    return extract_(self, encoder, dataset, split_name, key, *args, **kwargs)
features.FeatureStore._extract = logged_extract

encode = mock.MockEncoder.encode
def slow_encode(self, *args, **kwargs):
    time.sleep(0.03)
    return encode(self, *args, **kwargs)
mock.MockEncoder.encode = slow_encode

from clbench.cli import main
sys.argv = ["clbench", "run", sys.argv[1]]
main()
"""


def _setup(folder: Path) -> Path:
    suite = folder / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    (folder / "driver.py").write_text(DRIVER)
    return suite


def _start(suite: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", PYTHONUNBUFFERED="1", CONC_LOG=str(log))
    return subprocess.Popen(
        [sys.executable, str(suite.parent / "driver.py"), str(suite)], cwd=suite.parent, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _statuses(out: str) -> dict[tuple[str, str], list[str]]:
    seen: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "×":
            seen[(parts[1], parts[3])].append(parts[0])
    return seen


@pytest.mark.parametrize("runs", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_concurrent_runs_compute_each_cell_and_feature_once(tmp_path, runs):
    suite = _setup(tmp_path)
    log = tmp_path / "calls.log"
    procs = [_start(suite, log) for _ in range(runs)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out, out

    lines = [line.split() for line in log.read_text().splitlines()]
    cells = collections.Counter((enc, task) for kind, _pid, enc, task in (x for x in lines if x[0] == "cell"))
    assert set(cells) == set(CELLS)
    assert all(n == 1 for n in cells.values()), cells  # every cell computed exactly once
    keys = collections.Counter(x[2] for x in lines if x[0] == "extract")
    assert keys and all(n == 1 for n in keys.values()), keys  # every feature entry extracted once
    # 2 datasets x 2 splits x 3 encoders: each (encoder, dataset, split) once, though 2 tasks share syn-a
    assert len(keys) == 12

    computed_by = {(x[2], x[3]): int(x[1]) for x in lines if x[0] == "cell"}
    for p, out in zip(procs, outs):
        final = {cell: st[-1] for cell, st in _statuses(out).items()}
        assert set(final) == set(CELLS), out  # every run ends with every cell done
        for cell, status in final.items():
            assert status == ("ok" if computed_by[cell] == p.pid else "up-to-date"), (cell, status, out)

    results, bad = load_results(tmp_path / "results" / "conc")
    assert not bad and len(results) == len(CELLS)
    assert all(r["status"] == "ok" for r in results)
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert not leftovers, leftovers  # no lock, temporary or trash file left
    waited = sum(st.count("waiting") for out in outs for st in _statuses(out).values())
    record(f"{runs} `clbench run` processes on the same output and cache folders", "each of 9 cells computed "
           "once, each of 12 feature entries extracted once, all runs end with all cells done, no leftover "
           f"file ({waited} cell(s) met locked and waited for)", injections=runs, category="concurrency")


# ------------------------------------------------------------------ deterministic lock holders

HOLDER = (
    "import sys; from clbench.locks import FileLock; lock = FileLock(sys.argv[1]).acquire(blocking=False); "
    "print('held', flush=True); sys.stdin.read(); "
    "open(sys.argv[2], 'wb').write(open(sys.argv[3], 'rb').read()) if len(sys.argv) > 3 else None"
)


def _hold(lock_file: Path, *copy: Path) -> subprocess.Popen:
    """A process holding ``lock_file`` until its stdin closes (then, optionally, copying a file)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file), *map(str, copy)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


class _Console:
    """Collects printed lines; calls ``on_line`` for each."""

    is_terminal = False

    def __init__(self, on_line=None):
        self.lines: list[str] = []
        self.on_line = on_line

    def print(self, msg, **_kw):
        self.lines.append(str(msg))
        if self.on_line is not None:
            self.on_line(str(msg))


def _counting(monkeypatch) -> list[tuple[str, str]]:
    computed: list[tuple[str, str]] = []
    original = Runner._compute_cell

    def compute(self, enc_name, task, *args, **kwargs):
        computed.append((enc_name, task.name))
        return original(self, enc_name, task, *args, **kwargs)

    monkeypatch.setattr(Runner, "_compute_cell", compute)
    return computed


def _small_suite(folder: Path) -> Path:
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent("""
        suite: s
        device: cpu
        output: results
        cache: cache
        encoders:
          mock: {type: mock, dim: 8, num_workers: 0}
        datasets:
          syn: {type: synthetic, kind: vectors, n_train: 90, n_test: 30, num_classes: 3, dim: 6}
        tasks:
          - {name: k1, type: knn, dataset: syn, k: [5]}
          - {name: k2, type: knn, dataset: syn, k: [10]}
    """))
    return path


@pytest.mark.parametrize("holder_writes", [False, True], ids=["holder-dies-without-result", "holder-writes"])
def test_cell_locked_by_live_process_is_waited_for(tmp_path, monkeypatch, holder_writes):
    suite_path = _small_suite(tmp_path)
    suite = load_suite(suite_path)
    target = cell_path(suite.output, suite.name, "mock", "k1")
    copy: tuple[Path, ...] = ()
    if holder_writes:  # the holder "computes" k1: a valid result made by a run in another folder
        other = tmp_path / "other"
        other.mkdir()
        other_suite = load_suite(_small_suite(other))
        Runner(other_suite, console=_Console()).run(only_tasks=["k1"])
        made = cell_path(other_suite.output, other_suite.name, "mock", "k1")
        # same options and fingerprints: only the suite file path (provenance) differs
        copy = (target, made)
        target.parent.mkdir(parents=True, exist_ok=True)
    holder = _hold(lock_path_for(target), *copy)
    try:
        assert read_holder(lock_path_for(target))["pid"] == holder.pid

        def on_line(line):
            if "waiting" in line:  # the run met the lock: let the holder finish
                holder.stdin.close()

        computed = _counting(monkeypatch)
        console = _Console(on_line)
        summary = Runner(suite, console=console).run()
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)
    waiting = [line for line in console.lines if "waiting" in line]
    assert len(waiting) == 1 and "mock × k1" in waiting[0] and "running elsewhere" in waiting[0]
    assert f"pid {holder.pid}" in waiting[0]
    outcome = {c.task: c.status for c in summary.cells}
    assert outcome == {"k1": "up-to-date" if holder_writes else "ok", "k2": "ok"}
    assert computed == ([("mock", "k2")] if holder_writes else [("mock", "k2"), ("mock", "k1")])
    assert read_result(target)["status"] == "ok"
    assert not lock_path_for(target).exists()
    record("cell lock held by a live process (" + ("it writes the result" if holder_writes else
           "it exits without a result") + ")",
           "cell reported 'running elsewhere', waited for at the end, then " +
           ("read, not recomputed" if holder_writes else "computed by this run"), category="concurrency")


def test_lock_of_killed_process_is_taken_over(tmp_path, monkeypatch):
    suite_path = _small_suite(tmp_path)
    suite = load_suite(suite_path)
    target = cell_path(suite.output, suite.name, "mock", "k1")
    holder = _hold(lock_path_for(target))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock_path_for(target).exists()  # the file stays; its flock went with the process
    assert read_holder(lock_path_for(target))["pid"] == holder.pid
    computed = _counting(monkeypatch)
    console = _Console()
    summary = Runner(suite, console=console).run()
    assert [c.status for c in summary.cells] == ["ok", "ok"]
    assert not [line for line in console.lines if "waiting" in line]
    assert sorted(computed) == [("mock", "k1"), ("mock", "k2")]
    assert not lock_path_for(target).exists()
    record("cell lock file left by a SIGKILLed process", "taken over at once, cell computed, lock file removed",
           category="concurrency")


def test_stale_lock_file_of_an_up_to_date_cell_is_removed(tmp_path):
    suite = load_suite(_small_suite(tmp_path))
    Runner(suite, console=_Console()).run()
    target = cell_path(suite.output, suite.name, "mock", "k1")
    holder = _hold(lock_path_for(target))  # killed after writing its result, before releasing
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    mtime = target.stat().st_mtime_ns
    summary = Runner(suite, console=_Console()).run()
    assert [c.status for c in summary.cells] == ["up-to-date", "up-to-date"]
    assert target.stat().st_mtime_ns == mtime and not lock_path_for(target).exists()


def test_feature_entry_locked_by_another_process_is_waited_for_then_read(tmp_path):
    suite = load_suite(_small_suite(tmp_path))
    encoder, dataset = build_encoder(suite, "mock"), build_dataset(suite, "syn")
    cache = FeatureCache(tmp_path / "cache")
    warnings: list[str] = []
    store = FeatureStore(cache, warn=warnings.append)
    key = cache.key(store.fingerprint(encoder), store.fingerprint(dataset), "train")
    split = dataset.split("train")
    encoder.setup("cpu")
    x = extract(encoder, split)  # what the other process is computing
    holder = _hold(cache.lock(key).path)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=store.get(encoder, dataset, "train")))
    thread.start()
    try:
        for _ in range(600):
            if warnings:
                break
            thread.join(0.05)
        assert warnings and "waiting for features being extracted" in warnings[0]
        assert f"pid {holder.pid}" in warnings[0]
        assert thread.is_alive()  # blocked on the lock
        cache.store(key, x, split.labels, {"encoder": {}, "dataset": {}, "split": "train"})  # the other one's
        holder.stdin.close()
        holder.wait(timeout=30)
        thread.join(60)
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
    assert not thread.is_alive()
    got, _y, info = result["out"]
    assert info["cached"] is True  # read what the other process stored, no forward pass here
    np.testing.assert_array_equal(got, x)
    assert not cache.lock(key).path.exists()
    record("feature-cache entry being extracted by another process", "waited for, then read from the cache "
           "(no second extraction)", category="concurrency")


def test_file_lock_basics(tmp_path):
    path = tmp_path / "sub" / ".x.lock"
    a = FileLock(path).acquire(blocking=False)
    assert read_holder(path)["pid"] == os.getpid()
    with pytest.raises(LockBusy) as info:
        FileLock(path).acquire(blocking=False)  # a second open file description: refused
    assert info.value.holder["pid"] == os.getpid() and "locked by" in str(info.value)
    with pytest.raises(LockBusy):
        FileLock(path, poll=0.01).acquire(timeout=0.05)
    a.release()
    assert not path.exists()
    with FileLock(path) as b:
        assert b.held
    assert not path.exists()
