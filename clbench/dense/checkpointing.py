"""Resumable training state for long dense-transfer runs (detection, segmentation).

A fine-tuning run saves its whole state (model, optimizer, LR scheduler, AMP scaler, iteration,
and the torch / numpy / Python RNG states) every ``every`` iterations into
``<cache>/dense-state/<key[:2]>/<key>.pt``, written atomically (a temporary file and a rename, so
an interruption leaves the previous state or the new one, never half a file). The key comes from
the cell (encoder fingerprint, dataset fingerprint, task options, seed): a re-run of the same
cell resumes where the interrupted one stopped, a different cell never picks it up. After the
cell finishes the state is deleted (``clear``), unless the task keeps the trained weights.

Files are read with ``torch.load(weights_only=True)``: they hold only tensors and plain
containers, so nothing in the cache can run code. A state that cannot be read (truncated by a
crash before this module wrote it, or from an incompatible version) is removed and training
starts over.

>>> ckpt = TrainingCheckpoint(training_key(cell="..."), every=100)               # doctest: +SKIP
>>> start = ckpt.restore(model=model, optimizer=opt, scheduler=sched)           # doctest: +SKIP
>>> for it in range(start, iterations):                                         # doctest: +SKIP
...     step(); ckpt.maybe_save(it + 1, model=model, optimizer=opt, scheduler=sched)
>>> ckpt.clear()                                                                # doctest: +SKIP
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np

from ..options import stable_hash

STATE_FORMAT = 1


def training_key(**parts: Any) -> str:
    """A stable 32-hex key for a training run from JSON-serialisable parts."""
    return stable_hash({"format": STATE_FORMAT, **parts}, n=32)


def state_root(cache_root: Path | str | None = None) -> Path:
    """``<cache>/dense-state``; the cache defaults to the feature cache's default folder."""
    from ..features import default_cache_dir

    return Path(cache_root if cache_root is not None else default_cache_dir()) / "dense-state"


def rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingCheckpoint:
    """Save / restore / clear the training state of one run, under ``key`` in the cache."""

    def __init__(self, key: str, *, root: Path | str | None = None, every: int = 500):
        if every < 1:
            raise ValueError("every: expected a positive number of iterations")
        self.key = key
        self.every = int(every)
        self.path = state_root(root) / key[:2] / f"{key}.pt"

    def exists(self) -> bool:
        return self.path.is_file()

    def save(
        self,
        iteration: int,
        *,
        model: Any,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the state after ``iteration`` completed iterations (atomically)."""
        import torch

        from ..results.store import atomic_write_bytes

        state = {
            "format": STATE_FORMAT,
            "iteration": int(iteration),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def maybe_save(self, iteration: int, **kw: Any) -> bool:
        """Save when ``iteration`` is a multiple of ``every``; whether it saved."""
        if iteration % self.every:
            return False
        self.save(iteration, **kw)
        return True

    def restore(
        self,
        *,
        model: Any,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        map_location: str = "cpu",
    ) -> int:
        """Load a saved state into the given objects; the iteration to start from (0: none saved).

        The ``extra`` mapping saved with the state is left in ``self.extra``.
        """
        import torch

        self.extra: dict[str, Any] = {}
        if not self.path.is_file():
            return 0
        try:
            state = torch.load(self.path, map_location=map_location, weights_only=True)
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"state format {state.get('format')!r}")
            model.load_state_dict(state["model"])
            if optimizer is not None and state["optimizer"] is not None:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except Exception:  # unreadable or incompatible: start over rather than fail the cell
            self.clear()
            return 0
        self.extra = dict(state.get("extra") or {})
        return int(state["iteration"])

    def clear(self) -> None:
        """Remove the saved state (after the cell finished)."""
        self.path.unlink(missing_ok=True)


__all__ = ["TrainingCheckpoint", "rng_state", "set_rng_state", "state_root", "training_key"]


def optimizer_step(
    loss: Any, optimizer: Any, scaler: Any = None, *, params: Any = None, clip_grad_norm: float | None = None,
    what: str = "training", iteration: int = 0,
) -> float:
    """One step of a training loop: check the loss is finite, backward (through the AMP grad
    scaler when there is one), clip the gradient norm of ``params`` when asked, step. Returns the
    loss as a float."""
    import math

    import torch

    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{what}: loss is {value} at iteration {iteration}; lower lr or add warm-up")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
    return value
