"""Cells that differ only in how numbers are computed stay comparable; protocol changes do not."""

from __future__ import annotations

import textwrap

from clbench.runner import cell_options
from clbench.suite import load_suite


def _hashes(tmp_path, knn_opts: str) -> tuple[str, str]:
    (tmp_path / "s.yaml").write_text(textwrap.dedent(f"""\
        suite: s
        encoders: {{pixels: {{type: identity}}}}
        datasets: {{digits: {{type: sklearn-digits}}}}
        tasks: [{{name: knn, type: knn, dataset: digits{knn_opts}}}]
    """))
    suite = load_suite(tmp_path / "s.yaml")
    _, options_hash, comparability = cell_options(suite, "pixels", suite.tasks[0])
    return options_hash, comparability


def test_execution_options_stay_out_of_the_comparability_hash(tmp_path):
    base_opts, base_cmp = _hashes(tmp_path, "")
    for extra in (", precision: fp32", ", precision: bf16-prefilter", ", chunk_size: 128"):
        opts, cmp = _hashes(tmp_path, extra)
        assert cmp == base_cmp, extra  # same numbers: side by side in a table, gateable
        assert opts != base_opts, extra  # but a re-run with the new setting recomputes
    for extra in (", k: [5]", ", temperature: 0.1"):
        _, cmp = _hashes(tmp_path, extra)
        assert cmp != base_cmp, extra  # a different protocol is never mixed in silently
