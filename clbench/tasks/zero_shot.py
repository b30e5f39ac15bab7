"""Zero-shot classification with an image+text encoder (the CLIP protocol).

Each class gets one or more text prompts: every template of ``templates`` filled with the class
name (``{c}``; ``{}`` and ``{d}`` are accepted too), or CuPL-style per-class prompt lists
(``class_prompts``: a mapping class name -> prompts, or a JSON file of one). The prompts are
embedded with the encoder's text side and ensembled per class: each prompt embedding is
L2-normalised, the class mean taken and renormalised (:func:`clbench.metrics.image_text.zero_shot_weights`).
A test image is assigned the class of highest cosine similarity (the logit scale of the model
multiplies every score alike, so it changes no prediction).

Class names come from ``classnames`` when set, else from the dataset (MNIST and digits: "0"..."9";
image folders: the folder names; CIFAR: its meta file). Templates: ``templates`` when set, else
the built-in set ``template_set`` (``auto``: chosen by the dataset, e.g. ``mnist`` for MNIST and
digits, else ``default``). Built-in sets: ``default``, ``simple``, ``mnist``, ``cifar``.

Metrics: ``top1``, ``top5`` (when there are at least 5 classes), ``mean_per_class_recall``
(the mean over classes present in the split); main: ``top1``.

Suite example (MTEB's MNIST prompt)::

    tasks:
      - {name: mnist-zs, type: zero_shot, dataset: mnist,
         templates: ["a photo of the number: '{c}'."]}
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, DataError
from ..metrics.classification import balanced_accuracy, topk_hits
from ..metrics.image_text import zero_shot_weights
from ..options import option
from ..stats.samples import task_samples
from .base import Task, TaskContext, TaskOutput

#: built-in template sets (written for clbench; any set can be replaced by ``templates``)
TEMPLATE_SETS: dict[str, list[str]] = {
    "simple": ["a photo of a {c}."],
    "default": [
        "a photo of a {c}.",
        "a blurry photo of a {c}.",
        "a close-up photo of a {c}.",
        "a photo of the large {c}.",
        "a photo of the small {c}.",
        "a bright photo of a {c}.",
        "a dark photo of a {c}.",
        "a drawing of a {c}.",
        "art of the {c}.",
        "a low resolution photo of a {c}.",
    ],
    "mnist": ["a photo of the number: '{c}'."],
    "cifar": [
        "a photo of a {c}.",
        "a blurry photo of a {c}.",
        "a low resolution photo of a {c}.",
        "a pixelated photo of a {c}.",
        "a photo of the small {c}.",
    ],
}
#: dataset class -> template set used when ``template_set`` is auto
DATASET_TEMPLATES = {"MnistDataset": "mnist", "DigitsDataset": "mnist", "CifarDataset": "cifar"}
_PLACEHOLDERS = ("{c}", "{}", "{d}")


@dataclasses.dataclass
class ZeroShotOptions:
    classnames: list[str] | None = option(None, "class names in label order (default: the dataset's)")
    templates: list[str] | None = option(None, "prompt templates with {c} for the class name (default: template_set)")
    template_set: str = option("auto", "built-in templates: auto (by dataset), default, simple, mnist, cifar")
    class_prompts: dict[str, list[str]] | str | None = option(
        None, "CuPL-style prompts per class name: a mapping, or a JSON file of one (relative to the cwd)"
    )
    class_prompts_mode: Literal["replace", "add"] = option(
        "replace", "replace: a class with class_prompts uses only those; add: also its templates"
    )
    split: str = option("test", "the split classified")

    def validate(self) -> None:
        if self.templates is not None:
            if not self.templates:
                raise ValueError("templates: expected at least one template")
            for t in self.templates:
                if not any(p in t for p in _PLACEHOLDERS):
                    raise ValueError(f"templates: {t!r} has no {{c}} placeholder for the class name")
        if self.template_set != "auto" and self.template_set not in TEMPLATE_SETS:
            raise ValueError(f"template_set: expected auto or one of {', '.join(TEMPLATE_SETS)}")
        if self.classnames is not None and len(set(self.classnames)) != len(self.classnames):
            raise ValueError("classnames: names must be distinct")


def fill(template: str, name: str) -> str:
    """The template with the class name in its placeholder.

    >>> fill("a photo of the number: '{d}'.", "7")
    "a photo of the number: '7'."
    """
    for p in _PLACEHOLDERS:
        if p in template:
            return template.replace(p, name)
    raise ConfigError(f"template {template!r} has no {{c}} placeholder", key="templates")


def build_prompts(
    classnames: list[str],
    templates: list[str],
    class_prompts: dict[str, list[str]] | None = None,
    mode: str = "replace",
) -> tuple[list[str], np.ndarray]:
    """(prompts, class index of each prompt) for every class.

    >>> build_prompts(["cat", "dog"], ["a {c}.", "the {c}."], {"dog": ["a good dog."]})
    (['a cat.', 'the cat.', 'a good dog.'], array([0, 0, 1]))
    """
    class_prompts = class_prompts or {}
    unknown = [k for k in class_prompts if k not in classnames]
    if unknown:
        raise ConfigError(f"class_prompts: unknown class names {unknown[:5]}", key="class_prompts")
    prompts: list[str] = []
    owner: list[int] = []
    for i, name in enumerate(classnames):
        own = [str(p) for p in class_prompts.get(name, [])]
        mine = own if own and mode == "replace" else [fill(t, name) for t in templates] + own
        prompts.extend(mine)
        owner.extend([i] * len(mine))
    return prompts, np.asarray(owner, dtype=np.int64)


class ZeroShotTask(Task):
    """Zero-shot classification: top-1, top-5 and mean per-class recall."""

    Options = ZeroShotOptions
    protocol_version = "1"
    dataset_kinds = ("classification",)
    splits = ("test",)
    modalities = ("image", "text")

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return "top1"

    def _classnames(self, dataset: Any) -> list[str]:
        if self.options.classnames is not None:
            return list(self.options.classnames)
        if getattr(dataset, "classes", None) is None:
            dataset.split(self.options.split)  # class names are known once the data is read
        if not dataset.classes:
            raise DataError(f"dataset {dataset.name!r} has no class names: set the task's `classnames`")
        return [str(c) for c in dataset.classes]

    def _templates(self, dataset: Any) -> list[str]:
        o = self.options
        if o.templates is not None:
            return list(o.templates)
        name = o.template_set
        if name == "auto":
            name = DATASET_TEMPLATES.get(type(dataset).__name__, "default")
        return TEMPLATE_SETS[name]

    def _class_prompts(self) -> dict[str, list[str]] | None:
        cp = self.options.class_prompts
        if not isinstance(cp, str):
            return cp
        path = Path(cp).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise DataError(f"{path}: cannot read class prompts ({err})") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {err.lineno}: malformed JSON ({err.msg})") from None
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
        ):
            raise DataError(f"{path}: expected a JSON object mapping class names to lists of prompts")
        return data

    def run(self, ctx: TaskContext) -> TaskOutput:
        x, y = ctx.features(self.options.split)
        if y is None:
            raise DataError(f"dataset {ctx.dataset.name!r}: split {self.options.split!r} has no labels")
        classnames = self._classnames(ctx.dataset)
        if int(np.max(y)) >= len(classnames):
            raise ConfigError(
                f"{len(classnames)} class names but labels go up to {int(np.max(y))}", key="classnames"
            )
        prompts, owner = build_prompts(
            classnames, self._templates(ctx.dataset), self._class_prompts(), self.options.class_prompts_mode
        )
        t0 = time.perf_counter()
        ctx.encoder.setup(ctx.device)
        emb = ctx.encoder.encode(prompts, "text", None)
        emb = emb if isinstance(emb, np.ndarray) else emb.detach().float().cpu().numpy()
        weights = zero_shot_weights(emb, owner, len(classnames))
        embed_s = time.perf_counter() - t0
        out = self.evaluate(x, y, weights)
        out.details.update(n_prompts=len(prompts), prompts_per_class=float(len(prompts) / len(classnames)),
                           example_prompts=prompts[:3])
        out.timings["prompt_embedding_s"] = embed_s
        return out

    @classmethod
    def evaluate(cls, image_emb: np.ndarray, labels: np.ndarray, class_weights: np.ndarray) -> TaskOutput:
        """Metrics of images [N, D] with integer ``labels`` against class weights [C, D].

        >>> out = ZeroShotTask.evaluate(np.eye(3), np.array([0, 1, 1]), np.eye(3))
        >>> round(out.metrics["top1"], 4), out.metrics["mean_per_class_recall"]
        (0.6667, 0.75)
        """
        x = np.asarray(image_emb, dtype=np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        w = np.asarray(class_weights, dtype=np.float32)
        scores = x @ w.T
        labels = np.asarray(labels).astype(np.int64)
        pred = np.argmax(scores, axis=1)  # first maximum: ties go to the lower class index
        hits = {"top1": topk_hits(scores, labels, 1)}
        if w.shape[0] >= 5:
            hits["top5"] = topk_hits(scores, labels, 5)
        metrics = {name: float(h.mean()) for name, h in hits.items()}
        metrics["mean_per_class_recall"] = balanced_accuracy(pred, labels)
        samples = task_samples(
            "correct", {**hits, "y_true": labels, "y_pred": pred},
            {**{name: ("mean", [name]) for name in hits},
             "mean_per_class_recall": ("balanced_accuracy", ["y_true", "y_pred"])},
        )
        return TaskOutput(metrics=metrics, main_metric="top1",
                          details={"n_test": len(labels), "num_classes": int(w.shape[0])}, samples=samples)
