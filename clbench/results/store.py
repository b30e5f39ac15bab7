"""One JSON file per (encoder, task) cell, written atomically, read back for tables and gates.

Layout: ``<output>/<suite>/<encoder>/<task>.json``. A result is a plain dict with these keys
(``SCHEMA_VERSION`` 1):

- ``suite``, ``encoder``, ``task``, ``task_type``, ``dataset``: where the cell sits;
- ``status``: ``ok`` | ``failed`` | ``skipped``; ``reason``: why it failed or was skipped;
  ``error``: ``{type, message, traceback}`` for a failure;
- ``metrics`` (flat name -> number), ``main_metric`` (key into metrics), ``main_value``;
- ``protocol_version`` of the task type;
- ``options``: the resolved ``encoder``, ``dataset`` and ``task`` options;
  ``options_hash`` (all of them + seed + protocol: decides whether a re-run may skip the cell);
  ``comparability_hash`` (task type + task and dataset options + protocol: equal within a
  table column when its cells are comparable);
- ``coverage``: the checkpoint coverage report, or null;
- ``seed``, ``device``, ``timings`` (``extraction_s``, ``fit_s``, ``total_s``), ``throughput``,
  ``peak_memory``, ``versions``, ``git``, ``timestamp`` (UTC, ISO 8601), ``fingerprints``,
  ``details`` (task-specific extras).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "skipped")


def cell_path(output: Path, suite: str, encoder: str, task: str) -> Path:
    return Path(output) / suite / encoder / f"{task}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        # created inside the try: a KeyboardInterrupt right after mkstemp still removes the file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _remove_orphans(path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


def _owner() -> str:
    """``<host>-<pid>``: lets a later writer tell a dead process's temporary file from a live one."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _remove_orphans(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by processes of this host that no longer run
    (a SIGKILL between create and rename). Files of live processes or other hosts are kept."""
    host = socket.gethostname().replace(".", "_")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid_part = tmp.name[len(f".{path.name}.{host}-") :].split(".", 1)[0]
        if not pid_part.isdigit() or int(pid_part) == os.getpid():
            continue
        try:
            os.kill(int(pid_part), 0)
        except ProcessLookupError:
            try:
                tmp.unlink()
            except OSError:
                pass
        except OSError:  # exists but not ours to signal: alive
            continue


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_result(path: Path) -> dict[str, Any] | None:
    """The result at ``path``, or None when it is missing, unreadable or not a clbench result."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not is_result(data):
        return None
    return data


def is_result(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("schema_version") == SCHEMA_VERSION
        and all(k in data for k in ("suite", "encoder", "task", "status"))
    )


def iter_result_files(root: Path) -> Iterator[Path]:
    root = Path(root)
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*.json")):
        if not path.name.startswith("."):
            yield path


def load_results(root: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """All results below ``root`` and the JSON files that were not valid results.

    Raises FileNotFoundError when ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such results folder")
    results, bad = [], []
    for path in iter_result_files(root):
        data = read_result(path)
        if data is None:
            bad.append(path)
        else:
            results.append(data)
    return results, bad
