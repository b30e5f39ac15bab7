"""The public Python API: the same protocols the CLI runs, callable from a notebook or a loop.

>>> from clbench import evaluate_features
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 16)).astype("float32"); y = (x[:, 0] > 0).astype(int)
>>> out = evaluate_features("knn", x[:150], y[:150], x[150:], y[150:], k=[10])
>>> out.main_metric
'top1@k10'
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .options import parse_options
from .registry import TASKS


def run_suite(
    path: str | Path,
    *,
    only_encoders: list[str] | None = None,
    only_tasks: list[str] | None = None,
    force: bool = False,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    console: Any = None,
):
    """Validate and run the suite file at ``path``; returns a :class:`clbench.runner.RunSummary`.

    Results are written to ``<output>/<suite>/<encoder>/<task>.json`` exactly as ``clbench run``
    writes them.
    """
    from .runner import Runner
    from .suite import load_suite

    suite = load_suite(path)
    runner = Runner(suite, device=device, force=force, cache_dir=Path(cache_dir) if cache_dir else None,
                    console=console, progress=console is not None)
    return runner.run(only_encoders, only_tasks)


def evaluate(
    encoder: dict[str, Any],
    dataset: dict[str, Any],
    task: dict[str, Any],
    *,
    output: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate one encoder on one task, both given as suite-style option dicts (with ``type``).

    Returns the result dict (also written under ``output``, a temporary folder by default).
    Relative paths resolve against ``root`` (default: the current folder).
    """
    from .runner import Runner
    from .suite import check_sources, parse_suite

    root = Path(root) if root is not None else Path.cwd()
    out = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="clbench-"))
    data = {
        "suite": "api",
        "output": str(out.resolve()),
        "seed": seed,
        "device": device,
        "encoders": {"encoder": encoder},
        "datasets": {"dataset": dataset},
        "tasks": [{"name": "task", "dataset": "dataset", **task}],
    }
    suite = parse_suite(data, root / "<api>")
    check_sources(suite)
    runner = Runner(suite, cache_dir=Path(cache_dir) if cache_dir else None, progress=False)
    summary = runner.run()
    from .results.store import read_result

    return read_result(summary.cells[0].path)


def evaluate_features(
    task_type: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    device: str = "cpu",
    seed: int = 0,
    **options: Any,
):
    """Run a classification protocol (``knn``, ``linear_probe``) on in-memory features.

    Options are the task's suite options (e.g. ``k=[20]``, ``temperature=0.07``). Returns the
    task's :class:`clbench.tasks.base.TaskOutput` (``metrics``, ``main_metric``, ``details``).
    """
    cls = TASKS.get(task_type)
    opts = parse_options(cls.Options, options)
    return cls.evaluate(
        np.asarray(x_train, dtype=np.float32), np.asarray(y_train), np.asarray(x_test, dtype=np.float32),
        np.asarray(y_test), opts, device=device, seed=seed,
    )
