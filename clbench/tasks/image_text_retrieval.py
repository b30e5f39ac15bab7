"""Image-text retrieval on a caption dataset: Recall@k in both directions and their mean.

The encoder embeds the dataset's ``images`` split (image modality) and ``captions`` split (text
modality); both come from the feature cache. A caption query's positive is its image; an image
query is a hit at k when any of its captions is among the k best captions (CLIP_benchmark after
its multi-caption fix). See :mod:`clbench.metrics.image_text` for ties and chunking.

Metric keys: ``text_to_image_R@k``, ``image_to_text_R@k``, ``mean_R@k`` for each k in ``k_values``
and ``mean_recall`` (the mean of all of them, CLIP_benchmark's summary); main: ``mean_R@1``.

Suite example::

    tasks:
      - {name: coco-retrieval, type: image_text_retrieval, dataset: coco}
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal

import numpy as np

from ..errors import DataError
from ..metrics.image_text import DEFAULT_KS, image_text_ranks, recall_metrics
from ..options import option
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class ImageTextRetrievalOptions:
    k_values: list[int] = option(list(DEFAULT_KS), "cut-offs k of Recall@k (1 is always computed)")
    chunk_size: int = option(256, "queries scored per block (bounds memory to chunk_size x N scores)")
    similarity: Literal["auto", "cosine", "dot"] = option("auto", "auto: the encoder's own similarity")

    def validate(self) -> None:
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ValueError("k_values: expected a non-empty list of positive integers")
        if self.chunk_size < 1:
            raise ValueError("chunk_size: expected a positive integer")


class ImageTextRetrievalTask(Task):
    """Recall@k image->text and text->image on a caption dataset."""

    Options = ImageTextRetrievalOptions
    protocol_version = "1"
    execution_options = ("chunk_size",)
    dataset_kinds = ("image-text",)
    splits = ("images", "captions")
    modalities = ("image", "text")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "mean_R@1"

    def run(self, ctx: TaskContext) -> TaskOutput:
        dataset = ctx.dataset
        if not hasattr(dataset, "image_text"):
            raise DataError(f"dataset {getattr(dataset, 'name', '?')!r} is not an image-caption dataset")
        _, _, c2i = dataset.image_text()
        img, _ = ctx.features("images")
        txt, _ = ctx.features("captions")
        similarity = self.options.similarity
        if similarity == "auto":
            similarity = getattr(ctx.encoder, "similarity", "cosine")
        opts = dataclasses.replace(self.options, similarity=similarity)
        return self.evaluate(img, txt, c2i, opts, device=ctx.device)

    @classmethod
    def evaluate(
        cls,
        image_emb: np.ndarray,
        text_emb: np.ndarray,
        caption_to_image: np.ndarray,
        options: ImageTextRetrievalOptions | None = None,
        *,
        device: str = "cpu",
    ) -> TaskOutput:
        """Score in-memory embeddings: images [I, D], captions [T, D], caption -> image index [T].

        >>> import numpy as np
        >>> out = ImageTextRetrievalTask.evaluate(np.eye(2), np.eye(2), np.array([0, 1]))
        >>> out.metrics["mean_R@1"]
        1.0
        """
        opts = options or ImageTextRetrievalOptions()
        similarity = "cosine" if opts.similarity == "auto" else opts.similarity
        ks = sorted(set(opts.k_values) | {1})
        t0 = time.perf_counter()
        t2i, i2t = image_text_ranks(
            image_emb, text_emb, caption_to_image, chunk_size=opts.chunk_size, device=device,
            similarity=similarity,
        )
        metrics = recall_metrics(t2i, i2t, ks)
        details = {"n_images": len(image_emb), "n_captions": len(text_emb), "similarity": similarity}
        return TaskOutput(metrics=metrics, main_metric="mean_R@1", details=details,
                          timings={"search_s": time.perf_counter() - t0}, samples=_samples(t2i, i2t, ks))


def _samples(t2i: np.ndarray, i2t: np.ndarray, ks: list[int]) -> dict[str, Any]:
    """Per query (captions, then images; ``groups`` 0 and 1): hit at each k. ``mean_R@k`` is the
    mean of the two directions' recalls, so CIs resample captions and images each within itself."""
    from ..stats.samples import task_samples

    ranks = np.concatenate([t2i, i2t])
    groups = np.r_[np.zeros(len(t2i), np.int64), np.ones(len(i2t), np.int64)]
    arrays = {f"hit@{k}": ranks < k for k in ks}
    return task_samples(
        "per_query", arrays, {f"mean_R@{k}": ("group_mean", [f"hit@{k}"]) for k in ks}, groups=groups
    )
