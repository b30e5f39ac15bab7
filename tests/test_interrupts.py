"""Interrupted and concurrent runs: never a half-written result or cache entry, and a clean resume.

``clbench run`` is started in a subprocess and killed (SIGINT, SIGKILL) at seeded random times.
Afterwards every result file present is a complete result, temporary files are never read as
results, every cache entry either loads (checksums verified) or is discarded, and a normal run
completes, leaving the finished cells untouched and computing only the missing ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _reliability import record

from clbench.features import FeatureCache
from clbench.results.store import STATUSES, load_results, read_result

SUITE = """
suite: intr
device: cpu
output: results
cache: cache
encoders:
  pixels: {type: identity}
  mock-a: {type: mock, dim: 64}
  mock-b: {type: mock, dim: 96}
datasets:
  syn-a: {type: synthetic, kind: vectors, n_train: 3000, n_test: 1000, num_classes: 8, dim: 128}
  syn-b: {type: synthetic, kind: vectors, n_train: 3000, n_test: 1000, num_classes: 8, dim: 96, seed: 1}
  syn-c: {type: synthetic, kind: vectors, n_train: 2000, n_test: 800, num_classes: 5, dim: 64, seed: 2}
tasks:
  - {name: a-knn, type: knn, dataset: syn-a, k: [5, 10]}
  - {name: b-knn, type: knn, dataset: syn-b, k: [10]}
  - {name: c-knn, type: knn, dataset: syn-c, k: [10]}
"""
CELLS = [(e, t) for e in ("pixels", "mock-a", "mock-b") for t in ("a-knn", "b-knn", "c-knn")]
REPO = Path(__file__).resolve().parents[1]


def _setup(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE))
    return path


def _start(suite: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "clbench", "run", str(suite), *extra],
        cwd=suite.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _result_file(folder: Path, enc: str, task: str) -> Path:
    return folder / "results" / "intr" / enc / f"{task}.json"


def _check_state(folder: Path) -> dict[tuple[str, str], float]:
    """Assert the invariants after an interruption; the (cell -> mtime) of complete results."""
    results_dir = folder / "results" / "intr"
    complete = {}
    if results_dir.exists():
        for path in results_dir.rglob("*"):
            if path.is_dir():
                continue
            if path.name.startswith("."):
                # a temporary file of a killed writer: never listed as a result
                continue
            if path.name.endswith(".samples.npz"):
                continue  # a per-sample sidecar: checked through its result below
            assert path.suffix == ".json", path
            data = read_result(path)
            assert data is not None, f"{path} is not a complete result: {path.read_text()[:200]!r}"
            json.loads(path.read_text())
            assert data["status"] in STATUSES, data["status"]
            assert (data["encoder"], data["task"]) == (path.parent.name, path.stem)
            complete[(data["encoder"], data["task"])] = path.stat().st_mtime_ns
            if data.get("samples"):  # written before the result: a complete result's sidecar is valid
                from clbench.stats import read_sidecar

                read_sidecar(path, data["samples"])
        results, bad = load_results(results_dir)
        assert not bad, bad
        assert len(results) == len(complete)
    cache = FeatureCache(folder / "cache")
    features = folder / "cache" / "features"
    if features.exists():
        for entry in features.glob("*/*"):
            if entry.name.startswith("."):
                continue  # temporary or trashed folder of a killed writer: never loaded by key
            loaded = cache.load(entry.name)
            if loaded is None:
                assert not entry.exists(), f"invalid cache entry {entry} was not discarded"
            else:
                x, _y, meta = loaded
                assert list(x.shape) == meta["shape"] and x.shape[0] > 0
    return complete


def _resume_and_check(suite: Path, before: dict) -> None:
    proc = _start(suite)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    statuses = {}
    for line in out.splitlines():
        parts = line.split()
        # progress lines: "<status> <encoder> × <task> ..."
        if len(parts) >= 4 and parts[2] == "×":
            statuses[(parts[1], parts[3])] = parts[0]
    assert set(statuses) == set(CELLS), out
    folder = suite.parent
    for cell in CELLS:
        path = _result_file(folder, *cell)
        data = read_result(path)
        assert data is not None and data["status"] == "ok", (cell, data)
        if cell in before:
            assert statuses[cell] == "up-to-date", (cell, out)
            assert path.stat().st_mtime_ns == before[cell], cell
        else:
            assert statuses[cell] == "ok", (cell, out)
    assert not [p for p in (folder / "results").rglob(".*")], "temporary files left after a clean run"


def _count_results(folder: Path) -> int:
    return sum(1 for c in CELLS if _result_file(folder, *c).exists())


def _kill_at_random_time(proc: subprocess.Popen, folder: Path, sig: int, rng: random.Random) -> str:
    """Send ``sig`` to ``proc`` early (start-up, extraction) or just after a new cell was written."""
    start, known = time.monotonic(), _count_results(folder)
    if rng.random() < 0.3:
        deadline = start + rng.uniform(0.5, 3.0)
    else:
        deadline = None
        while proc.poll() is None and time.monotonic() - start < 60:
            if _count_results(folder) > known:
                deadline = time.monotonic() + rng.uniform(0.0, 0.3)
                break
            time.sleep(0.02)
    while deadline is not None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_runs_leave_valid_state_and_resume(tmp_path, sig):
    """Three runs killed at seeded random times, each resuming the last; then a complete run."""
    rng = random.Random(1234 + int(sig))
    suite = _setup(tmp_path)
    before: dict = {}
    for _ in range(3):
        out = _kill_at_random_time(_start(suite), tmp_path, sig, rng)
        if sig == signal.SIGINT:
            # a clean interruption: no traceback, no temporary files left behind
            assert "Traceback" not in out, out
            leftovers = list(tmp_path.rglob(".*"))
            assert not leftovers, leftovers
        state = _check_state(tmp_path)
        for cell, mtime in before.items():  # the killed run resumed: finished cells untouched
            assert state.get(cell) == mtime, cell
        before = state
    _resume_and_check(suite, before)
    name = signal.Signals(sig).name
    record(f"{name} to `clbench run` at a seeded random time (start-up, extraction, fitting, writing)",
           "every result present complete and valid, invalid cache entries discarded, resume computes only "
           "the missing cells" + (", no traceback, no temporary file" if sig == signal.SIGINT else ""),
           injections=3, category="interrupt")


def test_two_concurrent_runs_agree(tmp_path):
    suite = _setup(tmp_path)
    procs = [_start(suite), _start(suite)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out
    for cell in CELLS:
        files = sorted(_result_file(tmp_path, *cell).parent.glob(f"*{cell[1]}*"))
        # the result and its per-sample sidecar, nothing else (no temporary or lock files)
        assert [f.name for f in files] == [f"{cell[1]}.json", f"{cell[1]}.samples.npz"], files
        data = read_result(files[0])
        assert data is not None and data["status"] == "ok", (cell, data)
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"
    state = _check_state(tmp_path)
    assert set(state) == set(CELLS)
    record("2 concurrent `clbench run` processes (interrupt suite)", "one valid result per cell, no temporary "
           "file", injections=2, category="concurrency")


# a run that SIGKILLs itself in the middle of writing a feature-cache entry (after x.npy is written)
KILL_IN_CACHE_WRITE = """
import os, signal, sys
from clbench import features
real = features._checksum
def checksum(path):
    if ".tmp-" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path)
features._checksum = checksum
from clbench.cli import main
sys.argv = ["clbench", "run", sys.argv[1], "--only-encoder", "mock-a", "--only-task", "a-knn"]
main()
"""


def test_cache_temp_folders_of_killed_runs_are_never_read_and_are_swept(tmp_path):
    import socket

    suite = _setup(tmp_path)
    (tmp_path / "kill.py").write_text(KILL_IN_CACHE_WRITE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(tmp_path / "kill.py"), str(suite)], cwd=tmp_path, env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    features = tmp_path / "cache" / "features"
    dead = list(features.glob("*/.tmp-*"))
    assert len(dead) == 1 and (dead[0] / "x.npy").exists()  # the killed writer's half-made entry
    key = dead[0].name[len(".tmp-"):].split(".")[0]
    cache = FeatureCache(tmp_path / "cache")
    assert not cache.entry(key).exists() and cache.load(key) is None  # never read as an entry
    host = socket.gethostname().replace(".", "_")
    # temporary folders that must survive: a live process of this host, another host, an odd name
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        keep = [
            dead[0].parent / f".tmp-{key}.{host}.{sleeper.pid}.live0000",
            dead[0].parent / f".tmp-{key}.otherhost.1.foreign0",
            dead[0].parent / f".tmp-{key}-not-ours",
        ]
        for k in keep:
            k.mkdir()
        out = subprocess.run([sys.executable, "-m", "clbench", "run", str(suite), "--only-encoder", "mock-a",
                              "--only-task", "a-knn"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not dead[0].exists()  # swept: its process is dead
        assert all(k.exists() for k in keep)
        assert cache.load(key) is not None  # the entry was computed afresh
        assert read_result(_result_file(tmp_path, "mock-a", "a-knn"))["status"] == "ok"
    finally:
        sleeper.stdin.close()
        sleeper.wait(timeout=30)
    record("SIGKILL in the middle of a feature-cache write", "half-written temporary entry never read; removed by "
           "the next run (only dead processes of this host), entry recomputed", category="interrupt")
