"""``hf``: any Hugging Face ``transformers`` AutoModel as a text encoder, with explicit pooling.

The model is a local folder or a hub name already in the local Hugging Face cache: nothing is
ever downloaded (``local_files_only``), so a suite gives the same numbers offline and online.

Pooling (``pooling``), all attention-mask aware:

- ``cls``: the model's ``pooler_output`` (BERT's dense + tanh on ``[CLS]``; SimCSE supervised);
- ``cls-before-pooler``: the last hidden state of the first token (SimCSE unsupervised);
- ``mean``: the mean of the last hidden states over real tokens (sentence-transformers' default);
- ``max``: the per-dimension max over real tokens;
- ``last-token``: the last real token, for left or right padding (decoder embedding models).

Texts are sorted by length before batching (less padding) and returned in the original order.
Role prefixes (``prompts``, ``query_prefix``, ``document_prefix``) are prepended to the text.

The helpers shared with the ``sentence-transformers`` encoder live here too: model resolution
(:func:`resolve_model`), the weight digest (:func:`folder_digest`) and prompt options.

>>> from clbench.options import parse_options
>>> opts = parse_options(HFOptions, {"model": "princeton-nlp/unsup-simcse-bert-base-uncased",
...                                  "pooling": "cls-before-pooler"})
>>> opts.pooling
'cls-before-pooler'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..options import option
from .base import Encoder, EncoderOptions, _identity_options

Pooling = Literal["cls", "cls-before-pooler", "mean", "max", "last-token"]
Precision = Literal["fp32", "fp16", "bf16"]

#: roles a prompt can be set for; "default" applies when the role has no prompt of its own
PROMPT_ROLES = ("query", "document", "default")
#: files that do not change what a model computes (left out of the weight digest)
_DOC_SUFFIXES = (".md", ".rst")


# -- options shared by the text encoders ------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class TextModelOptions(EncoderOptions):
    """Options shared by the ``hf`` and ``sentence-transformers`` encoders."""

    model: str = option(help="local model folder, or a hub name already in the local Hugging Face cache")
    revision: str | None = option(None, "hub revision (branch, tag or commit) to take from the local cache")
    cache_dir: str | None = option(None, "Hugging Face hub cache folder (default: HF_HUB_CACHE / HF_HOME)")
    max_seq_length: int | None = option(None, "truncate inputs to this many tokens (default: the model's)")
    normalize: bool = option(False, "L2-normalise the embeddings")
    prompts: dict[str, str] = option({}, "text prefix per role: query, document, default (no role / other)")
    query_prefix: str | None = option(None, "prefix for query texts (same as prompts.query)")
    document_prefix: str | None = option(None, "prefix for document texts (same as prompts.document)")
    trust_remote_code: bool = option(False, "run model code shipped with the checkpoint (off: safer)")
    precision: Precision = option("fp32", "weights and compute dtype: fp32, fp16 or bf16")

    def validate(self) -> None:
        super().validate()
        if not self.model.strip():
            raise ConfigError("expected a model folder or hub name", key="model")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError("expected a positive integer", key="max_seq_length")
        for role in self.prompts:
            if role not in PROMPT_ROLES:
                raise ConfigError(
                    f"unknown role {role!r} (roles: {', '.join(PROMPT_ROLES)})", key=f"prompts.{role}"
                )
        for role, prefix in (("query", self.query_prefix), ("document", self.document_prefix)):
            if prefix is not None and role in self.prompts and self.prompts[role] != prefix:
                raise ConfigError(f"conflicts with prompts.{role}; set one of them", key=f"{role}_prefix")

    def role_prompts(self) -> dict[str, str]:
        """The prefix per role, ``query_prefix``/``document_prefix`` merged into ``prompts``."""
        out = dict(self.prompts)
        if self.query_prefix is not None:
            out["query"] = self.query_prefix
        if self.document_prefix is not None:
            out["document"] = self.document_prefix
        return out

    def prefix_for(self, role: str | None) -> str | None:
        """The configured prefix for ``role``; None when none is configured."""
        prompts = self.role_prompts()
        if role is not None and role in prompts:
            return prompts[role]
        return prompts.get("default")


# -- model resolution and identity ------------------------------------------------------------
def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    root: Path | None = None,
    fallback_org: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The local folder of model ``name`` and its identity, without loading anything heavy.

    ``name`` is a folder (absolute, or relative to ``root``), or a hub name looked up in the local
    Hugging Face cache only (``fallback_org`` is tried as an owner for a bare name, as
    sentence-transformers does with ``sentence-transformers/``). Raises ConfigError when the model
    is nowhere on this machine.
    """
    p = Path(name).expanduser()
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    if p.is_dir():
        if revision is not None:
            raise ConfigError(f"{p} is a local folder: `revision` applies to hub names only", key="revision")
        return p, {"folder": str(p.resolve())}
    if p.exists():
        raise ConfigError(f"{p}: expected a model folder, found a file", key="model")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise ConfigError(
            f"{p}: model folder not found (give a local model folder, or a hub name already in the "
            "local Hugging Face cache)",
            key="model",
        )
    candidates = [name]
    if fallback_org and "/" not in name:
        candidates.append(f"{fallback_org}/{name}")
    for repo_id in candidates:
        folder = _cached_snapshot(repo_id, revision, cache_dir)
        if folder is not None:
            return folder, {"hub": repo_id, "revision": revision, "commit": folder.name}
    where = cache_dir or "the local Hugging Face cache"
    raise ConfigError(
        f"model {name!r}{f' (revision {revision!r})' if revision else ''} is neither a folder "
        f"(looked for {p}) nor in {where}; clbench never downloads: fetch it first "
        "(e.g. `huggingface-cli download NAME`) or give a folder path",
        key="model",
    )


def _cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in the local hub cache, else None."""
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo_id):
        return None
    if cache_dir is None:
        from huggingface_hub import constants  # light: no torch

        cache_dir = constants.HF_HUB_CACHE
    repo = Path(cache_dir).expanduser() / ("models--" + repo_id.replace("/", "--"))
    if not repo.is_dir():
        return None
    rev = revision or "main"
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    elif re.fullmatch(r"[0-9a-f]{40}", rev):
        commit = rev
    else:
        return None
    snap = repo / "snapshots" / commit
    return snap if snap.is_dir() else None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def folder_digest(folder: Path) -> str:
    """A digest of the contents of every file of a model folder (weights, configs, tokenizer).

    Documentation and hidden files are left out, so an edited model card keeps the cache valid.
    File digests are remembered per (path, size, mtime) for the life of the process.
    """
    folder = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or f.lower().endswith(_DOC_SUFFIXES):
                continue
            files.append(Path(dirpath) / f)
    for path in sorted(files, key=lambda q: q.relative_to(folder).as_posix()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + _file_digest(path).encode() + b"\n")
    return h.hexdigest()


def model_identity(folder: Path, where: dict[str, Any]) -> dict[str, Any]:
    """Hub models: name + commit; local folders: a digest of their files (not their path)."""
    if "hub" in where:
        return {"hub": where["hub"], "commit": where["commit"]}
    return {"digest": folder_digest(folder)}


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class TextModelEncoder(Encoder):
    """Common part of the text encoders: resolution, fingerprint, prompts."""

    modalities = frozenset({"text"})
    batches_internally = True
    _fallback_org: str | None = None

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self._resolved: tuple[Path, dict[str, Any]] | None = None

    def model_folder(self) -> Path:
        return self._resolve()[0]

    def _resolve(self) -> tuple[Path, dict[str, Any]]:
        if self._resolved is None:
            o = self.options
            cache_dir = str(self.resolve(o.cache_dir)) if o.cache_dir else None
            self._resolved = resolve_model(
                o.model,
                revision=o.revision,
                cache_dir=cache_dir,
                root=self.root,
                fallback_org=self._fallback_org,
            )
        return self._resolved

    def check(self) -> None:
        self._resolve()

    def fingerprint(self) -> dict[str, Any]:
        folder, where = self._resolve()
        opts = _identity_options(self.options)
        for k in ("model", "revision", "cache_dir", "prompts", "query_prefix", "document_prefix"):
            opts.pop(k, None)
        opts["prompts"] = dict(sorted(self.options.role_prompts().items()))
        return {"type": type(self).__name__, "model": model_identity(folder, where), "options": opts}

    def info(self) -> dict[str, Any]:
        _, where = self._resolve()
        return {"model": where, "precision": self.options.precision}


# -- the hf encoder -----------------------------------------------------------------------------
@dataclasses.dataclass(kw_only=True)
class HFOptions(TextModelOptions):
    pooling: Pooling = option("mean", "cls, cls-before-pooler, mean, max or last-token")


def pool(hidden: Any, attention_mask: Any, mode: str, pooler_output: Any = None) -> Any:
    """Pool token states ``hidden`` [B, L, D] into [B, D], ignoring positions where the mask is 0.

    ``last-token`` takes the last position whose mask is 1, so it works with left and right padding.
    """
    import torch

    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "cls":
        if pooler_output is None:
            raise CheckpointError(
                "pooling 'cls' needs the model's pooler output, and this model has no pooler; "
                "use 'cls-before-pooler'"
            )
        return pooler_output
    if mode == "cls-before-pooler":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        filled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
        return filled.max(1).values
    if mode == "last-token":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")


class HFEncoder(TextModelEncoder):
    """A ``transformers`` AutoModel with explicit pooling; see the module docstring."""

    Options = HFOptions

    def __init__(self, options: Any, **kw: Any):
        super().__init__(options, **kw)
        self.model: Any = None
        self.tokenizer: Any = None
        self._forward_keys: set[str] = set()
        self._max_length: int = 512

    def setup(self, device: str) -> None:
        if self.model is not None:
            if device != self.device:
                self.model.to(device)
                self.device = device
            return
        import inspect

        from transformers import AutoModel, AutoTokenizer

        o = self.options
        folder = self.model_folder()
        common = {"local_files_only": True, "trust_remote_code": o.trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **common)
            model, loading = AutoModel.from_pretrained(str(folder), output_loading_info=True, **common)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{folder}: cannot load as a transformers model: {err}") from err
        self.coverage = _coverage(loading, o.pooling, folder)
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # sentence-T5 style: embed with the encoder only
        model.to(device=device, dtype=torch_dtype(o.precision)).eval()
        if tokenizer.pad_token is None:  # decoder models: pad with EOS (masked out anyway)
            tokenizer.pad_token = tokenizer.eos_token
        self._forward_keys = set(inspect.signature(model.forward).parameters)
        self._max_length = o.max_seq_length or _default_max_length(tokenizer, model.config)
        self.model, self.tokenizer, self.device = model, tokenizer, device

    def encode(self, batch: Any, modality: str, role: str | None = None) -> np.ndarray:
        import torch

        if self.model is None:
            self.setup(self.device)
        prefix = self.options.prefix_for(role) or ""
        texts = [prefix + str(t) for t in batch]
        if not texts:
            return np.zeros((0, self.embed_dim or 0), dtype=np.float32)
        # longest first: batches of similar lengths pad little; results go back to input order
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self.options.batch_size
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(texts), bs):
                idx = order[start : start + bs]
                emb = self._embed([texts[i] for i in idx])
                if out is None:
                    out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
                out[idx] = emb
        assert out is not None
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in self._forward_keys}
        outputs = self.model(**inputs)
        hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
        emb = pool(
            hidden, inputs["attention_mask"], self.options.pooling, getattr(outputs, "pooler_output", None)
        )
        emb = emb.float()
        if self.options.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb.cpu().numpy()

    @property
    def embed_dim(self) -> int | None:
        if self.model is not None:
            cfg = self.model.config
        else:
            try:
                cfg_path = self.model_folder() / "config.json"
                cfg = type("Cfg", (), json.loads(cfg_path.read_text()))
            except (ConfigError, OSError, ValueError):
                return None
        for attr in ("hidden_size", "d_model", "n_embd", "dim"):
            if isinstance(getattr(cfg, attr, None), int):
                return getattr(cfg, attr)
        return None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pooling": self.options.pooling, "max_length": self._max_length}


def _default_max_length(tokenizer: Any, config: Any) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 100_000:
        return n
    n = getattr(config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else 512


def _coverage(loading: dict[str, Any], pooling: str, folder: Path) -> dict[str, Any]:
    """Which weights the checkpoint did not cover; raise when the missing ones would be used."""

    def keep(k: str) -> bool:
        return not k.endswith("position_ids")

    missing = sorted(k for k in loading.get("missing_keys", ()) if keep(k))
    unexpected = sorted(k for k in loading.get("unexpected_keys", ()) if keep(k))
    mismatched = [str(m) for m in loading.get("mismatched_keys", ())]
    used_missing = [k for k in missing if "pooler" not in k or pooling == "cls"]
    if used_missing or mismatched:
        shown = ", ".join((used_missing + mismatched)[:5])
        more = len(used_missing) + len(mismatched) - 5
        raise CheckpointError(
            f"{folder}: the checkpoint does not cover the model: {shown}"
            f"{f' and {more} more' if more > 0 else ''} would be randomly initialised"
            + (
                " (pooling 'cls' needs trained pooler weights; try 'cls-before-pooler')"
                if pooling == "cls"
                else ""
            )
        )
    return {"missing": missing, "unexpected": unexpected, "complete": not missing}
