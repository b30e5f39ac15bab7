"""Typed plugin options: each plugin declares a dataclass; suite values are checked against it.

Unknown keys, wrong types and invalid choices raise :class:`ConfigError` naming the key, so a
typo in a suite file is caught before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None)) + (
            " (or null)" if type(None) in get_args(tp) else ""
        )
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted where floats are)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"expected {_describe(tp)}, got {value!r}", key=key)
    if origin is Literal:
        if value in get_args(tp):
            return value
        choices = [str(a) for a in get_args(tp)]
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"expected {_describe(tp)}, got {value!r}{extra}", key=key)
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and item_tp is not Any:
            # a scalar where a list is expected: accept it as a one-element list
            try:
                return [coerce(value, item_tp, key)]
            except ConfigError:
                pass
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_describe(tp)}, got {value!r}", key=key)
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key)
        kt, vt = get_args(tp) or (Any, Any)
        return {coerce(k, kt, key): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-6" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported option annotation {tp!r}")
    raise ConfigError(f"expected {_describe(tp)}, got {value!r}", key=key)


def parse_options(cls: type, raw: dict[str, Any], *, key: str = "") -> Any:
    """Build the options dataclass ``cls`` from ``raw``, rejecting unknown keys and bad types.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opts:
    ...     k: int = 20
    >>> parse_options(Opts, {"k": 10})
    Opts(k=10)
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of options, got {raw!r}", key=key or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in raw.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            hint = difflib.get_close_matches(str(name), list(fields), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown option {name!r}{extra} (allowed: {allowed})", key=sub)
        values[name] = coerce(value, hints[name], sub)
    missing = [
        n
        for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required option {missing[0]!r} ({_describe(hints[missing[0]])})", key=key or None)
    opts = cls(**values)
    check = getattr(opts, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            raise err.at(key_prefix=key or None) from None
        except ValueError as err:
            raise ConfigError(str(err), key=key or None) from None
    return opts


def resolve_options(cls: type, options: Any) -> Any:
    """``options`` as a validated ``cls``: None gives the defaults, a dict is parsed strictly."""
    if options is None:
        options = cls()
    elif isinstance(options, dict):
        return parse_options(cls, options)
    elif not isinstance(options, cls):
        raise TypeError(f"expected {cls.__name__}, a dict or None, got {type(options).__name__}")
    check = getattr(options, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return options


def describe_options(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each option, for ``clbench list``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _describe(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def options_dict(opts: Any) -> dict[str, Any]:
    return dataclasses.asdict(opts)


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with a help string shown by ``clbench list``."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)
