"""Reading checkpoint files safely, and identifying them by content.

``read_checkpoint`` never runs code from a file unless asked: PyTorch files are read with
``torch.load(weights_only=True)``, which accepts tensors, containers and plain values (plus
``argparse.Namespace``, which DINO and PixPro checkpoints store their arguments as). A file that
needs anything more is refused with a message telling the user how to opt in.

>>> sd = read_checkpoint("moco_v2_800ep_pretrain.pth.tar")      # doctest: +SKIP
>>> file_digest("moco_v2_800ep_pretrain.pth.tar")[:12]           # doctest: +SKIP
'a04e12f8....'
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

_DIGESTS: dict[tuple[str, int, int], str] = {}


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as err:
        raise CheckpointError(f"{path}: checkpoint file not found ({err.strerror or err})") from None
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint file, found a folder")
    return st


def file_digest(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, memoised by (path, size, mtime) so repeated calls are cheap."""
    path = Path(path).expanduser().resolve()
    st = _stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """Load a checkpoint file onto the CPU: a ``.safetensors`` file or anything ``torch.save`` wrote.

    ``trust=True`` allows full unpickling (``weights_only=False``), which can run code stored
    in the file: only for files from a source you trust. Every failure raises
    :class:`CheckpointError` naming the file.
    """
    path = Path(path).expanduser()
    st = _stat(path)
    if st.st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if path.name.endswith(".safetensors"):
        return _read_safetensors(path)
    return _read_torch(path, trust=trust)


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_short(err)})") from None


def _read_torch(path: Path, *, trust: bool) -> Any:
    import argparse
    import pickle

    import torch

    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust and "weights only load failed" in str(err).lower():
            needs = _unsafe_globals(path)
            what = f" (it references {', '.join(needs[:5])})" if needs else ""
            raise CheckpointError(
                f"{path}: the checkpoint holds more than tensors and plain values{what}, and "
                "unpickling it could run code stored in the file. If you trust this file, set "
                "`trust_checkpoint: true` on this encoder."
            ) from None
        raise CheckpointError(f"{path}: cannot unpickle checkpoint ({_short(err)})") from None
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint; the file may be truncated or of another "
            f"kind ({type(err).__name__}: {_short(err)})"
        ) from None


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _short(err: BaseException, n: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= n else text[: n - 3] + "..."
