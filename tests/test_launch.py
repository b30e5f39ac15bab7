"""Cluster launch through submitit (local executor), job grouping, resubmission and `clbench status`."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clbench.cli import app
from clbench.errors import ConfigError
from clbench.launch import (
    LauncherOptions,
    cell_states,
    group_cells,
    parse_slurm_options,
    pending_cells,
    resolve_launcher,
    run_job,
)
from clbench.locks import FileLock, lock_path_for
from clbench.runner import plan
from clbench.suite import load_suite, parse_suite

REPO = Path(__file__).resolve().parents[1]

SUITE = """
suite: lt
device: cpu
output: out
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 8}
  broken: {type: mock, dim: 8, fail: true}
  texty: {type: mock, dim: 8, modalities: [text]}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 5}
tasks:
  - {name: knn, type: knn, dataset: syn, k: [5]}
  - {name: knn10, type: knn, dataset: syn, k: [10]}
"""


def _suite(tmp_path: Path, text: str = SUITE, extra: str = "") -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return p


BASE = {"suite": "s", "encoders": {"p": {"type": "identity"}}, "datasets": {"d": {"type": "synthetic"}},
        "tasks": [{"name": "t", "type": "knn", "dataset": "d"}]}


def _cells(states):
    return {(s.encoder, s.task): s for s in states}


# ------------------------------------------------------------------------------ suite key and options
def test_launcher_key_is_validated_strictly(tmp_path):
    spec = load_suite(_suite(tmp_path, extra="""
        launcher: {type: slurm, group_by: cell, partition: gpu, gpus_per_node: 1, time: 90,
                   array_parallelism: 4, slurm: {account: abc, exclusive: true}}
    """))
    assert spec.launcher == LauncherOptions(type="slurm", group_by="cell", partition="gpu", gpus_per_node=1,
                                            time=90, array_parallelism=4, slurm={"account": "abc", "exclusive": True})
    assert load_suite(_suite(tmp_path)).launcher is None
    base = BASE
    for bad, where in [
        ("slrum", "launcher: expected a mapping"),
        ({"type": "pbs"}, "launcher.type: expected one of"),
        ({"partiton": "gpu"}, "launcher.partiton: unknown option 'partiton'; did you mean 'partition'?"),
        ({"time": 0}, "launcher: time: expected a positive integer"),
        ({"gpus_per_node": "two"}, "launcher.gpus_per_node: expected an integer"),
        ({"slurm": {"bad key": 1}}, "invalid sbatch option name"),
        ({"slurm": {"x": [1]}}, "launcher.slurm.x"),
        ({1: 2}, "unknown option 1"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_suite({**base, "launcher": bad}, tmp_path / "s.yaml")
        assert where in str(err.value) and str(err.value).startswith(str(tmp_path / "s.yaml")), str(err.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
    max_leaves=8,
)
launcher_keys = st.sampled_from([f.name for f in dataclasses.fields(LauncherOptions)] + ["bogus", ""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values | st.dictionaries(launcher_keys, json_values, max_size=4))
def test_fuzzed_launcher_key_is_valid_or_a_config_error(tmp_path, value):
    base = BASE
    try:
        parse_suite({**base, "launcher": value}, tmp_path / "s.yaml")
    except ConfigError as err:
        assert str(err).startswith(str(tmp_path / "s.yaml") + ": launcher"), str(err)


def test_command_line_overrides_the_suite_launcher():
    suite = LauncherOptions(type="slurm", partition="cpu", slurm={"account": "a"})
    got = resolve_launcher(suite, type=None, partition="gpu", gpus_per_node=2, time=None,
                           slurm=parse_slurm_options(["qos=high", "--constraint=a100"]))
    assert (got.type, got.partition, got.gpus_per_node, got.time) == ("slurm", "gpu", 2, 240)
    assert got.slurm == {"account": "a", "qos": "high", "constraint": "a100"}
    assert resolve_launcher(None).type == "inline"
    with pytest.raises(ConfigError, match="--launcher: expected one of"):
        resolve_launcher(None, type="pbs")
    with pytest.raises(ConfigError, match="--time: expected a positive integer"):
        resolve_launcher(None, time=-5)
    with pytest.raises(Exception, match="expected key=value"):
        parse_slurm_options(["qos"])


def test_jobs_group_by_encoder_or_cell(tmp_path):
    spec = load_suite(_suite(tmp_path))
    cells = plan(spec)
    assert group_cells(cells, "encoder") == [
        [(e, "knn"), (e, "knn10")] for e in ("pixels", "mock", "broken", "texty")
    ]
    assert group_cells(cells, "cell") == [[(e, t.name)] for e, t in cells]


# ------------------------------------------------------------------------------ jobs, in process
def test_job_runs_only_its_cells_and_resubmission_only_what_is_missing(tmp_path):
    path = _suite(tmp_path)
    spec = load_suite(path)
    out = run_job(str(path), [("pixels", "knn"), ("pixels", "knn10"), ("broken", "knn")])
    assert {(o["encoder"], o["task"]): o["status"] for o in out} == {
        ("pixels", "knn"): "ok", ("pixels", "knn10"): "ok", ("broken", "knn"): "failed",
    }
    written = sorted(str(p.relative_to(spec.results_dir)) for p in spec.results_dir.glob("*/*.json"))
    assert written == ["broken/knn.json", "pixels/knn.json", "pixels/knn10.json"]
    assert not list((spec.results_dir / ".jobs").glob("*"))  # the job marker is gone
    pending = [(e, t.name) for e, t in pending_cells(spec, plan(spec))]
    assert pending == [("mock", "knn"), ("mock", "knn10"), ("broken", "knn"), ("broken", "knn10"),
                       ("texty", "knn"), ("texty", "knn10")]  # failed and missing, not the done ones
    assert len(pending_cells(spec, plan(spec), force=True)) == 8
    # a changed option makes a done cell pending again
    spec2 = load_suite(_suite(tmp_path, SUITE.replace("k: [10]", "k: [7]")))
    assert ("pixels", "knn10") in [(e, t.name) for e, t in pending_cells(spec2, plan(spec2))]


# ------------------------------------------------------------------------------ status
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_shows_every_state(tmp_path):
    path = _suite(tmp_path)
    spec = load_suite(path)
    run_job(str(path), [("pixels", "knn"), ("broken", "knn"), ("texty", "knn")])
    res = spec.results_dir
    host = socket.gethostname()
    # a cell being computed: its lock held by this process, which a job marker names
    (res / ".jobs").mkdir(parents=True, exist_ok=True)
    (res / ".jobs" / "4242.job").write_text(json.dumps(
        {"job_id": "4242", "host": host, "pid": os.getpid(), "cells": [["mock", "knn"], ["mock", "knn10"]]}))
    lock = FileLock(lock_path_for(res / "mock" / "knn.json")).acquire()
    # a lock left by a killed process, and the marker of a job that died
    dead = _dead_pid()
    stale_lock = lock_path_for(res / "pixels" / "knn10.json")
    stale_lock.write_text(json.dumps({"host": host, "pid": dead}))
    (res / ".jobs" / "77.job").write_text(json.dumps(
        {"job_id": "77", "host": host, "pid": dead, "cells": [["broken", "knn10"]]}))
    try:
        states = _cells(cell_states(res, spec))
        got = {k: s.state for k, s in states.items()}
        assert got == {
            ("pixels", "knn"): "done", ("pixels", "knn10"): "stale",
            ("mock", "knn"): "running", ("mock", "knn10"): "running",
            ("broken", "knn"): "failed", ("broken", "knn10"): "stale",
            ("texty", "knn"): "skipped", ("texty", "knn10"): "missing",
        }
        assert "job 4242" in states["mock", "knn"].detail and str(os.getpid()) in states["mock", "knn"].detail
        assert "queued in job 4242" in states["mock", "knn10"].detail
        assert "mock encoder asked to fail" in states["broken", "knn"].detail
        assert "job 77" in states["broken", "knn10"].detail
        r = CliRunner().invoke(app, ["status", str(res), "--suite", str(path)])
        assert r.exit_code == 0, r.output
        for word in ("done", "failed", "skipped", "running", "stale", "missing", "4242"):
            assert word in r.output
        # without the suite, cells nobody touched are unknown, the others are listed
        assert ("texty", "knn10") not in _cells(cell_states(res))
    finally:
        lock.release()
    assert _cells(cell_states(res, spec))["mock", "knn"].state == "running"  # still queued in live job 4242
    (res / ".jobs" / "4242.job").unlink()
    assert _cells(cell_states(res, spec))["mock", "knn"].state == "missing"


def test_status_never_imports_torch(tmp_path):
    path = _suite(tmp_path)
    run_job(str(path), [("pixels", "knn")])
    code = (
        "import sys; from typer.testing import CliRunner; from clbench.cli import app; "
        f"r = CliRunner().invoke(app, ['status', {str(tmp_path / 'out' / 'lt')!r}, '--suite', {str(path)!r}]); "
        "assert r.exit_code == 0, r.output; assert 'done' in r.output; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


# ------------------------------------------------------------------------------ submitit, local executor
@pytest.mark.slow
def test_local_launcher_writes_all_cells_and_resubmits_only_missing(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job processes import this checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = _suite(tmp_path, SUITE.replace("  texty: {type: mock, dim: 8, modalities: [text]}\n", ""))
    res = tmp_path / "out" / "lt"
    r = CliRunner().invoke(app, ["run", str(path), "--launcher", "local", "--time", "10"])
    assert r.exit_code == 1, r.output  # the broken encoder's cells failed...
    assert r.output.count("local job") == 3  # one job per encoder
    got = {k: s.state for k, s in _cells(cell_states(res)).items()}
    assert got == {("pixels", "knn"): "done", ("pixels", "knn10"): "done", ("mock", "knn"): "done",
                   ("mock", "knn10"): "done", ("broken", "knn"): "failed", ("broken", "knn10"): "failed"}
    assert not list((res / ".jobs").glob("*"))
    # ...and the others are intact; resubmitting runs only what is not done, one job per cell
    (res / "mock" / "knn10.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in res.glob("*/*.json")}
    r = CliRunner().invoke(app, ["run", str(path), "--launcher", "local", "--group-by", "cell", "--time", "10"])
    assert r.exit_code == 1, r.output
    jobs = [line for line in r.output.splitlines() if "local job" in line]
    assert sorted(line.split(": ", 1)[1] for line in jobs) == ["broken × knn", "broken × knn10", "mock × knn10"]
    assert (res / "mock" / "knn10.json").exists()
    for p in ("pixels/knn.json", "pixels/knn10.json", "mock/knn.json"):
        assert (res / p).stat().st_mtime_ns == before[res / p], p  # untouched
    # with the broken encoder left out, everything is up to date: nothing is submitted
    r = CliRunner().invoke(app, ["run", str(path), "--launcher", "local", "--only-encoder", "pixels",
                                 "--only-encoder", "mock"])
    assert r.exit_code == 0 and "nothing submitted" in r.output, r.output


def test_slurm_launcher_writes_the_sbatch_options(tmp_path, monkeypatch):
    """No cluster here: a stand-in `sbatch` keeps the script submitit generates."""
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun") is None:  # not a cluster: a clear error, no traceback
        r = CliRunner().invoke(app, ["run", str(_suite(tmp_path)), "--launcher", "slurm"])
        assert r.exit_code == 2 and "cannot submit slurm jobs" in r.output, r.output
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sbatch = bindir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit checks that it exists
    (bindir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    path = _suite(tmp_path, extra="""
        launcher: {type: slurm, partition: cpu, time: 30, slurm: {account: abc}}
    """)
    r = CliRunner().invoke(app, ["run", str(path), "--partition", "gpu", "--gpus-per-node", "1",
                                 "--array-parallelism", "2", "--slurm-option", "qos=high"])
    assert r.exit_code == 0, r.output
    assert r.output.count("slurm job 4242_") == 4  # an array of one job per encoder
    assert "clbench status" in r.output  # not waited for
    script = (tmp_path / "submitted.sh").read_text()
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--time=30", "--array=0-3%2", "--account=abc",
                 "--qos=high", "--job-name=clbench-lt"):
        assert f"#SBATCH {flag}" in script, (flag, script)
    assert not list((tmp_path / "out" / "lt").glob("*/*.json"))  # nothing ran here
