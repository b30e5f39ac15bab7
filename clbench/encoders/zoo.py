"""``zoo``: a released checkpoint from the method zoo, by name (``clbench zoo list``).

``{type: zoo, method: mocov2-800ep}`` builds the encoder plugin the entry names (``timm``,
``torchvision``, ``hf`` or ``open_clip``) with the entry's architecture, checkpoint layout and
preprocessing; every other key overrides one option of that plugin::

    encoders:
      moco: {type: zoo, method: mocov2-800ep}
      dino: {type: zoo, method: dino-vits16, batch_size: 128}
      pixpro: {type: zoo, method: pixpro-400ep, checkpoint: weights/pixpro_base_r50_400ep.pth}

Downloadable weights are fetched on first use into ``<clbench cache>/zoo/<entry>/`` and verified
(:mod:`clbench.zoo.download`); offline (``clbench run --offline``, ``CLBENCH_OFFLINE=1``,
``HF_HUB_OFFLINE=1``) validation fails at once with the URL and the path to place the file at.
Results record the zoo entry and its source (``details.encoder_info.zoo``), and architecture
facts the weights cannot reveal (MoCo v3 ViT-S's 12 heads) are checked after the model is built.

Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CheckpointError, ConfigError
from ..options import option, parse_options
from .hf import HFEncoder, HFOptions
from .open_clip_encoder import OpenClipEncoder, OpenClipOptions
from .timm_encoder import TimmEncoder, TimmOptions
from .torchvision_encoder import TorchvisionEncoder, TorchvisionOptions

_TARGET_OPTIONS = (TimmOptions, TorchvisionOptions, HFOptions, OpenClipOptions)


def _override_fields() -> list[tuple[str, Any, Any]]:
    seen: dict[str, Any] = {}
    for cls in _TARGET_OPTIONS:
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, f.metadata.get("help", ""))
    return [
        (name, Any, option(None, f"override of the entry's `{name}` ({help_text})"))
        for name, help_text in sorted(seen.items())
    ]


def _validate(self: Any) -> None:
    from ..zoo.catalogue import encoder_spec, get_entry

    if not isinstance(self.method, str) or not self.method:
        raise ConfigError("expected a zoo method name (see `clbench zoo list`)", key="method")
    entry = get_entry(self.method)
    plugin, opts = encoder_spec(entry, self.overrides())
    cls = _PLUGINS[plugin][1]
    target = parse_options(cls, opts)
    object.__setattr__(self, "_resolved", (entry, plugin, target))


def _overrides(self: Any) -> dict[str, Any]:
    """The options the user set (anything but ``method``), as given."""
    return {
        f.name: getattr(self, f.name)
        for f in dataclasses.fields(self)
        if f.name != "method" and getattr(self, f.name) is not None
    }


def _resolved(self: Any) -> tuple[Any, str, Any]:
    """(zoo entry, plugin type, validated plugin options)."""
    if getattr(self, "_resolved", None) is None:
        _validate(self)
    return self._resolved


#: ``method`` plus every option of the plugins the zoo builds, each None (= the entry's value)
ZooOptions = dataclasses.make_dataclass(
    "ZooOptions",
    [("method", str, option(help="zoo entry name (`clbench zoo list`), e.g. mocov2-800ep"))]
    + _override_fields(),
    kw_only=True,
    namespace={
        "__doc__": "A zoo entry name, and overrides of any option of the encoder plugin it builds.",
        "validate": _validate,
        "overrides": _overrides,
        "resolved": _resolved,
        "__module__": __name__,
    },
)


class _ZooMixin:
    """What the zoo adds to a plugin: fetching the weights, architecture checks, provenance."""

    zoo_entry: Any = None
    _zoo_ready: bool = False

    def _zoo_weights_file(self) -> Path | None:
        """The entry's cached weights file when this encoder uses it (no `checkpoint` override)."""
        from ..zoo.catalogue import weights_path

        path = weights_path(self.zoo_entry)
        ckpt = getattr(self.options, "checkpoint", None)
        return path if path is not None and ckpt is not None and Path(ckpt) == path else None

    def _zoo_hub_repo(self) -> str | None:
        w = self.zoo_entry.weights
        if w.status == "hub" and getattr(self.options, "model", None) == w.repo:
            return w.repo
        return None

    def zoo_check(self) -> bool:
        """Fail fast offline; True when the weights still have to be fetched."""
        from ..zoo.download import is_offline

        path = self._zoo_weights_file()
        if path is not None and not path.is_file():
            if is_offline():
                w = self.zoo_entry.weights
                raise ConfigError(
                    f"offline: the weights of zoo method {self.zoo_entry.name!r} are not in the clbench "
                    f"cache. Download {w.url} by hand and place it at {path}"
                    + (f" (checksum {w.checksum})" if w.checksum else "")
                    + ", or set `checkpoint` to a local copy",
                    key="method",
                )
            return True
        return False

    def zoo_ensure(self) -> None:
        """Download and verify the entry's weights if this encoder uses them (once per process)."""
        if self._zoo_ready:
            return
        from ..zoo.download import DownloadError, fetch_entry

        try:
            if self._zoo_weights_file() is not None:
                fetch_entry(self.zoo_entry)
            elif self._zoo_hub_repo() is not None:
                folder = fetch_entry(self.zoo_entry)
                if self.zoo_entry.weights.subfolder:
                    self.options = dataclasses.replace(self.options, model=str(folder))
        except DownloadError as err:
            raise CheckpointError(f"zoo method {self.zoo_entry.name!r}: {err}") from None
        self._zoo_ready = True

    def check(self) -> None:
        pending = self.zoo_check()
        if pending:
            return  # fetched on first use; the plugin's own checks need the file
        if self._zoo_hub_repo() is not None and self.zoo_entry.weights.subfolder:
            return
        try:
            super().check()  # type: ignore[misc]
        except ConfigError as err:
            if self._zoo_hub_repo() is None:
                raise
            from ..zoo.download import is_offline

            if is_offline():
                raise ConfigError(
                    f"{err.message} (zoo method {self.zoo_entry.name!r}: huggingface.co/{self._zoo_hub_repo()})",
                    key=err.key,
                ) from None

    def fingerprint(self) -> dict[str, Any]:
        self.zoo_ensure()
        return {**super().fingerprint(), "zoo": self.zoo_entry.name}  # type: ignore[misc]

    def setup(self, device: str) -> None:
        self.zoo_ensure()
        super().setup(device)  # type: ignore[misc]
        self._zoo_check_architecture()

    def _zoo_check_architecture(self) -> None:
        heads = self.zoo_entry.checks.get("num_heads")
        model = getattr(self, "model", None)
        if heads is None or model is None:
            return
        found = next((m.num_heads for m in model.modules() if isinstance(getattr(m, "num_heads", None), int)), None)
        if found is not None and found != heads:
            raise CheckpointError(
                f"zoo method {self.zoo_entry.name!r}: the model has {found} attention heads but the weights "
                f"were trained with {heads}; they load without any error into either and give wrong "
                f"features with {found}. Remove the model/model_kwargs override (or set num_heads: {heads})"
            )

    def info(self) -> dict[str, Any]:
        from ..zoo.catalogue import provenance

        return {**super().info(), "zoo": provenance(self.zoo_entry)}  # type: ignore[misc]


class ZooTimmEncoder(_ZooMixin, TimmEncoder):
    """A zoo entry built with timm (plus the architectures of :mod:`clbench.zoo.models`)."""

    def check(self) -> None:
        from ..zoo import models  # noqa: F401  (registers SwAV's wide ResNets in timm)

        super().check()

    def _build(self) -> tuple[Any, list[str]]:
        from ..zoo import models  # noqa: F401

        return super()._build()


class ZooTorchvisionEncoder(_ZooMixin, TorchvisionEncoder):
    """A zoo entry built with torchvision."""


class ZooHFEncoder(_ZooMixin, HFEncoder):
    """A zoo entry built with transformers (``hf``)."""


class ZooOpenClipEncoder(_ZooMixin, OpenClipEncoder):
    """A zoo entry built with open_clip."""


#: plugin type -> (zoo class, options class)
_PLUGINS: dict[str, tuple[type, type]] = {
    "timm": (ZooTimmEncoder, TimmOptions),
    "torchvision": (ZooTorchvisionEncoder, TorchvisionOptions),
    "hf": (ZooHFEncoder, HFOptions),
    "open_clip": (ZooOpenClipEncoder, OpenClipOptions),
}


class ZooEncoder:
    """A released checkpoint from the method zoo, by name (builds the entry's own plugin)."""

    Options: ClassVar[type] = ZooOptions
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})

    def __new__(cls, options: Any, **kw: Any) -> Any:  # type: ignore[misc]
        entry, plugin, target = options.resolved()
        enc = _PLUGINS[plugin][0](target, **kw)
        enc.zoo_entry = entry
        return enc


def build(method: str, root: Path | None = None, seed: int = 0, name: str | None = None, **overrides: Any) -> Any:
    """The encoder of zoo entry ``method`` (for Python use: ``build("dino-vits16")``)."""
    opts = parse_options(ZooOptions, {"method": method, **overrides})
    return ZooEncoder(opts, name=name or method, root=root, seed=seed)
