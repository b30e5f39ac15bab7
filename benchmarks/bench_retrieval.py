"""Exact dense retrieval: clbench's chunked ``topk_search`` vs a plain NumPy argsort of the full
score matrix, and ``topk_search``'s peak memory at 1M documents.

1. Speed and identity (a size where the full matrix fits): cosine scores of Q queries against N
   documents (synthetic, float32, 384 dims), top k per query. The baseline computes the full
   Q x N matrix with NumPy and argsorts each row (stable, so equal scores keep the lower index,
   the order clbench guarantees); a second baseline uses ``argpartition`` then sorts the k best.
   Results are compared index for index.
2. Memory at scale: 1k queries x 1M documents x 384 dims (the corpus alone is 1.5 GB; the full
   score matrix would be 1k x 1M float32 = 4 GB). Run in a fresh process: the corpus is built in
   place, the peak-RSS counter is reset (``/proc/self/clear_refs``), then ``topk_search`` runs and
   its peak RSS above the corpus is reported, with ``tracemalloc``'s peak for the Python/NumPy side.

    python benchmarks/bench_retrieval.py                     # writes benchmarks/retrieval.md
    python benchmarks/bench_retrieval.py --n-docs 20000 --big-docs 100000 --out /tmp/r.md

Runs in about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit-norm-ish Gaussian rows, generated in place in blocks (no float64 temporaries)."""
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, n, 65536):
        rng.standard_normal(out=out[s : s + 65536], dtype=np.float32)
    return out


def numpy_argsort(q: np.ndarray, d: np.ndarray, k: int):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    scores = qn @ dn.T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, 1), idx


def numpy_argpartition(q: np.ndarray, d: np.ndarray, k: int):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    scores = qn @ dn.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -ps), axis=1)
    idx = np.take_along_axis(part, order, 1)
    return np.take_along_axis(scores, idx, 1), idx


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def speed(args) -> dict:
    from clbench.metrics.retrieval import topk_search

    q = make(args.n_queries, args.dim, 1)
    d = make(args.n_docs, args.dim, 2)
    topk_search(q[:4], d[:1000], 10)  # warm-up (torch import, thread pool)
    rows = []
    ref = None
    for name, fn in (
        ("clbench topk_search", lambda: topk_search(q, d, args.k, chunk_size=args.chunk_size)),
        ("NumPy full matrix + argsort", lambda: numpy_argsort(q, d, args.k)),
        ("NumPy full matrix + argpartition", lambda: numpy_argpartition(q, d, args.k)),
    ):
        sec, (s, i) = timed(fn, args.repeats)
        if ref is None:
            ref = (s, i)
            same = "-"
        else:
            equal_rows = int((i == ref[1]).all(axis=1).sum())
            diff = float(np.abs(s - ref[0]).max())
            same = f"{equal_rows}/{len(i)} rows identical, max score diff {diff:.1e}"
        rows.append({"method": name, "seconds": sec, "identical": same})
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio"] = r["seconds"] / base
    # where rankings differ: under NumPy's own scores, is our ranking as good at every position
    # (the swapped documents tie to float32 rounding)?
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    s_np, i_np = numpy_argsort(q, d, args.k)
    i_ours = ref[1]
    bad = np.nonzero((i_np != i_ours).any(axis=1))[0]
    gap = 0.0
    for r in bad:
        ours_under_np = qn[r] @ dn[i_ours[r]].T  # NumPy's score of each document we ranked
        gap = max(gap, float(np.abs(ours_under_np - s_np[r]).max()))
    return {"rows": rows, "differing_rows": len(bad), "max_rank_score_gap": gap}


MEMORY_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[1])
from bench_retrieval import make
from clbench.metrics.retrieval import topk_search
n_docs, n_q, dim, k, chunk = (int(x) for x in sys.argv[2:7])

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MiB
topk_search(np.ones((2, dim), np.float32), np.ones((10, dim), np.float32), 3)  # import torch first
d = make(n_docs, dim, 2)
q = make(n_q, dim, 1)
base = status("VmRSS")
reset = True
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
except OSError:
    reset = False
tracemalloc.start()
t = time.perf_counter()
s, i = topk_search(q, d, k, chunk_size=chunk)
sec = time.perf_counter() - t
_, py_peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
peak = status("VmHWM")
print(json.dumps({"base_rss_mib": base, "peak_rss_mib": peak, "hwm_reset": reset,
                  "extra_peak_mib": peak - base, "tracemalloc_peak_mib": py_peak / 2**20,
                  "seconds": sec, "corpus_mib": d.nbytes / 2**20, "shape": list(i.shape)}))
"""


def memory(args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(REPO / "benchmarks"), str(args.big_docs), str(args.big_queries),
         str(args.dim), str(args.k), str(args.chunk_size)],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-queries", type=int, default=1000)
    ap.add_argument("--n-docs", type=int, default=100_000)
    ap.add_argument("--big-docs", type=int, default=1_000_000)
    ap.add_argument("--big-queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "retrieval.md"))
    args = ap.parse_args()

    import torch

    t0 = time.perf_counter()
    sp = speed(args)
    mem = memory(args)
    full_mib = args.big_queries * args.big_docs * 4 / 2**20
    lines = [
        "# Exact dense retrieval: chunked top-k vs NumPy on the full score matrix",
        "",
        (f"Produced by `python benchmarks/bench_retrieval.py` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, numpy {np.__version__})."),
        "",
        (f"## Speed and identity: {args.n_queries:,} queries x {args.n_docs:,} documents x {args.dim} dims, "
        f"cosine, top {args.k}"),
        "",
        (f"Median of {args.repeats} runs. Full score matrix for the NumPy baselines: "
        f"{args.n_queries * args.n_docs * 4 / 2**20:,.0f} MiB."),
        "",
        "| method | seconds | x clbench | results vs clbench |",
        "|---|---:|---:|---|",
    ]
    for r in sp["rows"]:
        lines.append(f"| {r['method']} | {r['seconds']:.2f} | {r['ratio']:.1f} | {r['identical']} |")
    lines += [
        "",
        (f"Rows whose ranking differs from NumPy's argsort: {sp['differing_rows']} of {args.n_queries}. "
        "The two sides compute the same cosines with different matrix-multiply kernels, so scores differ "
        "in the last float32 bit and near-tied documents can swap places; scored with NumPy's own numbers, "
        f"clbench's document at every rank is within {sp['max_rank_score_gap']:.1e} of NumPy's "
        "(float32 rounding). Selection and ordering logic agree exactly: the unit tests compare against a "
        "stable argsort on the same scores, ties included."),
        "",
        f"## Memory: {args.big_queries:,} queries x {args.big_docs:,} documents x {args.dim} dims, top {args.k}",
        "",
        f"- corpus itself (input, float32): {mem['corpus_mib']:,.0f} MiB",
        f"- full score matrix, which clbench never builds: {full_mib:,.0f} MiB",
        f"- clbench peak RSS above the loaded corpus during the search: **{mem['extra_peak_mib']:,.0f} MiB** "
        f"(RSS {mem['base_rss_mib']:,.0f} -> peak {mem['peak_rss_mib']:,.0f} MiB"
        + ("" if mem["hwm_reset"] else "; peak counter could not be reset, so this is an upper bound") + ")",
        f"- of which Python/NumPy allocations (tracemalloc peak): {mem['tracemalloc_peak_mib']:,.1f} MiB",
        f"- search time: {mem['seconds']:.1f} s (chunk_size {args.chunk_size:,} documents, 1,024 queries per block)",
        "",
        (f"Peak extra memory is one score block (1,024 x {args.chunk_size:,} float32 = "
        f"{1024 * args.chunk_size * 4 / 2**20:,.0f} MiB), the normalised corpus chunk "
        f"({args.chunk_size * args.dim * 4 / 2**20:,.0f} MiB), the selection's index buffer (128 rows at a "
        f"time) and the running top-k, independent of the corpus size."),
        "",
        f"Total benchmark time: {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
