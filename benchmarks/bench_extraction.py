"""Extraction throughput: clbench's path against a bare ``model(x)`` loop, and a cached re-run.

Same model (timm resnet18, random init), same images, same batch size, one process. The bare loop
gets ready-made normalised tensors (its preprocessing is free), so it is the ceiling; clbench
reads raw uint8 images and preprocesses them in DataLoader workers while the model runs.
Target: clbench >= 90% of the bare loop. Also: the cached re-run against the first extraction.

    python benchmarks/bench_extraction.py        # writes benchmarks/extraction.md
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clbench.datasets.base import Split
from clbench.encoders.timm_encoder import TimmEncoder
from clbench.features import FeatureCache, FeatureStore, extract
from clbench.options import parse_options

N, SIZE, BATCH = int(os.environ.get("BENCH_N", "1536")), 64, 64


class _Data:
    """Minimal dataset object for FeatureStore: one split of in-memory images."""

    name = "bench"
    modality = "image"

    def __init__(self, images):
        self.images = images

    def fingerprint(self):
        return {"bench-images": int(self.images.sum()) % 1_000_003, "n": len(self.images)}

    def split(self, name):
        return Split(items=self.images, labels=np.zeros(len(self.images), dtype=np.int64), modality="image")


def bare_loop(model, tensors) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tensors), BATCH):
            model(tensors[i : i + BATCH])
    return time.perf_counter() - t0


def main() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, SIZE, SIZE, 3), dtype=np.uint8)
    opts = parse_options(TimmEncoder.Options, {"model": "resnet18", "image_size": SIZE, "batch_size": BATCH})
    enc = TimmEncoder(opts, name="resnet18", seed=0)
    enc.setup("cpu")
    model = enc.model
    # the bare loop's inputs: exactly what clbench's preprocessing produces, made in advance
    tensors = torch.stack([enc.preprocess(img, "image") for img in images])
    split = _Data(images).split("test")
    extract(enc, Split(items=images[:BATCH], modality="image"))  # warm-up both paths
    bare_loop(model, tensors[:BATCH])

    bare, ours = [], []
    for _ in range(3):  # interleaved repeats, best of each
        bare.append(bare_loop(model, tensors))
        t0 = time.perf_counter()
        extract(enc, split)
        ours.append(time.perf_counter() - t0)
    tb, to = min(bare), min(ours)

    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(FeatureCache(Path(tmp)), device="cpu")
        data = _Data(images)
        t0 = time.perf_counter()
        store.get(enc, data, "test")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.get(enc, data, "test")
        cached = time.perf_counter() - t0

    lines = [
        "# Extraction throughput",
        "",
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU. "
            f"timm resnet18 (random init), {N} images {SIZE}x{SIZE}x3, batch {BATCH}."
        ),
        "Produced by `python benchmarks/bench_extraction.py`; both paths run in the same process, interleaved, best of 3.",
        "",
        "| path | seconds | images/s | relative |",
        "|---|---:|---:|---:|",
        f"| bare `model(x)` loop on ready tensors | {tb:.2f} | {N / tb:,.0f} | 100% |",
        f"| clbench extraction (uint8 images, workers, preprocessing) | {to:.2f} | {N / to:,.0f} | {tb / to:.0%} |",
        "",
        f"Target: clbench at least 90% of the bare loop: **{'met' if tb / to >= 0.9 else 'not met'}** ({tb / to:.0%}).",
        "",
        "## Cached re-run",
        "",
        "| run | seconds | speed-up |",
        "|---|---:|---:|",
        f"| first (extract + write cache) | {first:.2f} | 1x |",
        f"| second (read + verify cache, no forward pass) | {cached:.3f} | {first / cached:,.0f}x |",
        "",
    ]
    out = Path(__file__).with_name("extraction.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
