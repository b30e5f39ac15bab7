"""``interactions``: user-item interactions for top-K recommendation with precomputed embeddings.

Two files, ``train`` and ``test``, each a CSV/TSV with a header (columns ``user_id`` and
``item_id`` by default) or a JSONL file of such objects. The splits are ``users`` and ``items``
(modality ``id``, roles ``user`` and ``item``): every user and every item named in either file,
in order of first appearance (``items_path`` adds items nobody interacted with: one id a line).
The ``recommendation`` task reads the interactions as index pairs through :meth:`interactions`.

Example::

    datasets:
      gowalla: {type: interactions, train: gowalla/train.csv, test: gowalla/test.csv}
    encoders:
      lightgcn: {type: precomputed, path: users.npz, role_paths: {item: items.npz}}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import option
from .base import Dataset, Split
from .labels import _field, read_rows


@dataclasses.dataclass
class InteractionsOptions:
    train: str = option(help="training interactions (CSV/TSV with a header, or JSONL)", kw_only=True)
    test: str = option(help="test interactions, same format", kw_only=True)
    user_column: str = option("user_id", "column of user ids")
    item_column: str = option("item_id", "column of item ids")
    items_path: str | None = option(None, "optional text file of all item ids, one a line")

    def validate(self) -> None:
        if not self.train or not self.test:
            raise ValueError("train and test: expected interaction files")


class InteractionsDataset(Dataset):
    """Users and items (splits ``users`` / ``items``) with train and test interactions."""

    Options = InteractionsOptions
    modality = "id"
    kind = "interactions"

    def __init__(self, options: Any, *, name: str = "dataset", root: Path | None = None, seed: int = 0):
        super().__init__(options, name=name, root=root, seed=seed)
        self._pairs: dict[str, np.ndarray] | None = None

    def sources(self) -> list[Path]:
        out = [self.resolve(self.options.train), self.resolve(self.options.test)]
        if self.options.items_path:
            out.append(self.resolve(self.options.items_path))
        return out

    def load(self) -> dict[str, Split]:
        o = self.options
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        if o.items_path:
            from ..encoders.precomputed import read_ids_file

            for i in read_ids_file(self.resolve(o.items_path)):
                items.setdefault(i, len(items))
        pairs = {}
        for which in ("train", "test"):
            path = self.resolve(getattr(o, which))
            out = []
            for n, row in read_rows(path):
                u = str(_field(row, o.user_column, path, n))
                it = str(_field(row, o.item_column, path, n))
                out.append((users.setdefault(u, len(users)), items.setdefault(it, len(items))))
            pairs[which] = np.asarray(out, dtype=np.int64).reshape(-1, 2)
        self._pairs = pairs
        return {
            "users": Split(items=list(users), modality="id", role="user", ids=list(users)),
            "items": Split(items=list(items), modality="id", role="item", ids=list(items)),
        }

    def interactions(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) interactions as (user index, item index) pairs into the two splits."""
        if self._pairs is None:
            self.split("users")
        if self._pairs is None:  # splits were set without loading
            raise DataError(f"dataset {self.name!r}: interactions not loaded")
        return self._pairs["train"], self._pairs["test"]
