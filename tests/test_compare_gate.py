"""``clbench compare`` and the noise-aware ``clbench gate`` on result folders with per-sample sidecars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clbench.cli import app
from clbench.results.compare import compare, significance_mark
from clbench.results.gate import gate
from clbench.results.store import SCHEMA_VERSION, cell_path, write_result
from clbench.stats import cell_cis, make_samples, write_sidecar

N = 1000


def correct_base(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(N) < 0.8


def flipped(base: np.ndarray, lose: int, gain: int, seed: int = 1) -> np.ndarray:
    """``base`` with ``lose`` correct samples made wrong and ``gain`` wrong ones made right."""
    rng = np.random.default_rng(seed)
    out = base.copy()
    out[rng.choice(np.flatnonzero(base), lose, replace=False)] = False
    out[rng.choice(np.flatnonzero(~base), gain, replace=False)] = True
    return out


def write_cell(root: Path, encoder: str, task: str = "knn", correct: np.ndarray | None = None, *,
               status: str = "ok", sidecar: bool = True, value: float | None = None, ci: dict | None = None) -> Path:
    path = cell_path(root, "demo", encoder, task)
    result = {
        "schema_version": SCHEMA_VERSION, "suite": "demo", "encoder": encoder, "task": task, "task_type": "knn",
        "dataset": "digits", "status": status, "reason": "boom" if status == "failed" else None,
        "error": None, "metrics": {}, "main_metric": "top1@k20", "main_value": None, "protocol_version": "1",
        "options": {}, "options_hash": f"o-{encoder}", "comparability_hash": "cmp-knn", "seed": 0,
        "fingerprints": {"dataset": "digits-fp"}, "details": {},
    }
    if status == "ok":
        if correct is not None:
            result["main_value"] = float(correct.mean())
            samples = make_samples("correct", {"top1@k20": correct}, {"top1@k20": ("mean", ["top1@k20"])})
            main, _, _ = cell_cis(samples, "top1@k20")
            result["ci"] = {"main": main}
            if sidecar:
                result["samples"] = write_sidecar(path, samples)
        else:
            result["main_value"] = value
            result["ci"] = {"main": ci} if ci else None
        result["metrics"] = {"top1@k20": result["main_value"]}
    write_result(path, result)
    return root


@pytest.fixture
def folders(tmp_path):
    base = correct_base()
    noisy = flipped(base, lose=12, gain=6)  # a re-run that moves a few samples: -0.006
    drop = flipped(base, lose=60, gain=5)  # a real regression: -0.055
    baseline = write_cell(tmp_path / "baseline", "enc", correct=base)
    write_cell(baseline, "other", correct=base)
    same = write_cell(tmp_path / "same", "enc", correct=noisy)
    write_cell(same, "other", correct=base)
    worse = write_cell(tmp_path / "worse", "enc", correct=drop)
    write_cell(worse, "other", correct=base)
    return {"baseline": baseline, "same": same, "worse": worse, "base": base, "noisy": noisy, "drop": drop}


def row(outcome, encoder="enc"):
    return next(r for r in outcome.rows if r.encoder == encoder)


def test_gate_passes_a_change_within_the_noise(folders):
    outcome = gate(folders["same"], folders["baseline"], max_drop=0.001)
    assert outcome.passed, outcome.markdown
    r = row(outcome)
    assert r.verdict == "pass" and r.delta == pytest.approx(-0.006)
    assert r.ci_method == "paired-bootstrap" and r.ci_low < 0 < r.ci_high
    assert r.noise > 0.006 and "within the noise" in r.reason
    line = next(ln for ln in outcome.markdown.splitlines() if "demo/enc/knn" in ln)
    assert f"-0.0060 [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" in line and "| pass: within the noise" in line
    # the same change without noise awareness is a regression beyond the tolerance
    strict = gate(folders["same"], folders["baseline"], max_drop=0.001, noise=False)
    assert not strict.passed and row(strict).verdict == "regression"


def test_gate_fails_a_real_drop_and_says_why(folders):
    outcome = gate(folders["worse"], folders["baseline"], max_drop=0.001)
    assert not outcome.passed
    r = row(outcome)
    assert r.verdict == "regression" and r.delta == pytest.approx(-0.055)
    assert r.ci_high < 0 and 0 < r.noise < 0.055
    assert f"fell by 0.0550, more than max(tolerance 0.0010, noise {r.noise:.4f})" in r.reason
    md = outcome.markdown
    assert md.startswith("**clbench gate: FAILED**: 1 of 2 baseline cells fail (max drop 0.001, or the noise")
    b, w = folders["base"].mean(), folders["drop"].mean()
    assert f"| demo/enc/knn | top1@k20 | {b:.4f} | {w:.4f} | -0.0550 [" in md and "**FAIL** regression" in md
    assert row(outcome, "other").verdict == "pass"
    # a tolerance above the drop passes it whatever the noise
    assert gate(folders["worse"], folders["baseline"], max_drop=0.06).passed


def test_gate_fails_missing_and_failed_cells(folders, tmp_path):
    cur = write_cell(tmp_path / "cur", "enc", correct=folders["base"])  # "other" missing
    outcome = gate(cur, folders["baseline"])
    assert not outcome.passed and row(outcome, "other").verdict == "missing"
    base = folders["base"].mean()
    assert f"| demo/other/knn | top1@k20 | {base:.4f} | missing |  | **FAIL** missing" in outcome.markdown
    write_cell(cur, "other", status="failed")
    outcome = gate(cur, folders["baseline"])
    assert not outcome.passed and row(outcome, "other").verdict == "failed"
    assert "current run failed: boom" in outcome.markdown


def test_gate_uses_stored_cis_without_sidecars_and_survives_a_stale_one(folders, tmp_path):
    base = write_cell(tmp_path / "b", "enc", value=0.80, ci={"low": 0.78, "high": 0.82, "level": 0.95})
    cur = write_cell(tmp_path / "c", "enc", value=0.79, ci={"low": 0.77, "high": 0.81, "level": 0.95})
    r = row(gate(cur, base, max_drop=0.0))
    assert r.verdict == "pass" and r.ci_method == "normal-from-cis"
    assert r.noise == pytest.approx(np.hypot(0.02, 0.02))
    no_ci = write_cell(tmp_path / "n", "enc", value=0.79)
    r = row(gate(no_ci, base, max_drop=0.0))
    assert r.verdict == "regression" and "noise not measured" in r.reason
    # a sidecar overwritten by another run: its checksum no longer matches; the gate falls back
    stale = write_cell(tmp_path / "s", "enc", correct=folders["noisy"])
    write_cell(tmp_path / "s2", "enc", correct=folders["base"])
    (tmp_path / "s2/demo/enc/knn.samples.npz").replace(stale / "demo/enc/knn.samples.npz")
    outcome = gate(stale, folders["baseline"], max_drop=0.001)
    r = row(outcome)
    assert r.ci_method == "normal-from-cis"  # the stored CIs, not the stale per-sample outcomes
    from clbench.results.compare import compare as cmp

    d = next(c for c in cmp(folders["baseline"], stale).cells if c.encoder_a == "enc")
    assert "stale" in d.note


def test_gate_rejects_a_bad_level(folders):
    with pytest.raises(ValueError, match="level"):
        gate(folders["same"], folders["baseline"], level=1.0)


def test_compare_two_folders_with_marks_and_mcnemar(folders):
    scipy_stats = pytest.importorskip("scipy.stats")
    out = compare(folders["baseline"], folders["worse"])
    d = next(c for c in out.cells if c.encoder_a == "enc")
    assert d.delta == pytest.approx(-0.055) and d.method == "paired-bootstrap"
    assert d.high < 0 and d.p_value < 0.01 and d.mcnemar_discordant == (60, 5)
    assert d.mcnemar_p == pytest.approx(scipy_stats.binomtest(5, 65).pvalue, rel=1e-9)
    assert d.mark == "**"
    same = next(c for c in out.cells if c.encoder_a == "other")
    assert same.delta == 0 and same.p_value == 1.0 and same.mark == "" and same.mcnemar_p == 1.0
    md = out.markdown()
    b, w = folders["base"].mean(), folders["drop"].mean()
    assert f"| demo/knn (enc) | top1@k20 | {b:.4f} | {w:.4f} | -0.0550** | [" in md and "<0.001" in md
    payload = json.loads(out.json())
    assert payload["level"] == 0.95 and {c["mark"] for c in payload["cells"]} == {"**", ""}


def test_compare_two_encoders_in_one_folder(folders, tmp_path):
    root = write_cell(tmp_path / "one", "a", correct=folders["base"])
    write_cell(root, "b", correct=folders["noisy"])
    out = compare(root, encoders=("a", "b"))
    (d,) = out.cells
    assert (d.encoder_a, d.encoder_b) == ("a", "b") and d.delta == pytest.approx(-0.006)
    assert d.low < 0 < d.high and d.mark == "" and d.mcnemar_discordant == (12, 6)
    out = compare(root, encoders=("a", "nope"))
    assert out.cells[0].status == "missing" and any("nope" in n for n in out.notes)
    with pytest.raises(ValueError):
        compare(root)


def test_significance_marks():
    assert [significance_mark(p) for p in (0.2, 0.04, 0.009, None, float("nan"))] == ["", "*", "**", "", ""]


def test_cli_compare_and_gate(folders, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(folders["baseline"]), str(folders["worse"]), "--level", "0.9"])
    assert res.exit_code == 0, res.output
    assert "90% CI" in res.output and "-0.0550**" in res.output
    res = runner.invoke(app, ["compare", str(folders["baseline"]), "--encoders", "enc", "other", "-f", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["cells"][0]["delta"] == 0.0
    res = runner.invoke(app, ["compare", str(folders["baseline"])])
    assert res.exit_code == 2
    summary = tmp_path / "summary.md"
    res = runner.invoke(app, ["gate", str(folders["same"]), "--baseline", str(folders["baseline"]),
                              "--max-drop", "0.001", "-o", str(summary)])
    assert res.exit_code == 0, res.output
    assert summary.read_text().startswith("**clbench gate: PASSED**")
    res = runner.invoke(app, ["gate", str(folders["same"]), "--baseline", str(folders["baseline"]),
                              "--max-drop", "0.001", "--no-noise"])
    assert res.exit_code == 1 and "**FAIL** regression" in res.output
    res = runner.invoke(app, ["gate", str(folders["worse"]), "--baseline", str(folders["baseline"])])
    assert res.exit_code == 1


def test_compare_and_gate_never_import_torch(folders):
    code = (
        "import sys; from typer.testing import CliRunner; from clbench.cli import app; r = CliRunner(); "
        f"a = r.invoke(app, ['compare', {str(folders['baseline'])!r}, {str(folders['worse'])!r}]); "
        f"b = r.invoke(app, ['gate', {str(folders['worse'])!r}, '--baseline', {str(folders['baseline'])!r}]); "
        "assert a.exit_code == 0 and b.exit_code == 1, (a.output, b.output); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_ci_gate_doc_workflow_parses_and_its_example_is_what_the_gate_prints(folders, tmp_path):
    import yaml

    text = (DOCS / "ci_gate.md").read_text()
    blocks = text.split("```yaml\n")[1:]
    workflow = yaml.safe_load(next(b.split("```")[0] for b in blocks if "jobs:" in b))
    runs = " ".join(step.get("run", "") for step in workflow["jobs"]["gate"]["steps"])
    assert "clbench run suites/quickstart.yaml" in runs
    assert "clbench gate results/quickstart --baseline baselines/quickstart" in runs
    # the example summary in the doc is the gate's real output on the test folders
    cur = write_cell(tmp_path / "cur", "enc", correct=folders["drop"])
    write_cell(cur, "other", correct=folders["noisy"])
    printed = gate(cur, folders["baseline"], max_drop=0.001).markdown
    for line in printed.strip().splitlines():
        assert line in text, line
