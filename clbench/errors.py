"""Exceptions with enough context to act on without a traceback."""

from __future__ import annotations


class ClbenchError(Exception):
    """Base class for errors clbench reports to the user as a message, not a traceback."""


class ConfigError(ClbenchError):
    """A suite file (or plugin option) is invalid.

    ``file`` is the suite file, ``key`` the dotted key path (``tasks[1].k``), ``expected`` what was
    wanted there. ``str()`` gives ``file: key: message``.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        super().__init__(self.format())

    def format(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join(parts + [self.message])

    def at(self, *, file: str | None = None, key_prefix: str | None = None) -> ConfigError:
        """The same error, placed in ``file`` and below ``key_prefix``."""
        key = self.key
        if key_prefix:
            key = f"{key_prefix}.{key}" if key and not key.startswith("[") else f"{key_prefix}{key or ''}"
        return ConfigError(self.message, file=file or self.file, key=key)


class CheckpointError(ClbenchError):
    """A checkpoint cannot be loaded, or does not cover the backbone it is meant for."""


class DataError(ClbenchError):
    """A dataset file is missing, malformed or unusable (names the file and what was wrong)."""


class CapabilityError(ClbenchError):
    """An encoder cannot serve a task (wrong modality): the cell is skipped with this reason."""
