"""Checkpoint reading, format adapters and strict loading with a coverage report.

- :mod:`.io`: ``read_checkpoint`` (safe by default) and ``file_digest`` (sha256, memoised);
- :mod:`.formats`: ``extract_backbone`` / ``detect_format`` for each method's saved layout;
- :mod:`.coverage`: ``load_backbone``, strict loading that reports what was loaded and dropped.

Nothing here imports torch until a function that needs it runs.

>>> report = load_checkpoint(model, "dino_full_checkpoint.pth", head=["head.*"])  # doctest: +SKIP
>>> report["format"], report["counts"]["missing"]                                 # doctest: +SKIP
('dino', 0)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .coverage import load_backbone
from .formats import FORMAT_NAMES, LAYOUTS, detect_format, extract_backbone
from .io import file_digest, read_checkpoint

__all__ = [
    "FORMAT_NAMES",
    "LAYOUTS",
    "detect_format",
    "extract_backbone",
    "file_digest",
    "load_backbone",
    "load_checkpoint",
    "read_checkpoint",
]


def load_checkpoint(
    model: Any,
    path: str | os.PathLike,
    *,
    fmt: str = "auto",
    checkpoint_key: str | None = None,
    trust: bool = False,
    allow_missing: Sequence[str] = (),
    head: Sequence[str] = (),
) -> dict[str, Any]:
    """Read ``path``, extract its backbone and load it strictly into ``model``: the coverage report."""
    from ..errors import CheckpointError

    obj = read_checkpoint(path, trust=trust)
    try:
        state_dict, info = extract_backbone(obj, fmt, checkpoint_key)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    report = load_backbone(
        model,
        state_dict,
        allow_missing=allow_missing,
        dropped=info["dropped"],
        head=head,
        info=info,
        source=str(path),
    )
    report["sha256"] = file_digest(path)
    return report
