"""The MTEB bridge: run any text task of the ``mteb`` package (2.x) with a clbench text encoder.

The task brings its own data (``needs_dataset = False``): MTEB loads it through Hugging Face
``datasets``, so offline runs work when the data is already in the local cache (set
``HF_HUB_OFFLINE=1`` to stop it from trying the network). The encoder is wrapped in an adapter
that implements MTEB's encoder protocol: MTEB's batches of texts go to
``encoder.encode(texts, "text", role)`` with role ``"query"`` / ``"document"`` as MTEB's prompt
type says (``None`` for symmetric tasks such as STS), and MTEB scores with the encoder's
``similarity`` (cosine or dot).

``task_name`` is an MTEB task name (``"SciFact"``, ``"STSBenchmark"``), the name of one of
MTEB's own mock tasks (``"MockRetrievalTask"``: tiny, in memory, for offline smoke checks), or
``"package.module:Class"`` for a task class of your own (e.g. one built from local files).

Metrics are MTEB's scores, flattened: with one evaluated (split, subset) pair they keep MTEB's
names (``ndcg_at_10``, ``cosine_spearman``); with several, each name holds the mean over the
pairs and ``<split>/<subset>/<name>`` the single values. ``main_score`` is MTEB's main score
(mean over pairs, as MTEB aggregates it) unless ``main_score`` names another metric.
mteb is imported only when the task runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from typing import Any

import numpy as np

from ..errors import CapabilityError, ConfigError, DataError
from ..options import option
from .base import Task, TaskContext, TaskOutput


@dataclasses.dataclass
class MtebOptions:
    task_name: str = option(help="MTEB task name, an mteb mock task name, or package.module:Class")
    split: str | None = option(None, "evaluate only this split (default: the task's eval splits)")
    # option() gives list defaults a default_factory, so no instance shares a mutable default
    languages: list[str] | None = option(None, "keep only these languages, e.g. [eng] or [eng-Latn]")
    main_score: str | None = option(None, "report this MTEB metric as main instead of the task's main score")

    def validate(self) -> None:
        if not self.task_name.strip():
            raise ValueError("task_name: expected an MTEB task name")


class MtebTask(Task):
    """Runs one MTEB task through an adapter around the clbench text encoder."""

    Options = MtebOptions
    protocol_version = "1"
    dataset_kinds = ()
    splits = ()
    needs_dataset = False
    modality = "text"

    @classmethod
    def main_metric(cls, options: Any) -> str:
        return options.main_score or "main_score"

    def run(self, ctx: TaskContext) -> TaskOutput:
        import mteb

        t0 = time.perf_counter()
        task = load_mteb_task(self.options.task_name, split=self.options.split, languages=self.options.languages)
        modalities = set(getattr(task.metadata, "modalities", ["text"]) or ["text"])
        if modalities - {"text"}:
            raise CapabilityError(
                f"MTEB task {task.metadata.name!r} needs {', '.join(sorted(modalities))} inputs; "
                "the mteb bridge passes text only"
            )
        ctx.encoder.setup(ctx.device)
        adapter = make_adapter(ctx.encoder)
        loaded_here = not task.data_loaded
        if loaded_here:
            try:
                task.load_data()
            except Exception as err:  # datasets raises many kinds (connection, missing cache, ...)
                raise DataError(
                    f"MTEB task {task.metadata.name!r}: cannot load its data ({type(err).__name__}: {err}). "
                    "Offline, the data must already be in the Hugging Face cache (HF_HUB_OFFLINE=1)."
                ) from err
        load_s = time.perf_counter() - t0
        quiet = _QuietDatasets()
        try:
            batch = int(getattr(ctx.encoder.options, "batch_size", 32))
            result = mteb.evaluate(
                adapter, task, cache=None, co2_tracker=False, show_progress_bar=False,
                encode_kwargs={"batch_size": batch, "show_progress_bar": False}, raise_error=True,
            )
        finally:
            quiet.restore()
            if loaded_here and task.data_loaded:
                task.unload_data()
        (task_result,) = result.task_results
        metrics, pairs = flatten_scores(task_result.scores)
        mteb_main = task.metadata.main_score
        wanted = self.options.main_score or mteb_main
        if wanted not in metrics:
            known = ", ".join(sorted(k for k in metrics if "/" not in k))
            raise ConfigError(f"MTEB task {task.metadata.name!r} has no metric {wanted!r} (has: {known})",
                              key="main_score")
        main_key = self.main_metric(self.options)
        metrics[main_key] = metrics[wanted]
        details = {
            "mteb_task": task.metadata.name,
            "mteb_type": task.metadata.type,
            "mteb_main_score": mteb_main,
            "mteb_version": getattr(mteb, "__version__", None),
            "evaluated": [f"{s}/{h}" for s, h in pairs],
            "dataset": dict(task.metadata.dataset) if task.metadata.dataset else None,
        }
        return TaskOutput(
            metrics=metrics, main_metric=main_key, details=details,
            timings={"data_load_s": load_s, "fit_s": time.perf_counter() - t0},
            # mteb's evaluators return aggregate scores only (no per-sample outcomes to resample)
            samples={"unavailable": "mteb reports aggregate scores only: no per-sample outcomes, no CI"},
        )


def load_mteb_task(name: str, *, split: str | None = None, languages: list[str] | None = None):
    """An MTEB task object: a registered task, an mteb mock task, or ``module:Class``."""
    import mteb

    splits = [split] if split else None
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import MTEB task {name!r}: {err}", key="task_name") from None
        task = target() if isinstance(target, type) else target
    else:
        try:
            return mteb.get_task(name, languages=languages or None, eval_splits=splits)
        except KeyError as err:
            from mteb import mocks

            target = getattr(mocks, name, None)
            if not (isinstance(target, type) and name.startswith("Mock")):
                raise ConfigError(f"unknown MTEB task {name!r} ({err.args[0] if err.args else err})",
                                  key="task_name") from None
            task = target()
    if languages:
        task = task.filter_languages(languages)
    if splits:
        if split not in task.metadata.eval_splits:
            raise ConfigError(
                f"MTEB task {task.metadata.name!r} has no split {split!r} "
                f"(has: {', '.join(task.metadata.eval_splits)})", key="split"
            )
        task = task.filter_eval_splits(splits)
    return task


def make_adapter(encoder: Any):
    """Wrap a clbench text encoder (already set up) as an mteb 2.x encoder (``AbsEncoder``)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    from ..options import stable_hash

    similarity = getattr(encoder, "similarity", "cosine")
    scoring = {"cosine": ScoringFunction.COSINE, "dot": ScoringFunction.DOT_PRODUCT}.get(similarity)
    if scoring is None:
        raise CapabilityError(f"encoder similarity {similarity!r} has no MTEB equivalent (cosine or dot)")
    meta = ModelMeta.create_empty(
        overwrites={
            "name": f"clbench/{getattr(encoder, 'name', 'encoder')}",
            "revision": stable_hash(encoder.fingerprint()),
            "similarity_fn_name": scoring,
            "embed_dim": encoder.embed_dim,
            "modalities": ["text"],
        }
    )

    class ClbenchEncoder(AbsEncoder):
        """MTEB's encoder protocol over ``encoder.encode(texts, "text", role)``."""

        def __init__(self) -> None:
            self.model = encoder
            self.mteb_model_meta = meta

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            import torch

            role = getattr(prompt_type, "value", prompt_type)
            texts: list[str] = []
            for batch in inputs:
                if "text" not in batch:
                    raise CapabilityError(
                        f"MTEB task {task_metadata.name!r} sent {sorted(batch)} inputs; the bridge passes text only"
                    )
                texts.extend(batch["text"])
            if not texts:
                return np.zeros((0, encoder.embed_dim or 0), dtype=np.float32)
            step = getattr(encoder, "chunk_size", None) or len(texts)
            parts = []
            with torch.inference_mode():
                for start in range(0, len(texts), step):
                    out = encoder.encode(texts[start : start + step], "text", role)
                    if isinstance(out, torch.Tensor):
                        out = out.detach().float().cpu().numpy()
                    parts.append(np.asarray(out, dtype=np.float32))
            return np.concatenate(parts)

    return ClbenchEncoder()


class _QuietDatasets:
    """Silence the ``datasets`` progress bars MTEB triggers (one per corpus map), then restore them."""

    def __init__(self) -> None:
        try:
            from datasets.utils import logging as dlog
        except ImportError:  # pragma: no cover - mteb depends on datasets
            self._dlog = None
            return
        self._dlog = dlog
        self._was = dlog.is_progress_bar_enabled()
        dlog.disable_progress_bar()

    def restore(self) -> None:
        if self._dlog is not None and self._was:
            self._dlog.enable_progress_bar()


def flatten_scores(scores: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """MTEB's ``{split: [{metric: value, hf_subset: ...}, ...]}`` as flat finite numbers (see module doc)."""
    entries: list[tuple[str, str, dict[str, float]]] = []
    for split, subsets in scores.items():
        for sub in subsets:
            flat: dict[str, float] = {}
            _flatten_into(flat, "", {k: v for k, v in sub.items() if k not in ("hf_subset", "languages")})
            entries.append((split, str(sub.get("hf_subset", "default")), flat))
    pairs = [(s, h) for s, h, _ in entries]
    if len(entries) == 1:
        return entries[0][2], pairs
    out: dict[str, float] = {}
    names: dict[str, list[float]] = {}
    for split, subset, flat in entries:
        for name, value in flat.items():
            out[f"{split}/{subset}/{name}"] = value
            names.setdefault(name, []).append(value)
    for name, values in names.items():
        out[name] = float(np.mean(values))
    return out, pairs


def _flatten_into(out: dict[str, float], prefix: str, obj: Any) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten_into(out, f"{prefix}.{k}" if prefix else str(k), v)
        return
    if hasattr(obj, "item") and np.ndim(obj) == 0:
        obj = obj.item()
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        return
    if math.isfinite(obj):
        out[prefix] = float(obj)


__all__ = ["MtebOptions", "MtebTask", "flatten_scores", "load_mteb_task", "make_adapter"]
