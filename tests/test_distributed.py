"""torchrun runs: sharded extraction, gather in dataset order, one writer, exact sharded top-k."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from clbench.distributed import (
    DistInfo,
    detect,
    merge_topk,
    reassemble,
    shard_bounds,
    sharded_topk,
)
from clbench.errors import ClbenchError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("align", [1, 3, 64])
def test_shards_cover_every_row_exactly_once(world, align):
    for n in [0, 1, 2, 5, 7, 63, 64, 65, 100, 1257]:
        bounds = [shard_bounds(n, world, r, align=align) for r in range(world)]
        rows = np.concatenate([np.arange(a, b) for a, b in bounds])
        assert rows.tolist() == list(range(n)), (n, world, align, bounds)  # in order, no gap, no repeat
        assert all(a % align == 0 for a, _ in bounds if a < n)  # whole batches
        sizes = [-(-(b - a) // align) for a, b in bounds]  # blocks per rank
        assert max(sizes) - min(sizes) <= 1, bounds


def test_shard_bounds_rejects_nonsense():
    for args in [(-1, 2, 0), (5, 0, 0), (5, 2, 2), (5, 2, -1)]:
        with pytest.raises(ValueError):
            shard_bounds(*args)


def test_reassemble_checks_coverage():
    parts = [np.arange(4)[:, None], np.arange(4, 7)[:, None]]
    assert reassemble(parts, [(0, 4), (4, 7)], 7)[:, 0].tolist() == list(range(7))
    with pytest.raises(ValueError, match="gap or overlap"):
        reassemble(parts, [(0, 4), (5, 8)], 8)
    with pytest.raises(ValueError, match="rows for"):
        reassemble(parts, [(0, 3), (3, 7)], 7)
    with pytest.raises(ValueError, match="cover 7 of 8"):
        reassemble(parts, [(0, 4), (4, 7)], 8)


def test_detect_reads_torchrun_environment():
    assert detect({}) is None
    assert detect({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: a plain run
    assert detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(1, 4, 1)
    assert not DistInfo(1, 4, 1).is_main and DistInfo(0, 4, 0).is_main
    with pytest.raises(ClbenchError, match="not integers"):
        detect({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ClbenchError, match="outside"):
        detect({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_merge_topk_equals_unsharded_topk(shards):
    rng = np.random.default_rng(shards)
    scores = rng.normal(size=(9, 103)).astype(np.float32)
    k = 12
    ref_v, ref_i = torch.from_numpy(scores).topk(k, dim=1)
    vals, idxs = [], []
    for a, b in [shard_bounds(103, shards, r) for r in range(shards)]:
        v, i = torch.from_numpy(scores[:, a:b]).topk(min(k, b - a), dim=1)
        vals.append(v.numpy())
        idxs.append((i + a).numpy())
    v, i = merge_topk(vals, idxs, k)
    assert isinstance(v, np.ndarray)
    np.testing.assert_array_equal(i, ref_i.numpy())
    np.testing.assert_array_equal(v, ref_v.numpy())


def test_merge_topk_breaks_ties_by_lower_index():
    v, i = merge_topk([torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 1.0]])],
                      [torch.tensor([[9, 2]]), torch.tensor([[4, 1]])], 3)
    assert i.tolist() == [[1, 4, 9]] and v.tolist() == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="exceeds"):
        merge_topk([np.zeros((1, 2))], [np.zeros((1, 2), dtype=np.int64)], 3)


def test_sharded_topk_over_a_bank_in_pieces():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    ref_v, ref_i = (torch.from_numpy(q) @ torch.from_numpy(bank).T).topk(20, dim=1)
    v, i = sharded_topk(q, bank, 20, shard_rows=97)
    np.testing.assert_array_equal(i.numpy(), ref_i.numpy())
    np.testing.assert_allclose(v.numpy(), ref_v.numpy(), rtol=1e-6, atol=1e-6)
    # fp16 storage, fp32 accumulation: the same neighbours up to fp16 rounding of the bank
    v16, _ = sharded_topk(q, bank, 20, shard_rows=97, bank_dtype="fp16")
    np.testing.assert_allclose(v16.numpy(), ref_v.numpy(), atol=2e-2)


# ------------------------------------------------------------------------------ gloo, 2 processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from clbench import features
    from clbench.datasets.base import Split
    from clbench.distributed import extract_sharded, start
    from clbench.encoders.identity import IdentityEncoder, IdentityOptions

    group, device = start("cpu")
    n = 23  # neither a multiple of the world size nor of the batch size
    items = [np.full(3, i, dtype=np.float32) for i in range(n)]
    split = Split(items=items, modality="array", labels=np.arange(n))
    enc = IdentityEncoder(IdentityOptions(batch_size=5), name="pixels")
    before = features.STATS["samples_encoded"]
    x, info = extract_sharded(group, enc, split)
    encoded = features.STATS["samples_encoded"] - before
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"x": x[:, 0].tolist(), "encoded": encoded, "shards": info["shards"], "device": device}, f)
    group.close()


def test_gloo_gather_reassembles_every_sample_once(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["x"] == list(range(23))  # all ranks hold the whole split, in dataset order
        assert r["shards"] == [[0, 15], [15, 23]]  # whole batches of 5: 3 + 2 batches
    assert [r["encoded"] for r in ranks] == [15, 8]  # each sample encoded by exactly one rank


FAST_SUITE = """
suite: fast
device: cpu
output: out
cache: cache
encoders:
  pixels: {type: identity, batch_size: 16}
  mock: {type: mock, dim: 8, batch_size: 7}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 101, n_test: 37, num_classes: 3, dim: 5}
tasks:
  - {name: knn, type: knn, dataset: syn, k: [5, 10]}
  - {name: linear, type: linear_probe, dataset: syn, c_min: 0.1, c_max: 10, encoders: [mock]}
"""


def _runner_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from clbench import features
    from clbench.runner import Runner
    from clbench.suite import load_suite

    runner = Runner(load_suite(Path(folder) / "suite.yaml"), console=None)
    summary = runner.run()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({"cells": [[c.encoder, c.task, c.status] for c in summary.cells],
                   "encoded": features.STATS["samples_encoded"]}, f)
    runner.dist.close()


def test_ranks_share_extraction_and_rank0_alone_writes(tmp_path):
    import torch.multiprocessing as mp

    from clbench.api import run_suite

    single, multi = tmp_path / "single", tmp_path / "multi"
    for d in (single, multi):
        d.mkdir()
        (d / "suite.yaml").write_text(textwrap.dedent(FAST_SUITE))
    run_suite(single / "suite.yaml")
    mp.spawn(_runner_worker, args=(2, _free_port(), str(multi)), nprocs=2, join=True)
    ranks = [json.loads((multi / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["cells"] == ranks[1]["cells"]  # every rank returns rank 0's outcomes
    assert sorted(map(tuple, ranks[0]["cells"])) == [("mock", "knn", "ok"), ("mock", "linear", "ok"),
                                                     ("pixels", "knn", "ok")]
    # 2 encoders x (101 + 37) samples, each encoded once, by one of the ranks
    assert ranks[0]["encoded"] + ranks[1]["encoded"] == 2 * 138 and ranks[1]["encoded"] > 0
    a, b = _entries(single), _entries(multi)
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        np.testing.assert_array_equal(np.load(a[key] / "x.npy"), np.load(b[key] / "x.npy"))
    for enc, task in [("pixels", "knn"), ("mock", "knn"), ("mock", "linear")]:
        ra, rb = (json.loads((d / "out" / "fast" / enc / f"{task}.json").read_text()) for d in (single, multi))
        assert ra["metrics"] == rb["metrics"]
    assert not [p for p in (multi / "out").rglob(".*")]  # no temporary or lock files left


# ------------------------------------------------------------------------------ torchrun end to end
SUITE = """
suite: dist
device: cpu
output: out
cache: cache
encoders:
  pixels: {type: identity, batch_size: 100}
  r18: {type: timm, model: resnet18, pretrained: false, image_size: 32, batch_size: 64, num_workers: 0}
datasets:
  digits: {type: sklearn-digits, test_fraction: 0.3}
tasks:
  - {name: knn, type: knn, dataset: digits, k: [10, 20]}
  - {name: linear, type: linear_probe, dataset: digits, c_min: 0.01, c_max: 100}
"""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CLBENCH_CACHE_DIR", None)
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _entries(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((root / "cache" / "features").glob("*/*")) if not p.name.startswith(".")}


@pytest.mark.slow
def test_torchrun_two_ranks_match_a_single_process_run(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    for d in (single, multi):
        d.mkdir()
        (d / "suite.yaml").write_text(textwrap.dedent(SUITE))
    _run([sys.executable, "-m", "clbench", "run", "suite.yaml"], single)
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                 "-m", "clbench", "run", "suite.yaml"], multi)
    assert proc.stdout.count("clbench suite dist") == 1  # only rank 0 prints

    # the same cache entries, with bitwise-identical features and labels
    a, b = _entries(single), _entries(multi)
    assert sorted(a) == sorted(b) and len(a) == 4
    for key in a:
        for name in ("x.npy", "y.npy"):
            np.testing.assert_array_equal(np.load(a[key] / name), np.load(b[key] / name))
        meta = json.loads((b[key] / "meta.json").read_text())
        shards = meta["encoder_info"]["distributed"]["shards"]
        n = meta["shape"][0]
        assert shards[0][0] == 0 and shards[0][1] == shards[1][0] and shards[1][1] == n  # each sample once
    # identical metrics; one result file per cell and nothing else (no temporary or lock files left)
    listing = {d: sorted(p.relative_to(d / "out") for p in (d / "out").rglob("*") if p.is_file()) for d in (single, multi)}
    assert listing[multi] == listing[single]  # the same result files and sidecars
    assert not [p for p in listing[multi] if p.name.startswith(".")]
    files = [p for p in listing[multi] if p.suffix == ".json"]
    assert [str(p) for p in files] == [f"dist/{e}/{t}.json" for e in ("pixels", "r18") for t in ("knn", "linear")]
    for p in files:
        ra, rb = (json.loads((d / "out" / p).read_text()) for d in (single, multi))
        assert rb["status"] == "ok" and ra["metrics"] == rb["metrics"], p
        assert rb["host"]["node"] == ra["host"]["node"]
    # a second torchrun run finds everything done: no extraction, nothing rewritten
    before = {p: (multi / "out" / p).stat().st_mtime_ns for p in files}
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                 "-m", "clbench", "run", "suite.yaml"], multi)
    assert proc.stdout.count("up-to-date") >= 4
    assert before == {p: (multi / "out" / p).stat().st_mtime_ns for p in files}
