"""``diagnostics``: label-free geometry of the embeddings of one split, on any encoder and dataset.

On a seeded subsample of ``max_samples`` rows of ``split`` (its size is recorded in ``details``
and as ``n_samples``):

- ``uniformity`` (Wang and Isola, ``t`` = 2; lower is more uniform);
- ``rankme`` (Garrido et al.) effective rank, the headline;
- ``tolerance`` (Wang and Liu): mean cosine similarity of same-class pairs, when the split has
  single-label class labels;
- ``hub_skewness``, ``antihub_fraction``, ``hub_max_occurrence``, ``nn_similarity`` and, with
  labels, ``knn_label_agreement``: statistics of the cosine ``k``-NN graph (hubness);
- ``alignment`` (Wang and Isola, alpha = 2) over positive pairs. Datasets that provide pairs
  name two row-aligned splits in an attribute ``pair_splits = (split_a, split_b)`` (the
  ``labels`` dataset with ``pairs``). For image datasets without pairs, ``augment_pairs`` images
  of the subsample each get two views under seeded SimCLR-style augmentations (random resized
  crop to the original size with scale 0.2-1, horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with
  p = 0.8, grayscale with p = 0.2) and are embedded on the fly (not cached). Text datasets
  without ``pair_splits`` get no alignment.

``details["spectrum"]`` holds the covariance singular-value spectrum (Jing et al.), descending and
divided by its largest value; plot it on a log scale to see dimensional collapse.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(200, 8))
>>> out = DiagnosticsTask.evaluate(x, np.arange(200) % 4, {"k": 5})
>>> out.main_metric, 6 < out.metrics["rankme"] <= 8
('rankme', True)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option, resolve_options
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class DiagnosticsOptions:
    split: str = option("test", "the split whose embeddings are diagnosed")
    max_samples: int = option(5000, "seeded subsample size (the pairwise metrics are quadratic)")
    t: float = option(2.0, "uniformity temperature t")
    alpha: float = option(2.0, "alignment exponent")
    k: int = option(10, "neighbours per point for the hubness statistics")
    spectrum_size: int = option(512, "leading spectrum values kept in details")
    augment_pairs: int = option(1000, "images given two augmented views for alignment (0: none)")

    def validate(self) -> None:
        if self.max_samples < 3:
            raise ValueError(f"max_samples must be >= 3, got {self.max_samples}")
        if not self.t > 0 or not self.alpha > 0:
            raise ValueError("t and alpha must be > 0")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.augment_pairs < 0:
            raise ValueError(f"augment_pairs must be >= 0, got {self.augment_pairs}")
        if self.spectrum_size < 1:
            raise ValueError(f"spectrum_size must be >= 1, got {self.spectrum_size}")


#: why a diagnostics cell has no bootstrap CI (``ci_reason``); see docs/statistics.md
NO_SAMPLES = (
    "rankme is a spectral function of all the embeddings jointly: the only per-sample outcomes that "
    "determine it are the embeddings themselves (n x D floats), which are not stored, and a row "
    "bootstrap of an effective rank is biased (resampled duplicates lower it)"
)


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=size, replace=False))


class DiagnosticsTask(Task):
    """Uniformity, alignment, tolerance, RankMe, spectrum and hubness of one split."""

    Options = DiagnosticsOptions
    protocol_version = "1"
    dataset_kinds = ()
    splits = ()

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "rankme"

    def run(self, ctx: TaskContext) -> TaskOutput:
        x, y = ctx.features(self.options.split)
        pairs = None
        names = getattr(ctx.dataset, "pair_splits", None)
        source = None
        if names:
            pairs = (ctx.features(names[0])[0], ctx.features(names[1])[0])
            source = f"dataset splits {names[0]} / {names[1]}"
        elif getattr(ctx.dataset, "modality", None) == "image" and self.options.augment_pairs > 0:
            pairs = augmented_pair_features(ctx, self.options.split, self.options.augment_pairs)
            source = "two SimCLR-style augmented views per image"
        out = self.evaluate(x, y, self.options, pairs=pairs, seed=ctx.seed)
        out.details["pairs_source"] = source
        png = spectrum_plot(out.details["spectrum"], title=f"{ctx.encoder.name} · {ctx.dataset.name}")
        if png is not None:
            out.artifacts["spectrum.png"] = png
        else:
            out.details["plot_note"] = "matplotlib is not installed (pip install 'clbench[plots]'): no spectrum plot"
        return out

    @classmethod
    def evaluate(
        cls,
        x: np.ndarray,
        labels: np.ndarray | None = None,
        options: DiagnosticsOptions | dict[str, Any] | None = None,
        *,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> TaskOutput:
        """Diagnose in-memory embeddings [N, D] (labels and positive-pair views optional)."""
        from ..metrics import diagnostics as dg

        opts = resolve_options(DiagnosticsOptions, options)
        x = np.asarray(x)
        if x.ndim != 2 or len(x) < 3:
            raise DataError(f"diagnostics: need at least 3 embeddings [N, D], got shape {x.shape}")
        t0 = time.perf_counter()
        idx = _subsample(len(x), opts.max_samples, seed)
        xs = np.asarray(x[idx], dtype=np.float64)
        if not np.all(np.isfinite(xs)):
            raise DataError("diagnostics: embeddings contain NaN or infinite values")
        ys = None
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and len(labels) == len(x):
                ys = labels[idx]
        k = min(opts.k, len(xs) - 1)
        metrics: dict[str, float] = {
            "n_samples": float(len(xs)),
            "uniformity": dg.uniformity(xs, opts.t),
            "rankme": dg.rankme(xs),
        }
        hub = dg.hubness(xs, k, labels=ys)
        metrics.update(
            hub_skewness=hub["skewness"], antihub_fraction=hub["antihub_fraction"],
            hub_max_occurrence=hub["max_occurrence"], nn_similarity=hub["nn_similarity"],
        )
        notes = []
        if ys is not None:
            metrics["tolerance"] = dg.tolerance(xs, ys)
            metrics["knn_label_agreement"] = hub["knn_label_agreement"]
        else:
            notes.append("no single-label class labels: tolerance and knn_label_agreement skipped")
        n_pairs = None
        if pairs is not None:
            a, b = (np.asarray(p) for p in pairs)
            if a.shape != b.shape:
                raise DataError(f"diagnostics: positive-pair views differ in shape {a.shape} vs {b.shape}")
            pidx = _subsample(len(a), opts.max_samples, seed)
            metrics["alignment"] = dg.alignment(a[pidx], b[pidx], opts.alpha)
            n_pairs = len(pidx)
        else:
            notes.append("the dataset provides no positive pairs: alignment skipped")
        spectrum = dg.singular_spectrum(xs)
        details: dict[str, Any] = {
            "subsample": {"n": len(xs), "of": len(x), "seed": seed, "pairs": n_pairs},
            "dim": int(x.shape[1]),
            "k": k,
            "spectrum": [float(v) for v in spectrum[: opts.spectrum_size]],
            "spectrum_note": "singular values of the embedding covariance, descending, over the largest",
        }
        if notes:
            details["notes"] = notes
        return TaskOutput(
            metrics, cls.main_metric(opts), details, {"fit_s": time.perf_counter() - t0},
            samples={"unavailable": NO_SAMPLES},
        )  # fmt: skip


def simclr_view(image: Any, rng: np.random.Generator) -> np.ndarray:
    """One SimCLR-style augmented view of a uint8 image (HxW or HxWxC array, or PIL image), as a
    uint8 array of the input's shape. Deterministic given ``rng``."""
    import torch
    from torchvision.transforms import v2

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    gray = arr.ndim == 2 or arr.shape[-1] == 1
    t = torch.from_numpy(np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1], -1))).permute(2, 0, 1)
    h, w = t.shape[1:]
    ops: list[Any] = [
        v2.RandomResizedCrop((h, w), scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.0 if gray else 0.4, 0.0 if gray else 0.1)], p=0.8),
    ]
    if not gray:
        ops.append(v2.RandomGrayscale(p=0.2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**62)))
        out = v2.Compose(ops)(t)
    return out.permute(1, 2, 0).numpy().reshape(arr.shape)


def augmented_pair_features(ctx: TaskContext, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of two augmented views of ``n`` seeded images of ``split`` (extracted now)."""
    from ..datasets.base import Split
    from ..features import extract

    images = ctx.dataset.split(split)
    idx = _subsample(len(images), n, ctx.seed)
    rng = np.random.default_rng([ctx.seed, 13])
    views = [[simclr_view(images.items[int(i)], rng) for i in idx] for _ in range(2)]
    ctx.encoder.setup(ctx.device)
    return tuple(extract(ctx.encoder, Split(items=v, modality="image"), device=ctx.device) for v in views)


def spectrum_plot(spectrum: list[float], *, title: str = "") -> bytes | None:
    """PNG of the log singular-value spectrum (Jing et al.'s collapse plot); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    values = np.asarray(spectrum, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(np.arange(1, len(values) + 1), np.log(np.maximum(values, 1e-30)))
    ax.set_xlabel("singular value rank")
    ax.set_ylabel("log singular value")
    ax.set_title(title or "embedding spectrum", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
