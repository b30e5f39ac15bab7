"""``sentence-transformers``: a SentenceTransformer model (its own pooling, dense and normalise modules).

The model is a local folder or a hub name already in the local Hugging Face cache (a bare name
such as ``all-MiniLM-L6-v2`` is also looked up as ``sentence-transformers/all-MiniLM-L6-v2``);
nothing is downloaded. Prompts: a prefix configured here for the role (``prompts``,
``query_prefix``, ``document_prefix``) wins; otherwise the model's own ``query``/``document``
prompts apply, as in ``encode_query``/``encode_document``.

The fingerprint (the feature-cache key) needs no model: hub name + cached commit, or a digest of
the folder's files, plus max length, prompts, normalisation and precision.

>>> from clbench.options import parse_options
>>> opts = parse_options(SentenceTransformerOptions, {"model": "models/all-MiniLM-L6-v2", "query_prefix": "q: "})
>>> opts.prefix_for("query"), opts.prefix_for(None)
('q: ', None)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from .hf import TextModelEncoder, TextModelOptions, torch_dtype


@dataclasses.dataclass(kw_only=True)
class SentenceTransformerOptions(TextModelOptions):
    """Options of the ``sentence-transformers`` encoder (all shared with ``hf`` but pooling)."""


class SentenceTransformerEncoder(TextModelEncoder):
    Options = SentenceTransformerOptions
    _fallback_org = "sentence-transformers"

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.model: Any = None

    @property
    def similarity(self) -> str:  # type: ignore[override]
        """The model's declared similarity ("dot" for dot-product models), else cosine."""
        try:
            cfg = json.loads((self.model_folder() / "config_sentence_transformers.json").read_text())
        except (ConfigError, OSError, ValueError):
            return "cosine"
        return "dot" if cfg.get("similarity_fn_name") == "dot" and not self.options.normalize else "cosine"

    def setup(self, device: str) -> None:
        if self.model is not None:
            if device != self.device:
                self.model.to(device)
                self.device = device
            return
        from sentence_transformers import SentenceTransformer

        o = self.options
        folder = self.model_folder()
        try:
            model = SentenceTransformer(
                str(folder), device=device, trust_remote_code=o.trust_remote_code, local_files_only=True
            )
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{folder}: cannot load as a sentence-transformers model: {err}") from err
        if o.precision != "fp32":
            model.to(torch_dtype(o.precision))
        if o.max_seq_length is not None:
            model.max_seq_length = o.max_seq_length
        model.eval()
        self.model, self.device = model, device

    def encode(self, batch: Any, modality: str, role: str | None = None) -> np.ndarray:
        if self.model is None:
            self.setup(self.device)
        texts = [str(t) for t in batch]
        if not texts:
            return np.zeros((0, self.embed_dim or 0), dtype=np.float32)
        method = {"query": "encode_query", "document": "encode_document"}.get(role or "", "encode")
        fn = getattr(self.model, method, self.model.encode)
        out = fn(
            texts,
            prompt=self.options.prefix_for(role),
            batch_size=self.options.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.options.normalize,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    @property
    def embed_dim(self) -> int | None:
        if self.model is None:
            return None
        get = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return get()

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.model is not None:
            out["max_seq_length"] = self.model.max_seq_length
            out["model_prompts"] = dict(getattr(self.model, "prompts", {}) or {})
        return out
