"""Verified, resumable downloads of zoo weights into the clbench cache (standard library only).

:func:`fetch` downloads ``url`` to ``dest``:

- bytes go to ``<dest>.part``; an interrupted download leaves the ``.part`` file and the next
  call asks the server only for the rest (HTTP ``Range: bytes=N-``); a server that ignores the
  range (200 instead of 206) is read from the start again;
- a connection that ends before ``Content-Length`` bytes raises :class:`DownloadError` and
  leaves no file at ``dest`` (only the resumable ``.part``);
- the complete file is checked against the published checksum (``sha256:<hex>``, or the
  ``md5-prefix:``/``sha256-prefix:`` forms some authors publish, e.g. MoCo's 8-hex md5). When
  no checksum is published, its SHA-256 is recorded on first download in a registry file
  (``<zoo cache>/checksums.json``) and checked on every later use. A mismatch deletes the
  download and raises;
- the verified file is moved into place with an atomic rename, so ``dest`` is always whole;
- concurrent fetches of one file (two runs sharing a cache) take turns on an advisory lock
  (``.<file>.lock``); the second finds the file done and only verifies it.

Offline (``CLBENCH_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``offline=True``) nothing is requested:
a missing file raises :class:`OfflineError` naming the URL and the path to place it at.

>>> parse_checksum("md5-prefix:b251726a")
('md5', 'b251726a')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any

from ..errors import ClbenchError
from ..locks import FileLock

OFFLINE_ENVS = ("CLBENCH_OFFLINE", "HF_HUB_OFFLINE")
REGISTRY_NAME = "checksums.json"
_CHUNK = 1 << 20
_FORMS = {
    "sha256": ("sha256", 64),
    "sha256-prefix": ("sha256", None),
    "md5": ("md5", 32),
    "md5-prefix": ("md5", None),
}


class DownloadError(ClbenchError):
    """A download failed, was truncated, or does not match its checksum."""


class OfflineError(DownloadError):
    """The file is not in the cache and downloads are switched off."""


def is_offline(flag: bool | None = None) -> bool:
    """``flag`` when given, else whether CLBENCH_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    if flag is not None:
        return flag
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENVS)


def parse_checksum(spec: str) -> tuple[str, str]:
    """``"md5-prefix:b251726a"`` -> ``("md5", "b251726a")``; ValueError for anything else."""
    form, _, value = str(spec).partition(":")
    value = value.strip().lower()
    if form not in _FORMS or not re.fullmatch(r"[0-9a-f]+", value or "-"):
        raise ValueError(f"expected one of {', '.join(f + ':<hex>' for f in _FORMS)}, got {spec!r}")
    algo, length = _FORMS[form]
    full = 64 if algo == "sha256" else 32
    if (length is not None and len(value) != length) or len(value) > full or len(value) < 6:
        raise ValueError(f"{spec!r}: wrong length for {form}")
    return algo, value


def digests(path: Path) -> dict[str, str]:
    """sha256 and md5 hex digests of a file, in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def matches(found: dict[str, str], checksum: str) -> bool:
    algo, value = parse_checksum(checksum)
    return found[algo].startswith(value)



def _locked(path: Path) -> FileLock:
    """An exclusive lock on ``.<name>.lock`` beside ``path`` (released on exit or death)."""
    return FileLock(path.with_name(f".{path.name}.lock"))


# -- the registry of recorded checksums ------------------------------------------------------
def _registry_read(registry: Path) -> dict[str, Any]:
    try:
        data = json.loads(registry.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise DownloadError(f"{registry}: unreadable checksum registry ({err}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _registry_record(registry: Path, url: str, dest: Path, found: dict[str, str], checksum: str | None) -> None:
    from ..results.store import atomic_write_text

    with _locked(registry):  # read-modify-write: one writer at a time
        data = _registry_read(registry)
        data[url] = {
            "file": dest.name,
            "sha256": found["sha256"],
            "size": dest.stat().st_size if dest.exists() else None,
            "published_checksum": checksum,
        }
        atomic_write_text(registry, json.dumps(data, indent=2, sort_keys=True) + "\n")


def recorded_sha256(registry: Path, url: str) -> str | None:
    return (_registry_read(registry).get(url) or {}).get("sha256")


def verify(path: Path, url: str, checksum: str | None, registry: Path) -> str:
    """Check ``path`` against the published ``checksum`` or the recorded SHA-256; its SHA-256.

    A file with neither is recorded now (first use). Raises DownloadError on a mismatch.
    """
    found = digests(path)
    if checksum is not None:
        if not matches(found, checksum):
            raise DownloadError(
                f"{path}: checksum mismatch: expected {checksum}, got sha256 {found['sha256']} "
                f"/ md5 {found['md5']} (source {url})"
            )
    else:
        recorded = recorded_sha256(registry, url)
        if recorded is not None and recorded != found["sha256"]:
            raise DownloadError(
                f"{path}: SHA-256 {found['sha256']} differs from the one recorded on first download "
                f"({recorded}, in {registry}); the file changed: delete it to download again"
            )
    if recorded_sha256(registry, url) != found["sha256"]:
        _registry_record(registry, url, path, found, checksum)
    return found["sha256"]


# -- downloading -----------------------------------------------------------------------------
def _progress(enabled: bool, name: str, total: int | None, done: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False,
    )
    task = progress.add_task(name, total=total, completed=done)
    return progress, task


def _open(url: str, start: int, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "clbench"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the .part already holds everything
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    checksum: str | None = None,
    registry: str | os.PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """``dest``, downloaded from ``url`` if needed, verified (see the module docstring)."""
    dest = Path(dest)
    registry = Path(registry) if registry is not None else dest.parent.parent / REGISTRY_NAME
    if checksum is not None:
        parse_checksum(checksum)
    if dest.is_file():
        verify(dest, url, checksum, registry)
        return dest
    if is_offline(offline):
        raise OfflineError(
            f"offline: {dest.name} is not in the clbench cache and downloads are off "
            f"(--offline / CLBENCH_OFFLINE / HF_HUB_OFFLINE). Download {url} by hand and place it at {dest}"
            + (f" (expected checksum {checksum})" if checksum else "")
        )
    with _locked(dest):
        if dest.is_file():  # another process finished it while we waited
            verify(dest, url, checksum, registry)
            return dest
        return _download(url, dest, checksum, registry, progress, timeout)


def _download(url: str, dest: Path, checksum: str | None, registry: Path, progress: bool, timeout: float) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    response = _open(url, start, timeout)
    if response is not None:
        with response:
            status = getattr(response, "status", 200)
            if start and status != 206:  # the server ignored the range: start over
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            got = start
            bar, task = _progress(progress, dest.name, total, start)
            with bar, open(part, "ab" if start else "wb") as out:
                while True:
                    try:
                        block = response.read(_CHUNK)
                    except (HTTPException, OSError) as err:
                        raise DownloadError(
                            f"{url}: connection lost after {got} bytes ({type(err).__name__}); "
                            f"run again to resume from {part}"
                        ) from None
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    bar.update(task, completed=got)
                out.flush()
                os.fsync(out.fileno())
            if total is not None and got < total:
                raise DownloadError(
                    f"{url}: download truncated at {got} of {total} bytes; run again to resume from {part}"
                )
    try:
        sha256 = verify(part, url, checksum, registry)
    except DownloadError:
        part.unlink(missing_ok=True)  # a complete file with the wrong bytes is never kept
        raise
    os.replace(part, dest)
    _registry_record(registry, url, dest, {"sha256": sha256}, checksum)
    return dest


# -- one zoo entry ---------------------------------------------------------------------------
def fetch_entry(entry: Any, *, offline: bool | None = None, progress: bool = True) -> Path:
    """Make ``entry``'s weights local (download, hub snapshot or open_clip tag); the local path.

    Raises DownloadError (OfflineError offline) with what to do when that is impossible.
    """
    from .catalogue import weights_path, zoo_dir

    w = entry.weights
    if w.status == "download":
        return fetch(w.url, weights_path(entry), checksum=w.checksum, registry=zoo_dir() / REGISTRY_NAME,
                     offline=offline, progress=progress)
    if w.status == "hub":
        return _fetch_hub(w.repo, w.subfolder, offline=offline)
    if w.status == "open_clip":
        return _fetch_open_clip(entry.encoder["model"], w.tag, offline=offline)
    raise DownloadError(f"zoo method {entry.name!r}: nothing to download ({w.status}): {w.how}")


def _fetch_hub(repo: str, subfolder: str | None, *, offline: bool | None) -> Path:
    from ..encoders.hf import _cached_snapshot

    folder = _cached_snapshot(repo, None, None)
    if folder is None:
        if is_offline(offline):
            from huggingface_hub import constants

            raise OfflineError(
                f"offline: {repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and downloads "
                f"are off; on a machine with internet access run `huggingface-cli download {repo}` "
                f"(https://huggingface.co/{repo}) and copy the cache over, or set `model` to a local folder"
            )
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo))
        except Exception as err:  # the hub client has many error types; the message says enough
            raise DownloadError(f"https://huggingface.co/{repo}: download failed ({err})") from None
    if subfolder:
        folder = folder / subfolder
        if not folder.is_dir():
            raise DownloadError(f"huggingface.co/{repo} has no folder {subfolder!r}; set `model` to the right folder")
    return folder


def _fetch_open_clip(model: str, tag: str, *, offline: bool | None) -> Path:
    from .catalogue import zoo_dir

    if is_offline(offline):
        raise OfflineError(
            f"offline: open_clip weights {model} / {tag} are resolved by open_clip, which needs the network "
            f"on first use; download them elsewhere into {zoo_dir() / 'open_clip'} or set `checkpoint`"
        )
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        raise DownloadError(f"open_clip has no pretrained tag {tag!r} for {model!r}")
    try:
        return Path(open_clip.pretrained.download_pretrained(cfg, cache_dir=str(zoo_dir() / "open_clip")))
    except Exception as err:
        raise DownloadError(f"open_clip {model} / {tag}: download failed ({err})") from None
