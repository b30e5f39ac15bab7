"""One small registry per plugin kind, with lazy ``module:attr`` entries and entry points.

Built-in plugins are named here as import strings, so listing or validating never imports torch.
Third-party packages add plugins through the entry-point groups ``clbench.encoders``,
``clbench.datasets`` and ``clbench.tasks`` (value: ``package.module:Class``), or by calling
``ENCODERS.register("name", Class)`` before running a suite.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self._entries: dict[str, Any] = dict(builtins)
        self._entry_points_loaded = False

    def register(self, name: str, target: Any = None):
        """Register ``target`` (a class or ``"module:attr"``) as ``name``; usable as a decorator."""
        if target is None:
            def deco(obj):
                self._entries[name] = obj
                return obj

            return deco
        self._entries[name] = target
        return target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=f"clbench.{self.kind}"):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def get(self, name: str) -> Any:
        """The plugin class for ``name``; a ConfigError with close matches when unknown."""
        self._load_entry_points()
        if name not in self._entries:
            hint = difflib.get_close_matches(name, self.names(), n=3)
            extra = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            raise ConfigError(
                f"unknown {self.kind[:-1]} type {name!r}{extra} (known: {', '.join(self.names())})"
            )
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target


ENCODERS = Registry(
    "encoders",
    {
        "identity": "clbench.encoders.identity:IdentityEncoder",
        "timm": "clbench.encoders.timm_encoder:TimmEncoder",
        "torchvision": "clbench.encoders.torchvision_encoder:TorchvisionEncoder",
        "mock": "clbench.encoders.mock:MockEncoder",
        "sentence-transformers": "clbench.encoders.sentence_transformers:SentenceTransformerEncoder",
        "hf": "clbench.encoders.hf:HFEncoder",
        "open_clip": "clbench.encoders.open_clip_encoder:OpenClipEncoder",
        "hf-clip": "clbench.encoders.hf_clip:HFClipEncoder",
        "precomputed": "clbench.encoders.precomputed:PrecomputedEncoder",
        "zoo": "clbench.encoders.zoo:ZooEncoder",
    },
)

DATASETS = Registry(
    "datasets",
    {
        "sklearn-digits": "clbench.datasets.digits:DigitsDataset",
        "arrays": "clbench.datasets.arrays:ArraysDataset",
        "mnist": "clbench.datasets.mnist:MnistDataset",
        "cifar": "clbench.datasets.cifar:CifarDataset",
        "imagefolder": "clbench.datasets.imagefolder:ImageFolderDataset",
        "synthetic": "clbench.datasets.synthetic:SyntheticDataset",
        "sts": "clbench.datasets.sts:STSDataset",
        "beir": "clbench.datasets.beir:BeirDataset",
        "coco-captions": "clbench.datasets.captions:CocoCaptionsDataset",
        "karpathy": "clbench.datasets.captions:KarpathyDataset",
        "image-captions": "clbench.datasets.captions:ImageCaptionsDataset",
        "labels": "clbench.datasets.labels:LabelsDataset",
        "interactions": "clbench.datasets.interactions:InteractionsDataset",
        "coco": "clbench.datasets.coco_instances:CocoDataset",
        "voc-detection": "clbench.datasets.coco_instances:VocDetectionDataset",
        "mask-folder": "clbench.datasets.segmentation:MaskFolderDataset",
        "voc-segmentation": "clbench.datasets.segmentation:VocSegmentationDataset",
        "coco-semantic": "clbench.datasets.coco_semantic:CocoSemanticDataset",
    },
)

TASKS = Registry(
    "tasks",
    {
        "knn": "clbench.tasks.knn:KnnTask",
        "linear_probe": "clbench.tasks.linear_probe:LinearProbeTask",
        "sts": "clbench.tasks.sts:STSTask",
        "retrieval": "clbench.tasks.retrieval:RetrievalTask",
        "mteb": "clbench.tasks.mteb_task:MtebTask",
        "zero_shot": "clbench.tasks.zero_shot:ZeroShotTask",
        "image_text_retrieval": "clbench.tasks.image_text_retrieval:ImageTextRetrievalTask",
        "diagnostics": "clbench.tasks.diagnostics:DiagnosticsTask",
        "clustering": "clbench.tasks.clustering:ClusteringTask",
        "regression_probe": "clbench.tasks.regression_probe:RegressionProbeTask",
        "multilabel_probe": "clbench.tasks.multilabel_probe:MultilabelProbeTask",
        "node_classification": "clbench.tasks.node_classification:NodeClassificationTask",
        "recommendation": "clbench.tasks.recommendation:RecommendationTask",
        "detection": "clbench.tasks.detection:DetectionTask",
        "segmentation": "clbench.tasks.segmentation:SegmentationTask",
    },
)

REGISTRIES = {"encoders": ENCODERS, "datasets": DATASETS, "tasks": TASKS}
