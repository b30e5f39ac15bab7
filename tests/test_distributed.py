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


def _tied_bank(n: int = 103, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bank with exact duplicates on both sides of every shard boundary (ties in similarity)
    and integer-valued rows (many equal dot products), and queries equal to bank rows."""
    rng = np.random.default_rng(seed)
    bank = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    for src, dst in [(3, 50), (3, 51), (3, 102), (10, 34), (10, 35), (60, 68), (60, 69), (0, 67)]:
        bank[dst] = bank[src]
    bank[bank.sum(axis=1) == 0, 0] = 1.0  # no zero rows
    queries = np.concatenate([bank[[3, 10, 60, 0]], rng.integers(-2, 3, size=(9, d)).astype(np.float32)])
    return bank, queries


@pytest.mark.parametrize("shards", [2, 3, 4, 7])
@pytest.mark.parametrize("precision", ["fp32", "bf16-prefilter"])
def test_shard_neighbours_with_offsets_merge_to_the_unsharded_neighbours(shards, precision):
    from clbench.metrics.knn import knn_neighbours

    bank, queries = _tied_bank()
    k = 20  # above the rows of the smaller shards (7 shards of 103 rows: 15 or 14 each)
    ref_s, ref_i = knn_neighbours(bank, queries, k, precision="fp32")
    # the test is only worth something if exact ties straddle shard boundaries among the top k
    bounds = [shard_bounds(len(bank), shards, r) for r in range(shards)]
    owner = np.searchsorted([b for _, b in bounds], ref_i, side="right")
    tie = (ref_s[:, 1:] == ref_s[:, :-1]) & (owner[:, 1:] != owner[:, :-1])
    assert tie.any()
    assert min(b - a for a, b in bounds) < k or shards < 7
    vals, idxs = [], []
    for a, b in bounds:
        s, i = knn_neighbours(bank[a:b], queries, min(k, b - a), precision=precision, chunk_size=5, offset=a)
        assert ((i >= a) & (i < b)).all()  # global indices of this shard
        vals.append(s)
        idxs.append(i)
    got_s, got_i = merge_topk(vals, idxs, k)
    np.testing.assert_array_equal(got_i, ref_i)  # same neighbours, ties to the lower global index
    np.testing.assert_array_equal(got_s.view(np.int32), ref_s.view(np.int32))  # bit for bit
    # against an independent float64 cosine: the true top k (up to float32 rounding), in the rule's order
    b64, q64 = bank.astype(np.float64), queries.astype(np.float64)
    cos = (q64 / np.linalg.norm(q64, axis=1, keepdims=True)) @ (b64 / np.linalg.norm(b64, axis=1, keepdims=True)).T
    for row in range(len(queries)):
        np.testing.assert_allclose(got_s[row], cos[row, got_i[row]], atol=1e-6)
        rest = np.setdiff1d(np.arange(len(bank)), got_i[row])
        assert cos[row, rest].max() <= cos[row, got_i[row]].min() + 1e-6
        assert (np.diff(got_s[row]) <= 0).all()
        assert (np.diff(got_i[row])[got_s[row, 1:] == got_s[row, :-1]] > 0).all()  # ties: lower index first


def test_votes_from_given_neighbours_equal_knn_predict():
    from clbench.metrics.knn import knn_neighbours, knn_predict, knn_predict_from_neighbours

    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, size=500)
    x = (rng.normal(size=(500, 12)) + 2 * np.eye(7, 12)[y]).astype(np.float32)
    for chunk in (None, 9):
        ref = knn_predict(x[:400], y[:400], x[400:], ks=[1, 5, 50], temperature=0.05, num_classes=7, chunk_size=chunk)
        s, i = knn_neighbours(x[:400], x[400:], 50, chunk_size=chunk)
        got = knn_predict_from_neighbours(s, i, y[:400], ks=[1, 5, 50], temperature=0.05, num_classes=7,
                                          chunk_size=chunk)
        assert sorted(got) == [1, 5, 50]
        for k in got:
            np.testing.assert_array_equal(got[k], ref[k])
    with pytest.raises(ValueError, match="neighbours given"):
        knn_predict_from_neighbours(s[:, :4], i[:, :4], y[:400], ks=[5])
    with pytest.raises(ValueError, match="must lie in"):
        knn_predict_from_neighbours(s, i + 400, y[:400], ks=[5])


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
    torch.set_num_threads(1)  # as the reference run (_single_process_run)
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

    single, multi = tmp_path / "single", tmp_path / "multi"
    for d in (single, multi):
        d.mkdir()
        (d / "suite.yaml").write_text(textwrap.dedent(FAST_SUITE))
    _single_process_run(single / "suite.yaml")
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


def _sharded_knn_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from clbench.distributed import CellGroup, knn_neighbours_on_ranks, start

    group, _ = start("cpu")
    cell = CellGroup(group)
    bank, queries = _tied_bank()
    results = {}
    for k in (1, 20, 35, 103):  # 35 > the smaller shards (3 ranks: 35, 34, 34 rows), 103: the whole bank
        stats: dict = {}
        got = knn_neighbours_on_ranks(cell, bank, queries, k, chunk_size=4, precision="bf16-prefilter", stats=stats)
        results[k] = None if got is None else (got[0].tolist(), got[1].tolist(), stats["shards"])
    try:  # a failure on one rank is raised on every rank, none left waiting
        knn_neighbours_on_ranks(cell, bank if rank else bank[:, :3], queries, 5)
        results["error"] = None
    except Exception as err:
        results["error"] = type(err).__name__
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    group.close()


def test_knn_neighbours_on_three_ranks_are_the_single_process_neighbours(tmp_path):
    import torch.multiprocessing as mp

    from clbench.metrics.knn import knn_neighbours

    mp.spawn(_sharded_knn_worker, args=(3, _free_port(), str(tmp_path)), nprocs=3, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    bank, queries = _tied_bank()
    for k in (1, 20, 35, 103):
        ref_s, ref_i = knn_neighbours(bank, queries, k, precision="fp32")
        sims, idx, shards = ranks[0][str(k)]
        assert shards == [[0, 35], [35, 69], [69, 103]]
        np.testing.assert_array_equal(np.array(idx), ref_i)
        np.testing.assert_array_equal(np.array(sims, dtype=np.float32).view(np.int32), ref_s.view(np.int32))
        assert ranks[1][str(k)] is None and ranks[2][str(k)] is None  # only rank 0 holds the merged lists
    # rank 0's features are 3 wide, the others' 6: each rank raises (rank 0 its own ValueError)
    assert ranks[0]["error"] == "ValueError" and ranks[1]["error"] == ranks[2]["error"] == "CellAbandoned"


DIGITS_SUITE = """
suite: digits
device: cpu
output: out
cache: cache
encoders:
  pixels: {type: identity, batch_size: 64, num_workers: 0}
  mock: {type: mock, dim: 8, batch_size: 50, num_workers: 0}
datasets:
  digits: {type: sklearn-digits, test_fraction: 0.3}
tasks:
  - {name: knn, type: knn, dataset: digits, k: [1, 10, 20, 200]}
  - {name: knn-fp32, type: knn, dataset: digits, k: [7], precision: fp32, chunk_size: 13, encoders: [pixels]}
  - {name: linear, type: linear_probe, dataset: digits, c_min: 0.1, c_max: 10, steps_per_decade: 1, max_iter: 50,
     encoders: [pixels]}
  - {name: knn-too-big, type: knn, dataset: digits, k: [5000], encoders: [pixels]}
"""



def _single_process_run(suite_file):
    """The reference run, with the ranks' thread count (1): float32 reductions (the probe's
    L-BFGS) depend on how many threads split them, not on the process group."""
    from clbench.api import run_suite

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_suite(suite_file)
    finally:
        torch.set_num_threads(threads)

def _digits_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from clbench import distributed
    from clbench.runner import Runner
    from clbench.suite import load_suite

    shards = []  # the shard of the bank this rank searched, per collective cell
    original = distributed.knn_neighbours_on_ranks

    def spy(cell, train_x, test_x, k, **kw):
        shards.append([int(train_x.shape[0]), cell.rank, k])
        return original(cell, train_x, test_x, k, **kw)

    distributed.knn_neighbours_on_ranks = spy
    runner = Runner(load_suite(Path(folder) / "suite.yaml"), console=None)
    summary = runner.run()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({"cells": [[c.encoder, c.task, c.status] for c in summary.cells], "searched": shards}, f)
    # the merged neighbours of the pixel features, from the cache the run filled
    enc, ds = runner.encoder("pixels"), runner.dataset("digits")
    (x_train, y_train, _), (x_test, _, _) = (runner.store.get(enc, ds, split) for split in ("train", "test"))
    got = original(distributed.CellGroup(runner.dist), x_train, x_test, 200)
    if got is not None:
        np.savez(os.path.join(folder, "neighbours.npz"), sims=got[0], idx=got[1], x_train=x_train,
                 y_train=y_train, x_test=x_test)
    runner.dist.close()


def test_two_ranks_run_knn_cells_together_with_single_process_results(tmp_path):
    """knn cells: every rank searches its shard of the bank, rank 0 merges, votes and writes;
    neighbours, per-sample outcomes and metrics identical to one process; linear_probe on rank 0."""
    import torch.multiprocessing as mp

    from clbench.metrics.knn import knn_neighbours, knn_predict, knn_predict_from_neighbours

    single, multi = tmp_path / "single", tmp_path / "multi"
    for d in (single, multi):
        d.mkdir()
        (d / "suite.yaml").write_text(textwrap.dedent(DIGITS_SUITE))
    _single_process_run(single / "suite.yaml")
    mp.spawn(_digits_worker, args=(2, _free_port(), str(multi)), nprocs=2, join=True)
    ranks = [json.loads((multi / f"rank{r}.json").read_text()) for r in range(2)]
    expected = [["pixels", t, "ok"] for t in ("knn", "knn-fp32", "linear")] + [["pixels", "knn-too-big", "failed"],
                                                                               ["mock", "knn", "ok"]]
    assert ranks[0]["cells"] == ranks[1]["cells"] == expected
    # both ranks entered the three knn searches; the failing cell failed on both before searching
    assert [r for _, r, _ in ranks[0]["searched"]] == [0, 0, 0] and [r for _, r, _ in ranks[1]["searched"]] == [1] * 3
    assert [k for *_, k in ranks[1]["searched"]] == [200, 7, 200]
    for enc, task in [("pixels", "knn"), ("pixels", "knn-fp32"), ("pixels", "linear"), ("mock", "knn")]:
        ra, rb = (json.loads((d / "out" / "digits" / enc / f"{task}.json").read_text()) for d in (single, multi))
        assert rb["status"] == "ok" and ra["metrics"] == rb["metrics"], (enc, task)
        if task.startswith("knn"):
            n, half = rb["details"]["n_train"], -(-rb["details"]["n_train"] // 2)
            assert rb["details"]["distributed"] == {"world_size": 2, "shards": [[0, half], [half, n]]}
            assert "distributed" not in ra["details"]
            sa, sb = (np.load(d / "out" / "digits" / enc / f"{task}.samples.npz") for d in (single, multi))
            assert sorted(sa.files) == sorted(sb.files)
            for name in sa.files:  # the same test samples right and wrong, k by k
                np.testing.assert_array_equal(sa[name], sb[name])
    failed = json.loads((multi / "out" / "digits" / "pixels" / "knn-too-big.json").read_text())
    assert failed["error"]["type"] == "DataError" and "k=5000" in failed["reason"]
    assert not [p for p in (multi / "out").rglob(".*")]  # no temporary or lock files left

    # the neighbours themselves, on the cached pixel features: 2 ranks merged against one process
    got = np.load(multi / "neighbours.npz")
    ref_s, ref_i = knn_neighbours(got["x_train"], got["x_test"], 200)
    np.testing.assert_array_equal(got["idx"], ref_i)
    np.testing.assert_array_equal(got["sims"].view(np.int32), ref_s.view(np.int32))
    assert (got["sims"][:, 1:] == got["sims"][:, :-1]).any()  # integer pixels: exact ties among them
    ref = knn_predict(got["x_train"], got["y_train"], got["x_test"], ks=[1, 10, 20, 200], num_classes=10)
    pred = knn_predict_from_neighbours(got["sims"], got["idx"], got["y_train"], ks=[1, 10, 20, 200], num_classes=10)
    for k in ref:
        np.testing.assert_array_equal(pred[k], ref[k])


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
        if p.name == "knn.json":  # searched by both ranks, each its half of the bank
            assert rb["details"]["distributed"]["world_size"] == 2
    # a second torchrun run finds everything done: no extraction, nothing rewritten
    before = {p: (multi / "out" / p).stat().st_mtime_ns for p in files}
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                 "-m", "clbench", "run", "suite.yaml"], multi)
    assert proc.stdout.count("up-to-date") >= 4
    assert before == {p: (multi / "out" / p).stat().st_mtime_ns for p in files}
