"""Advisory file locks that let several ``clbench run`` processes share output and cache folders.

A lock is a hidden file next to what it protects (``.<task>.json.lock`` beside a result,
``.<key>.lock`` beside a feature-cache entry) locked with ``fcntl.flock``. The kernel drops a
flock when its process dies, however it dies, so a lock file left behind by a killed run (SIGKILL,
OOM, power loss of a client) holds no lock: the next process takes it over at once; there is no
pid-liveness guessing and no stale-lock timeout. The file records ``host`` and ``pid`` of the
holder, so a skipped cell can say who holds it.

The holder removes the file when it releases it. Removing a locked file races with a process that
has just opened it, so an acquirer that got the flock checks that the path still names the inode
it locked and otherwise starts again (the usual flock + unlink protocol).

Where ``fcntl`` is missing (Windows) a lock only records its holder and never blocks: concurrent
runs on one folder are then not coordinated.

>>> with FileLock(Path("results/s/enc/.knn.json.lock")) as lock:   # doctest: +SKIP
...     ...   # only this process computes the cell
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; locks are then held only within this process
    fcntl = None  # type: ignore[assignment]


class LockBusy(Exception):
    """The lock is held by another live process (``holder`` says which, when it could be read)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None):
        self.path = path
        self.holder = holder or {}
        who = f"{self.holder.get('host', '?')} pid {self.holder.get('pid', '?')}" if holder else "another process"
        super().__init__(f"{path}: locked by {who}")


def lock_path_for(target: Path) -> Path:
    """The lock file guarding ``target``: a hidden sibling ``.<name>.lock``."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def read_holder(path: Path) -> dict[str, Any] | None:
    """``{host, pid, since}`` written by the holder of the lock file at ``path`` (None if unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class FileLock:
    """An exclusive advisory lock on ``path`` (created on demand, removed on release).

    ``acquire(blocking=False)`` raises :class:`LockBusy` when a live process holds it;
    ``acquire(blocking=True)`` waits for it, polling every ``poll`` seconds (so Ctrl-C works).
    Errors creating the file (read-only or full file system) propagate as ``OSError``.
    """

    def __init__(self, path: Path | str, *, poll: float = 0.1):
        self.path = Path(path)
        self.poll = poll
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, blocking: bool = True, timeout: float | None = None) -> FileLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try_once():
                return self
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                raise LockBusy(self.path, read_holder(self.path))
            time.sleep(self.poll)

    def _try_once(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = False
            try:
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        os.close(fd)
                        return False
                    raise
                try:  # the holder we waited for may have removed the file meanwhile
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    locked = True
                    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
                    os.ftruncate(fd, 0)
                    os.write(fd, json.dumps(record).encode())
                    self._fd = fd
                    return True
            except BaseException:  # an interrupt (Ctrl-C) mid-way: leave no lock file we own
                if locked:
                    try:
                        os.unlink(self.path)
                    except OSError:
                        pass
                os.close(fd)
                raise
            os.close(fd)  # we locked a removed file: open the path again

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                os.unlink(self.path)  # while still locked: a waiter then sees a new inode and retries
            except OSError:
                pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is released with its object
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def is_locked(path: Path | str) -> bool:
    """True when a live process holds the lock at ``path``; only looks (never takes it over)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def remove_if_unlocked(path: Path) -> bool:
    """Remove the lock file at ``path`` when no process holds it (left by a killed run)."""
    if not Path(path).exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except (LockBusy, OSError):
        return False
    lock.release()
    return True


__all__ = ["FileLock", "LockBusy", "is_locked", "lock_path_for", "read_holder", "remove_if_unlocked"]
