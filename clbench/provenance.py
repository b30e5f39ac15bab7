"""Provenance recorded in every result: versions, git commit, host, time, memory."""

from __future__ import annotations

import datetime as _dt
import functools
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "clbench", "numpy", "torch", "torchvision", "timm", "scikit-learn", "safetensors",
    "transformers", "sentence-transformers", "mteb",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.lru_cache(maxsize=8)
def git_info(folder: str) -> dict | None:
    """Commit and dirty flag of the repository containing ``folder``, or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], check=False, cwd=folder, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False, cwd=folder, capture_output=True, text=True, timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def cpu_name() -> str:
    """The CPU model, as /proc/cpuinfo names it (benchmarks print it beside their figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict[str, str]:
    return {"platform": platform.platform(), "machine": platform.machine(), "node": platform.node()}


def folder_of(path: Path) -> str:
    return str(Path(path).resolve().parent)
