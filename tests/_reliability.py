"""Recorder of injected faults and hostile inputs, for RELIABILITY.md.

A reliability test calls :func:`record` after its assertions passed, with the fault it injected,
how many times, and the outcome it verified. When ``CLBENCH_RELIABILITY_LOG`` names a file, one
JSON line is appended to it per call (``benchmarks/reliability_table.py`` sets it, runs the tests
and turns the lines into a table); otherwise nothing is written.
"""

from __future__ import annotations

import json
import os

ENV = "CLBENCH_RELIABILITY_LOG"


def record(fault: str, outcome: str, *, injections: int = 1, category: str = "fault") -> None:
    """Log that ``fault`` was injected ``injections`` times and ``outcome`` was verified."""
    path = os.environ.get(ENV)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    line = json.dumps({"category": category, "fault": fault, "injections": int(injections),
                       "outcome": outcome, "test": test})
    with open(path, "a", encoding="utf-8") as f:  # O_APPEND: one whole line per write
        f.write(line + "\n")
