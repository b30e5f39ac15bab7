"""Loading a backbone state dict with strict semantics, and the coverage report it produces.

A wrong key map must never produce a near-random encoder with a plausible-looking score, so
nothing here calls ``load_state_dict(strict=False)`` and carries on: every model key must be
covered by a tensor of the right shape, and every checkpoint key must land in the model, unless
the user named it (``allow_missing``) or it is a known head (``dropped``, ``head``).

>>> report = load_backbone(model, state_dict, dropped=info["dropped"])   # doctest: +SKIP
>>> report["counts"]                                                       # doctest: +SKIP
{'loaded': 122, 'missing': 0, 'mismatched': 0, 'unexpected': 0, 'dropped': 326}
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import CheckpointError

#: model keys that may be absent without changing features in eval mode
HARMLESS_MISSING = ("*num_batches_tracked",)

_SHOW = 8


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _listing(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_backbone(
    model: Any,
    state_dict: Mapping[str, Any],
    *,
    allow_missing: Sequence[str] = (),
    dropped: Sequence[str] = (),
    head: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Copy ``state_dict`` into ``model``'s parameters and buffers; return the coverage report.

    ``allow_missing``: fnmatch patterns of model keys that may be absent or of another shape
    (they keep their initialisation). ``dropped``: checkpoint keys the format adapter removed
    as heads (reported only). ``head``: fnmatch patterns of checkpoint keys belonging to the
    classifier the encoder removed from ``model`` (dropped too). ``info``: the adapter's info,
    merged into the report. ``source``: the file, for messages.

    Raises :class:`CheckpointError` on any missing, mismatched or unexpected key not excused.
    """
    own = model.state_dict()
    dropped = list(dropped)
    loaded: dict[str, Any] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, list[int], list[int]]] = []
    for key, value in state_dict.items():
        if key not in own:
            if _matches(key, head):
                dropped.append(key)
            else:
                unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            mismatched.append((key, list(value.shape), list(own[key].shape)))
        else:
            loaded[key] = value
    missing = [k for k in own if k not in state_dict]

    excused = tuple(allow_missing) + HARMLESS_MISSING
    bad_missing = [k for k in missing if not _matches(k, excused)]
    bad_shape = [m for m in mismatched if not _matches(m[0], allow_missing)]
    if bad_missing or bad_shape or unexpected:
        raise CheckpointError(_explain(source, own, bad_missing, bad_shape, unexpected, info))

    # every model key is given (the excused ones keep their current tensors): strict load
    full = dict(own)
    full.update(loaded)
    model.load_state_dict(full, strict=True)

    info = dict(info or {})
    report = {
        "source": source,
        "format": info.pop("format", None),
        **{k: v for k, v in info.items() if k != "dropped"},
        "loaded": len(loaded),
        "model_keys": len(own),
        "missing": missing,
        "mismatched": [list(m) for m in mismatched],
        "unexpected": unexpected,
        "dropped": dropped,
    }
    report["counts"] = {
        "loaded": len(loaded),
        "missing": len(missing),
        "mismatched": len(mismatched),
        "unexpected": len(unexpected),
        "dropped": len(dropped),
    }
    return report


def _explain(
    source: str | None,
    own: Mapping[str, Any],
    missing: list[str],
    mismatched: list[tuple[str, list[int], list[int]]],
    unexpected: list[str],
    info: Mapping[str, Any] | None,
) -> str:
    where = f"{source}: " if source else ""
    fmt = f" (format {info['format']!r})" if info and info.get("format") else ""
    parts = [f"{where}checkpoint does not cover the model{fmt}:"]
    if missing:
        parts.append(f"{len(missing)} model keys missing from the checkpoint ({_listing(missing)});")
    if mismatched:
        shown = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:_SHOW])
        parts.append(f"{len(mismatched)} shape mismatches ({shown});")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint keys the model does not have ({_listing(unexpected)});")
    hint = _prefix_hint(unexpected, own)
    if hint:
        shown = " or ".join(repr(p) for p in hint)
        parts.append(f"they look like model keys behind the prefix {shown}: check `format`;")
    parts.append(
        "check `model`, `model_kwargs` and `format`, or list model keys that may keep their "
        "initialisation in `allow_missing`"
    )
    return " ".join(parts)


def _prefix_hint(unexpected: list[str], own: Mapping[str, Any]) -> list[str]:
    """Prefixes that, removed from the unexpected keys, would cover most model keys."""
    covered: dict[str, set[str]] = {}
    for key in unexpected:
        parts = key.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in own:
                covered.setdefault(".".join(parts[:i]) + ".", set()).add(".".join(parts[i:]))
                break
    return [p for p, keys in covered.items() if len(keys) >= max(1, len(own) // 2)][:3]
