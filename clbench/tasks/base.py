"""The task protocol: a named evaluation protocol run on one (encoder, dataset) cell.

A task never sees the encoder's internals: it asks the :class:`TaskContext` for the (cached)
features of a split and turns them into metrics. Every protocol is also callable on in-memory
arrays (``evaluate``), so a training loop or notebook runs exactly what the CLI runs.

Subclasses set:
- ``Options``: a dataclass of the task's own options (the suite keys ``name``, ``type``,
  ``dataset`` and ``encoders`` are handled by the suite, not here);
- ``protocol_version``: bumped whenever a change makes numbers incomparable with earlier ones;
- ``dataset_kinds``: the dataset kinds it accepts (``"classification"``, ``"sts"``, ...);
- ``main_metric(options)``: the key of the headline metric in ``metrics``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass
class TaskOutput:
    """What a task returns: flat ``metrics`` (name -> number), optional ``details`` and ``samples``."""

    metrics: dict[str, float]
    main_metric: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: files written next to the result as ``<task>.<name>`` (e.g. ``{"spectrum.png": b"..."}``)
    artifacts: dict[str, bytes] = dataclasses.field(default_factory=dict)
    #: per-sample outcomes, so CIs and paired tests can be computed (now and after the fact):
    #: ``{"kind", "arrays": {name: array [n] or rows [n, ...], all one length n}, "metrics": {metric:
    #: (statistic, [array names])}, "groups": optional int [n]}``, built with
    #: :func:`clbench.stats.samples.task_samples` (invalid outcomes become ``unavailable`` instead
    #: of failing the cell). Empty when the protocol has none, or
    #: ``{"unavailable": "why"}`` to record the reason. The runner writes the arrays to
    #: ``<task>.samples.npz`` and a bootstrap CI of the main metric into the result.
    samples: dict[str, Any] = dataclasses.field(default_factory=dict)


class TaskContext:
    """What the runner hands a task: cached features, the device, the seed, the dataset.

    ``features(split)`` returns ``(x, y)``: float32 features [N, D] (numpy, possibly memory
    mapped) and the split's labels (or None).
    """

    def __init__(
        self,
        *,
        features: Callable[[str], tuple[np.ndarray, np.ndarray | None]],
        dataset: Any,
        encoder: Any,
        device: str = "cpu",
        seed: int = 0,
        cache_dir: Any = None,
        console: Any = None,
        dist: Any = None,
    ):
        self._features = features
        #: under torchrun, for a task with ``collective = True``: the ranks' handle
        #: (:class:`clbench.distributed.CellGroup`), every rank running the task together; else None
        self.dist = dist
        #: the run's cache folder (training state of dense tasks lives under it); None: the default
        self.cache_dir = cache_dir
        #: the run's rich console (progress bars), or None when not attached to a terminal
        self.console = console
        self.dataset = dataset
        self.encoder = encoder
        self.device = device
        self.seed = seed

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray | None]:
        return self._features(split)


class Task:
    Options: ClassVar[type]
    protocol_version: ClassVar[str] = "1"
    dataset_kinds: ClassVar[tuple[str, ...]] = ("classification",)
    #: the splits whose features the task reads (for capability checks and pre-extraction)
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    #: False for tasks that bring their own data (e.g. the MTEB bridge): no ``dataset`` key needed
    needs_dataset: ClassVar[bool] = True
    #: the encoder modality the task needs; None means "the dataset's modality"
    modality: ClassVar[str | None] = None
    #: several modalities the encoder must take (e.g. ("image", "text") for zero-shot); overrides
    #: ``modality`` when set
    modalities: ClassVar[tuple[str, ...] | None] = None
    #: options that change how the numbers are computed but not the numbers (block sizes, loader
    #: workers, a similarity pass proven to give identical neighbours): left out of the
    #: comparability hash, so cells differing only in them stay side by side in a table
    execution_options: ClassVar[tuple[str, ...]] = ()
    #: True: under torchrun every rank runs the task's cells together (``ctx.dist``, see
    #: :mod:`clbench.distributed`); False: rank 0 runs them alone
    collective: ClassVar[bool] = False

    def __init__(self, options: Any, *, name: str = "task"):
        self.options = options
        self.name = name

    @classmethod
    def main_metric(cls, options: Any) -> str:
        raise NotImplementedError

    def run(self, ctx: TaskContext) -> TaskOutput:
        raise NotImplementedError


class ClassificationTask(Task):
    """A protocol on train/test features of a classification dataset.

    Subclasses implement the classmethod ``evaluate(x_train, y_train, x_test, y_test, options,
    *, device, seed) -> TaskOutput``; ``run`` feeds it the cached features.
    """

    dataset_kinds = ("classification",)
    splits = ("train", "test")
    #: the task type, used in error messages
    type_name: ClassVar[str] = "classification"

    @classmethod
    def num_classes(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> int:
        """Check the splits agree (shapes, labels seen in training) and count the classes."""
        from ..errors import DataError
        from ..metrics.classification import check_classification_splits

        try:
            return check_classification_splits(x_train, y_train, x_test, y_test)
        except ValueError as err:
            raise DataError(f"{cls.type_name}: {err}") from None

    def run(self, ctx: TaskContext) -> TaskOutput:
        x_train, y_train = ctx.features("train")
        x_test, y_test = ctx.features("test")
        return self.evaluate(x_train, y_train, x_test, y_test, self.options, device=ctx.device, seed=ctx.seed)
