"""Small helpers shared by the tasks that train a model (detection, segmentation).

Torch-free: importing this module costs nothing at CLI start-up.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def progress_bar(console: Any) -> Any:
    """A rich Progress with the running loss and ETA, or None without a terminal."""
    if console is None or not getattr(console, "is_terminal", False):
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=True,
    )  # fmt: skip


def task_console(ctx: Any) -> Any:
    """The run's console; outside a run (the Python API) a stderr console when it is a terminal."""
    console = ctx.console
    if console is not None:
        return console
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from a JSON file (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, default=str))


def loss_curve(losses: list[float], points: int = 50) -> list[float]:
    """The loss curve as at most ``points`` window means (kept small for the result file)."""
    if not losses:
        return []
    chunks = np.array_split(np.asarray(losses, dtype=np.float64), min(points, len(losses)))
    return [round(float(c.mean()), 5) for c in chunks]
