"""Every suite shipped in suites/ is valid; the offline ones also pass the file checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))
OFFLINE = {"quickstart.yaml", "diagnostics.yaml"}  # need no user-provided files


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_shipped_suite_is_valid(path):
    suite = load_suite(path, check=path.name in OFFLINE)
    assert suite.name == path.stem
    assert suite.tasks and suite.encoders
