"""RELIABILITY.md: every fault and hostile input the reliability tests inject, how often, and the
outcome they verified, taken from one run of those tests.

The tests call ``tests/_reliability.py:record(fault, outcome, injections=..., category=...)``
after their assertions passed; with ``CLBENCH_RELIABILITY_LOG`` set each call appends a JSON line.
This script runs the tests with that variable set, sums the lines per fault, adds rows for a few
tests in other files (the malicious pickle, unreadable checkpoints, corrupt cache entries) from
their pass/fail status in the same run, and writes the table.

    python benchmarks/reliability_table.py                 # -> RELIABILITY.md at the repo root
    python benchmarks/reliability_table.py --out /tmp/r.md

Exit status 1 when a test failed (the table then marks the failures).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDING = [
    "tests/test_interrupts.py",
    "tests/test_concurrency.py",
    "tests/test_hostile_inputs.py",
    "tests/test_security.py",
    "tests/test_fuzz_suites.py",
]
# tests in files that do not record: (node id prefix, category, fault, outcome they assert)
OTHERS = [
    ("tests/test_checkpoints.py::test_malicious_pickle_is_refused_by_default", "security",
     "checkpoint whose pickle runs code when loaded",
     ("refused by default (torch.load weights_only=True), error names the file and `trust_checkpoint: true`; "
     "the payload never runs")),
    ("tests/test_checkpoints.py::test_unreadable_files_name_the_file", "input",
     "unreadable checkpoint file (garbage, cut in half, empty, bad safetensors header)",
     "CheckpointError naming the file"),
    ("tests/test_checkpoints.py::test_missing_backbone_weight_is_an_error", "input",
     "checkpoint missing a backbone weight", "coverage error, nothing silently loaded"),
    ("tests/test_checkpoints.py::test_shape_mismatch_is_an_error", "input",
     "checkpoint with a mismatched weight shape", "coverage error naming the weight"),
    ("tests/test_runner.py::test_corrupted_cache_entry_is_recomputed", "disk",
     "feature-cache entries truncated on disk (x.npy cut)",
     "detected by checksum, discarded and recomputed; same metrics as before"),
    ("tests/test_runner.py::test_failed_cell_is_isolated_and_resumed", "fault",
     "encoder failing at set-up", "its cells fail with the reason, the other cells run; resumed later"),
]
CATEGORIES = {
    "interrupt": "Interrupts",
    "concurrency": "Concurrent runs",
    "disk": "Full disk, read-only folders, corrupt files",
    "input": "Hostile inputs",
    "fuzz": "Fuzzed suite files",
    "security": "Security",
    "fault": "Other faults",
}


def run_tests(log: Path, junit: Path, extra: list[str]) -> int:
    env = dict(os.environ, CLBENCH_RELIABILITY_LOG=str(log), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    nodes = RECORDING + [node for node, *_ in OTHERS]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra, *nodes]
    print("running:", " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode


def outcomes_of(junit: Path) -> dict[str, str]:
    """test node id -> passed | failed | skipped, from pytest's junit xml."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        node = f"{path}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out[node] = "failed"
        elif case.find("skipped") is not None:
            out[node] = "skipped"
        else:
            out[node] = "passed"
    return out


def build_rows(records: list[dict], results: dict[str, str]) -> list[dict]:
    groups: dict[tuple[str, str], dict] = {}
    for r in records:
        g = groups.setdefault((r["category"], r["fault"]), {
            "category": r["category"], "fault": r["fault"], "injections": 0,
            "outcomes": collections.Counter(), "tests": set(),
        })
        g["injections"] += r["injections"]
        g["outcomes"][r["outcome"]] += r["injections"]
        g["tests"].add(r["test"].split("[")[0])
    for prefix, category, fault, outcome in OTHERS:
        ran = {node: st for node, st in results.items() if node == prefix or node.startswith(prefix + "[")}
        if not ran:
            continue
        passed = sum(st == "passed" for st in ran.values())
        failed = sum(st == "failed" for st in ran.values())
        shown = outcome if not failed else f"**{failed} FAILED**; " + outcome
        groups[(category, fault)] = {
            "category": category, "fault": fault, "injections": passed + failed,
            "outcomes": collections.Counter({shown: passed + failed}), "tests": {prefix},
        }
    # a recording test that failed recorded nothing for its failing case: list it
    for node, st in results.items():
        if st == "failed" and any(node.startswith(f) for f in RECORDING):
            groups[("fault", node)] = {
                "category": "fault", "fault": f"`{node}`", "injections": 1,
                "outcomes": collections.Counter({"**TEST FAILED**": 1}), "tests": {node},
            }
    return sorted(groups.values(), key=lambda g: (list(CATEGORIES).index(g["category"])
                                                  if g["category"] in CATEGORIES else 99, g["fault"]))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict], results: dict[str, str], code: int) -> str:
    counts = collections.Counter(results.values())
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability",
        "",
        "Every fault and hostile input the reliability tests inject, how many times, and the outcome the",
        "tests verified. Generated from one test run by `python benchmarks/reliability_table.py`",
        (f"({when}; {counts['passed']} tests passed, {counts['failed']} failed, {counts['skipped']} skipped;"
        f" pytest exit status {code}). A row is written only after its assertions passed."),
        "",
        "Files: " + ", ".join(f"`{f}`" for f in RECORDING) + "; other rows come from the named tests' results.",
        "",
        "What clbench does, in short (the tests below check it):",
        "",
        "- **Killed runs**: results and cache entries are written to temporary names and renamed into",
        "  place; a re-run skips finished cells and removes temporary files and folders of dead processes",
        "  of this host.",
        "- **Concurrent runs** on one output and cache folder: each cell is computed under a lock file",
        "  (`.<task>.json.lock`, `fcntl.flock`, holder's host and pid inside; a killed holder's lock is free",
        "  at once). A cell locked by a live run is reported `waiting (running elsewhere)` and the run",
        "  goes on; at the end it waits for each such cell and reads its result (or computes it, if the",
        "  other run died without writing it), so every run ends with every cell done, each computed",
        "  once. Feature extraction is locked per cache entry: a second run waits, then reads it.",
        "- **Results folder unwritable** (full disk, read-only): the run stops with `error: <path>: ...`",
        "  (exit 2); results written earlier are intact.",
        "- **Feature cache unwritable**: not fatal; one warning, features kept in memory for the run,",
        "  `cache_error` recorded in the result.",
        "- **Undecodable images**: the cell fails naming the file, or with `on_decode_error: skip` on",
        "  the `imagefolder` dataset they are left out and counted in the result.",
        "",
    ]
    total = 0
    for category, title in CATEGORIES.items():
        group = [r for r in rows if r["category"] == category]
        if not group:
            continue
        lines += [f"## {title}", "", "| fault / input | injected | outcome | test |", "|:--|--:|:--|:--|"]
        for r in group:
            outcome = "; ".join(
                f"{o} ({n})" if len(r["outcomes"]) > 1 else o for o, n in r["outcomes"].most_common()
            )
            tests = ", ".join(f"`{t.split('::')[-1]}`" for t in sorted(r["tests"]))
            lines.append(f"| {_cell(r['fault'])} | {r['injections']} | {_cell(outcome)} | {tests} |")
            total += r["injections"]
        lines.append("")
    lines.append(f"Total injections: {total}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -x)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log, junit = Path(tmp) / "records.jsonl", Path(tmp) / "junit.xml"
        log.touch()
        code = run_tests(log, junit, args.pytest_args)
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        results = outcomes_of(junit) if junit.exists() else {}
    text = render(build_rows(records, results), results, code)
    sys.path.insert(0, str(REPO))
    from clbench.results.store import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out}: {len(records)} records")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
