"""The method zoo catalogue: released checkpoints as named encoders (data in ``catalogue.yaml``).

Each entry records what a user would otherwise collect from five READMEs: the architecture (with
overrides such as MoCo v3 ViT-S's 12 heads), the checkpoint layout adapter, the evaluation
preprocessing, where the weights are (or that they are gone), the published checksum, the
licence, and the published numbers with their protocol and source.

:func:`encoder_spec` turns an entry plus user overrides into the options of an existing encoder
plugin (``timm``, ``torchvision``, ``hf``, ``open_clip``); nothing here imports torch.

>>> entry = get_entry("mocov3-vit-s")
>>> entry.encoder["model_kwargs"]
{'num_heads': 12}
>>> encoder_spec(entry, {"checkpoint": "vit-s.pth.tar"})[1]["format"]
'mocov3'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")

#: where the weights of an entry are, and so how clbench gets them
STATUSES = {
    "download": "direct download, fetched into the clbench cache on first use",
    "hub": "Hugging Face hub repository",
    "open_clip": "open_clip pretrained tag (open_clip fetches and verifies the file)",
    "manual": "no direct link: download by hand and set `checkpoint`",
    "convert": "released in another framework: convert, then set `checkpoint`",
    "gone": "the released files are no longer available",
    "never-released": "no weights were ever released",
}
#: published-number protocols clbench has a task for (the others are shown, never matched)
MATCHABLE = {
    "linear": "linear_probe",
    "knn": "knn",
    "sts": "sts",
    "zero-shot": "zero_shot",
    "voc07+12-detection": "detection",
    "coco-fpn-1x-mask-rcnn": "detection",
}

_ENTRY_KEYS = {
    "method", "variant", "encoder", "layout", "preprocessing", "checks", "weights", "licence",
    "published", "sources", "notes", "loadable",
}
_WEIGHT_KEYS = {"status", "url", "checksum", "how", "page", "repo", "subfolder", "tag", "unverified"}
_PUBLISHED_KEYS = {
    "protocol", "dataset", "metric", "value", "source", "k", "temperature", "std", "detail",
    "features", "unverified", "primary",
}
_PREPROCESS_KEYS = {"resize", "crop", "interpolation", "mean", "std", "normalize", "pooling"}
_VISION = ("timm", "torchvision")


@dataclasses.dataclass(frozen=True)
class Published:
    """One number the authors published, with the protocol it was measured under."""

    protocol: str
    dataset: str
    metric: str
    value: float
    source: str
    k: int | None = None
    temperature: float | None = None
    std: float | None = None
    detail: str | None = None
    features: str | None = None
    unverified: bool = False
    #: False for a second report of the same number (another table, the paper): shown, not matched
    primary: bool = True

    @property
    def task_type(self) -> str | None:
        """The clbench task type that measures this protocol, or None (detection, fine-tuning)."""
        return MATCHABLE.get(self.protocol)

    def describe(self) -> str:
        bits = [f"{self.protocol} {self.metric} {self.value:g}"]
        if self.std is not None:
            bits[0] += f" ± {self.std:g}"
        bits.append(f"on {self.dataset}")
        if self.protocol == "knn":
            bits.append(f"(k={self.k if self.k is not None else 'unconfirmed'}, T={self.temperature:g})")
        if self.features:
            bits.append(f"[{self.features}]")
        if self.detail:
            bits.append(f"[{self.detail}]")
        if self.unverified:
            bits.append("(unverified)")
        return " ".join(bits)


@dataclasses.dataclass(frozen=True)
class Weights:
    status: str
    url: str | None = None
    checksum: str | None = None
    how: str | None = None
    page: str | None = None
    repo: str | None = None
    subfolder: str | None = None
    tag: str | None = None
    unverified: str | None = None

    @property
    def filename(self) -> str | None:
        """The downloaded file's name (the URL's last path component, unquoted)."""
        if not self.url:
            return None
        return urllib.parse.unquote(urllib.parse.urlparse(self.url).path.rsplit("/", 1)[-1])

    @property
    def source(self) -> str | None:
        """One line naming where the weights come from."""
        if self.status == "hub":
            return f"huggingface.co/{self.repo}" + (f" ({self.subfolder})" if self.subfolder else "")
        if self.status == "open_clip":
            return f"open_clip pretrained tag {self.tag!r}" + (f" (original file {self.url})" if self.url else "")
        return self.url or self.page


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    method: str
    variant: str
    encoder: dict[str, Any] | None
    layout: str | None
    preprocessing: dict[str, Any] | None
    weights: Weights
    licence: str
    published: tuple[Published, ...] = ()
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: why ``{type: zoo}`` cannot build this entry (None: it can)
    loadable: str | None = None

    @property
    def plugin(self) -> str | None:
        return self.encoder["type"] if self.encoder else None

    def architecture(self) -> str:
        if not self.encoder:
            return "-"
        extra = {k: v for k, v in self.encoder.items() if k not in ("type", "model", "pooling", "pretrained")}
        text = f"{self.encoder['type']} {self.encoder.get('model')}"
        if self.encoder.get("pretrained"):
            text += f" (pretrained {self.encoder['pretrained']})"
        return text + (f" {extra}" if extra else "")

    def describe_preprocessing(self) -> str:
        p = self.preprocessing
        if not p:
            return "-"
        if "pooling" in p and len(p) == 1:
            return f"text: tokenizer of the model, pooling {p['pooling']}"
        parts = [f"Resize({p['resize']}, {p.get('interpolation', 'bilinear')})", f"CenterCrop({p['crop']})"]
        if p.get("normalize", True) is False:
            parts.append("no normalisation ([0, 1] input)")
        else:
            parts.append(f"mean {tuple(p['mean'])} std {tuple(p['std'])}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fail(name: str, message: str) -> ConfigError:
    return ConfigError(f"zoo entry {name!r}: {message}", file=str(CATALOGUE_FILE))


def _check_keys(name: str, where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(name, f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _parse_entry(name: str, raw: Any) -> Entry:
    from ..checkpoints.formats import FORMAT_NAMES

    if not isinstance(raw, dict):
        raise _fail(name, "expected a mapping")
    _check_keys(name, "entry", raw, _ENTRY_KEYS)
    for key in ("method", "variant", "weights", "licence"):
        if key not in raw:
            raise _fail(name, f"missing {key!r}")
    weights = raw["weights"]
    _check_keys(name, "weights", weights, _WEIGHT_KEYS)
    if weights.get("status") not in STATUSES:
        raise _fail(name, f"weights.status must be one of {', '.join(STATUSES)}")
    w = Weights(**weights)
    if w.status == "download" and not w.url:
        raise _fail(name, "weights.status download needs a url")
    if w.status == "hub" and not w.repo:
        raise _fail(name, "weights.status hub needs a repo")
    if w.status == "open_clip" and not w.tag:
        raise _fail(name, "weights.status open_clip needs a tag")
    if w.status in ("manual", "convert", "gone", "never-released") and not w.how:
        raise _fail(name, f"weights.status {w.status} needs `how` (what the user must do)")
    if w.checksum is not None:
        from .download import parse_checksum

        try:
            parse_checksum(w.checksum)
        except ValueError as err:
            raise _fail(name, f"weights.checksum: {err}") from None
    encoder = raw.get("encoder")
    loadable = raw.get("loadable")
    if encoder is None and not loadable:
        raise _fail(name, "an entry without `encoder` must say why in `loadable`")
    if encoder is not None and encoder.get("type") not in ("timm", "torchvision", "hf", "open_clip"):
        raise _fail(name, f"encoder.type {encoder.get('type')!r} is not supported by the zoo")
    layout = raw.get("layout")
    if layout is not None and layout not in FORMAT_NAMES:
        raise _fail(name, f"layout {layout!r} is not a checkpoint format ({', '.join(FORMAT_NAMES)})")
    if encoder is not None and encoder["type"] in _VISION and layout is None:
        raise _fail(name, "an image-backbone entry needs a `layout`")
    pre = raw.get("preprocessing")
    if pre is not None:
        _check_keys(name, "preprocessing", pre, _PREPROCESS_KEYS)
    published = []
    for i, p in enumerate(raw.get("published") or []):
        _check_keys(name, f"published[{i}]", p, _PUBLISHED_KEYS)
        missing = {"protocol", "dataset", "metric", "value", "source"} - set(p)
        if missing:
            raise _fail(name, f"published[{i}]: missing {', '.join(sorted(missing))}")
        if p["protocol"] == "knn" and "temperature" not in p:
            raise _fail(name, f"published[{i}]: a k-NN number needs its temperature (and k, or k: null)")
        published.append(Published(**{**p, "value": float(p["value"])}))
    return Entry(
        name=name,
        method=raw["method"],
        variant=raw["variant"],
        encoder=dict(encoder) if encoder else None,
        layout=layout,
        preprocessing=dict(pre) if pre else None,
        weights=w,
        licence=str(raw["licence"]),
        published=tuple(published),
        sources=tuple(raw.get("sources") or ()),
        notes=tuple(raw.get("notes") or ()),
        checks=dict(raw.get("checks") or {}),
        loadable=loadable,
    )


@functools.lru_cache(maxsize=4)
def load_catalogue(path: str | None = None) -> dict[str, Entry]:
    """Every entry of the catalogue file (``catalogue.yaml`` shipped with clbench by default)."""
    file = Path(path) if path else CATALOGUE_FILE
    data = yaml.safe_load(file.read_text(encoding="utf-8"))
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError("expected a mapping `entries`", file=str(file))
    return {name: _parse_entry(name, raw) for name, raw in entries.items()}


def names() -> list[str]:
    return list(load_catalogue())


def get_entry(name: str) -> Entry:
    """The entry ``name``; a ConfigError with close matches when there is none."""
    catalogue = load_catalogue()
    if name in catalogue:
        return catalogue[name]
    hint = difflib.get_close_matches(name, list(catalogue), n=3, cutoff=0.5)
    extra = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    raise ConfigError(f"unknown zoo method {name!r}{extra} (`clbench zoo list` shows them all)", key="method")


def zoo_dir() -> Path:
    """``<clbench cache>/zoo``: downloaded weights and the recorded checksums."""
    from ..features import default_cache_dir

    return default_cache_dir() / "zoo"


def weights_path(entry: Entry) -> Path | None:
    """Where a downloadable entry's file lives in the clbench cache (None: not downloadable)."""
    if entry.weights.status != "download":
        return None
    return zoo_dir() / entry.name / str(entry.weights.filename)


def _preprocess_options(pre: dict[str, Any] | None) -> dict[str, Any]:
    if not pre or "crop" not in pre:
        return {}
    out: dict[str, Any] = {"image_size": pre["crop"], "resize_size": pre["resize"]}
    if "interpolation" in pre:
        out["interpolation"] = pre["interpolation"]
    if pre.get("normalize", True) is False:
        out["normalize"] = False
    else:
        out["mean"] = list(pre["mean"])
        out["std"] = list(pre["std"])
    return out


def encoder_spec(entry: Entry, overrides: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(plugin type, plugin options) for ``entry`` with the user's ``overrides`` on top.

    Overrides replace whole values (a ``model_kwargs`` override replaces the entry's mapping).
    Raises ConfigError when the entry cannot be built (weights never released, no loader) or
    needs a file the user has to provide (``checkpoint``).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if entry.loadable or entry.encoder is None:
        raise ConfigError(f"zoo method {entry.name!r} cannot be loaded: {entry.loadable}", key="method")
    plugin = entry.encoder["type"]
    opts = {k: v for k, v in entry.encoder.items() if k != "type"}
    w = entry.weights
    if plugin in _VISION:
        opts.update(_preprocess_options(entry.preprocessing))
        if "checkpoint" not in overrides:
            if w.status != "download":
                raise ConfigError(
                    f"zoo method {entry.name!r}: weights are not downloadable ({w.status}: {w.how}) — "
                    "set `checkpoint` to your local copy",
                    key="checkpoint",
                )
            opts["checkpoint"] = str(weights_path(entry))
        opts["format"] = entry.layout
    elif plugin == "open_clip":
        opts["cache_dir"] = str(zoo_dir() / "open_clip")
        if "checkpoint" in overrides:
            opts.pop("pretrained", None)
    opts.update(overrides)
    checks = entry.checks
    heads = (opts.get("model_kwargs") or {}).get("num_heads")
    if "num_heads" in checks and heads is not None and heads != checks["num_heads"]:
        raise ConfigError(
            f"zoo method {entry.name!r} was trained with {checks['num_heads']} attention heads, "
            f"not {heads}: the weights would load without error and give wrong features",
            key="model_kwargs.num_heads",
        )
    return plugin, opts


def provenance(entry: Entry) -> dict[str, Any]:
    """What a result records about the zoo entry behind its encoder."""
    return {
        "entry": entry.name,
        "method": entry.method,
        "variant": entry.variant,
        "weights": entry.weights.source,
        "weights_status": entry.weights.status,
        "checksum": entry.weights.checksum,
        "licence": entry.licence,
        "sources": list(entry.sources),
    }
