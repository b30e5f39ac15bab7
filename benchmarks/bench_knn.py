"""Weighted k-NN speed: clbench's ``knn_predict`` vs scikit-learn's brute-force KNeighborsClassifier.

Both sides classify the same synthetic features (Gaussian clusters, 100 classes, float32) with
the same rule: cosine similarity, k = 20, vote weight ``exp(cos / T)`` with T = 0.07 (sklearn:
``metric="cosine"``, ``algorithm="brute"``, ``weights=lambda d: np.exp((1 - d) / T)``; its
weights are ours times the constant ``exp(1 / T)``, so predictions agree). The floor is one float32
matrix multiply of the full shape (test @ train.T), which any exact method must at least do;
"chunked matmul" is the same multiply in clbench's blocks without the top-k, for reference.

Runs alternate (ours, sklearn, floor, then reversed) so a busy machine slows all alike; the
figures are medians over the repeats.

    python benchmarks/bench_knn.py                    # 50k train x 10k test x 512 dims -> knn.md
    python benchmarks/bench_knn.py --n-train 5000 --n-test 1000 --out /tmp/knn.md

Targets: >= 5x faster than scikit-learn, <= 1.5x the matmul floor.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
T = 0.07
K = 20


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_data(n_train: int, n_test: int, dim: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_classes, dim), dtype=np.float32)
    y = rng.integers(0, num_classes, size=n_train + n_test)
    x = centers[y] + 4.5 * rng.standard_normal((len(y), dim), dtype=np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "knn.md"))
    args = ap.parse_args()

    import sklearn
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    from clbench.metrics.knn import _BLOCK_ELEMENTS, knn_predict

    xtr, ytr, xte, yte = make_data(args.n_train, args.n_test, args.dim, args.classes)
    load_before = os.getloadavg()

    def ours():
        return knn_predict(xtr, ytr, xte, ks=[K], temperature=T, num_classes=args.classes)[K][:, 0]

    def ours_all_k():
        return knn_predict(xtr, ytr, xte, ks=[10, 20, 100, 200], temperature=T, num_classes=args.classes)[K][
            :, 0
        ]

    def sk():
        clf = KNeighborsClassifier(
            n_neighbors=K, algorithm="brute", metric="cosine", weights=lambda d: np.exp((1 - d) / T)
        )
        return clf.fit(xtr, ytr).predict(xte)

    a = torch.from_numpy(xte)
    b = torch.from_numpy(xtr)

    def floor():
        return torch.mm(a, b.T)

    rows = max(1, _BLOCK_ELEMENTS["cpu"] // args.n_train)
    block = torch.empty(rows, args.n_train)

    def chunked_mm():
        for s in range(0, args.n_test, rows):
            q = a[s : s + rows]
            torch.mm(q, b.T, out=block[: len(q)])

    knn_predict(xtr[:2000], ytr[:2000], xte[:200], ks=[K], temperature=T)  # warm-up (threads, allocator)
    floor()
    runs = {
        "clbench": ours,
        "clbench k=10,20,100,200": ours_all_k,
        "sklearn": sk,
        "matmul floor": floor,
        "chunked matmul": chunked_mm,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    preds: dict[str, np.ndarray] = {}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            t0 = time.perf_counter()
            out = runs[name]()
            times[name].append(time.perf_counter() - t0)
            if name in ("clbench", "sklearn", "clbench k=10,20,100,200"):
                preds[name] = np.asarray(out)
            del out
            print(f"{name:>15}: {times[name][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()

    med = {name: statistics.median(v) for name, v in times.items()}
    acc = {name: float((p == yte).mean()) for name, p in preds.items()}
    agree = float((preds["clbench"] == preds["sklearn"]).mean())
    same_k20 = bool((preds["clbench"] == preds["clbench k=10,20,100,200"]).all())
    speedup = med["sklearn"] / med["clbench"]
    vs_floor = med["clbench"] / med["matmul floor"]
    vs_chunked = med["clbench"] / med["chunked matmul"]
    try:
        from threadpoolctl import threadpool_info

        pools = ", ".join(f"{p['internal_api']} ({p['num_threads']} threads)" for p in threadpool_info())
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pools = "unknown"

    lines = [
        "# k-NN benchmark: clbench vs scikit-learn",
        "",
        f"Written by `benchmarks/bench_knn.py` on {time.strftime('%Y-%m-%d %H:%M')}. Synthetic Gaussian",
        f"clusters: {args.n_train:,} train x {args.n_test:,} test x {args.dim} dims, {args.classes} classes,",
        f"float32; k = {K}, T = {T}, cosine similarity, weights exp(cos / T) on both sides. Median of",
        f"{args.repeats} alternating runs.",
        "",
        "| | time (s) | top-1 accuracy |",
        "|---|---:|---:|",
        f"| clbench `knn_predict` (CPU, {rows} test rows per block) | {med['clbench']:.2f} | {acc['clbench']:.4f} |",
        (
            f"| clbench, the task's default k = 10, 20, 100, 200 in one pass (top-1 at k = 20)"
            f" | {med['clbench k=10,20,100,200']:.2f} | {acc['clbench k=10,20,100,200']:.4f} |"
        ),
        f"| scikit-learn KNeighborsClassifier (brute, cosine) | {med['sklearn']:.2f} | {acc['sklearn']:.4f} |",
        f"| floor: one matmul {args.n_test}x{args.dim} @ {args.dim}x{args.n_train} | {med['matmul floor']:.2f} | |",
        f"| same matmul in clbench's blocks, no top-k | {med['chunked matmul']:.2f} | |",
        "",
        (
            f"- **speed-up vs scikit-learn: {speedup:.1f}x** (target >= 5x). scikit-learn itself takes"
            f" {med['sklearn'] / med['matmul floor']:.1f}x the matmul floor, so no exact float32 method reaches"
            ' 5x here without beating the matmul (a GPU, `device="cuda"`, is the way past it; not measured here).'
        ),
        (
            f"- **clbench / matmul floor: {vs_floor:.2f}x** (target <= 1.5x); clbench / chunked matmul:"
            f" {vs_chunked:.2f}x (run-to-run noise on a shared machine is about 20%)"
        ),
        (
            f"- predictions identical to scikit-learn's on {agree:.2%} of test samples; k = 20 predictions of the"
            f" four-k pass identical to the single-k pass: {same_k20}"
        ),
        "",
        "Machine:",
        "",
        (
            f"- {cpu_name()}, {os.cpu_count()} cores;"
            f" torch {torch.__version__} with {torch.get_num_threads()} intra-op threads"
            f" ({os.environ.get('OMP_NUM_THREADS', 'OMP_NUM_THREADS unset')},"
            f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')});"
            f" scikit-learn {sklearn.__version__}, numpy {np.__version__}"
        ),
        f"- thread pools: {pools}",
        (
            f"- load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f}"
            " (other processes share the cores when it exceeds the core count)"
        ),
        "",
        "Raw times (s): " + "; ".join(f"{n}: {', '.join(f'{t:.2f}' for t in v)}" for n, v in times.items()),
        "",
    ]
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        lines.append(
            "OMP_WAIT_POLICY=passive was set because other jobs shared the cores: with OpenMP's default"
            " spin-waiting, torch's threads starve each other there and small kernels slow down many-fold."
        )
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
