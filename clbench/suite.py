"""Suite files (version 1): flat YAML, validated strictly before any work starts.

Every problem is a :class:`ConfigError` naming the file, the key path (``tasks[2].k``) and what
was expected. Validation has two stages: :func:`load_suite` checks structure, plugin names,
option types and references (no files opened beyond the suite); :func:`check_sources` then asks
each encoder and dataset whether its files exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ClbenchError, ConfigError
from .registry import DATASETS, ENCODERS, TASKS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
TOP_LEVEL = {
    "version": "the suite format version (1)",
    "suite": "the suite's name (results go to <output>/<suite>/)",
    "output": "results folder, relative to the suite file (default: results)",
    "cache": "feature cache folder, relative to the suite file (default: $CLBENCH_CACHE_DIR or the user cache)",
    "seed": "integer seed (default 0)",
    "device": "auto | cpu | cuda | cuda:N",
    "encoders": "mapping of encoder name -> options with a `type`",
    "datasets": "mapping of dataset name -> options with a `type`",
    "tasks": "list of tasks, each with `name`, `type` and (usually) `dataset`",
    "launcher": "optional: how `clbench run` executes the cells (type: inline | local | slurm, SLURM options)",
}
TASK_KEYS = ("name", "type", "dataset", "encoders")


@dataclasses.dataclass
class PluginSpec:
    name: str
    type: str
    cls: type
    options: Any
    raw: dict[str, Any]


@dataclasses.dataclass
class TaskSpec(PluginSpec):
    dataset: str | None = None
    encoders: list[str] | None = None
    index: int = 0


@dataclasses.dataclass
class Suite:
    path: Path
    name: str
    output: Path
    cache: Path | None
    seed: int
    device: str
    encoders: dict[str, PluginSpec]
    datasets: dict[str, PluginSpec]
    tasks: list[TaskSpec]
    #: the ``launcher:`` mapping (:class:`clbench.launch.LauncherOptions`), or None
    launcher: Any = None

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def results_dir(self) -> Path:
        return self.output / self.name


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses duplicate keys (a silent overwrite hides typos)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged by SafeLoader below
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:  # `? [a, b]` or `{a: 1}: x`: a list or mapping as a key
            mark = key_node.start_mark
            raise ConfigError(f"a list or mapping cannot be a key (line {mark.line + 1})") from None
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"duplicate key {key!r} (line {mark.line + 1})")
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("suite file not found", file=str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", file=str(path)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as err:
        raise err.at(file=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML{where}: {problem}", file=str(path)) from None


def _expect(cond: bool, message: str, key: str) -> None:
    if not cond:
        raise ConfigError(message, key=key)


def _check_name(name: Any, key: str, what: str) -> str:
    _expect(isinstance(name, str), f"expected a {what} name (string), got {name!r}", key)
    _expect(
        bool(NAME_RE.match(name)),
        f"invalid {what} name {name!r}: use letters, digits, '.', '_' and '-' (it becomes a file name)",
        key,
    )
    return name


def _parse_plugin(registry, name: str, raw: Any, key: str, extra_keys: tuple[str, ...] = ()) -> PluginSpec:
    _expect(isinstance(raw, dict), f"expected a mapping with a `type`, got {raw!r}", key)
    _expect("type" in raw, f"missing `type` (one of: {', '.join(registry.names())})", key)
    type_name = raw["type"]
    _expect(isinstance(type_name, str), f"expected a plugin name (string), got {type_name!r}", f"{key}.type")
    try:
        cls = registry.get(type_name)
    except ConfigError as err:
        raise ConfigError(err.message, key=f"{key}.type") from None
    except ImportError as err:
        raise ConfigError(f"plugin {type_name!r} cannot be imported: {err}", key=f"{key}.type") from None
    options_raw = {k: v for k, v in raw.items() if k != "type" and k not in extra_keys}
    from .options import parse_options

    options = parse_options(cls.Options, options_raw, key=key)
    return PluginSpec(name=name, type=type_name, cls=cls, options=options, raw=dict(raw))


def parse_suite(data: Any, path: Path) -> Suite:
    """Validate the structure of ``data`` (already-read YAML) as a suite located at ``path``."""
    path = Path(path)
    try:
        return _parse(data, path)
    except ConfigError as err:
        raise err.at(file=str(path)) from None


def _parse(data: Any, path: Path) -> Suite:
    _expect(isinstance(data, dict), "expected a mapping of suite keys (suite, encoders, datasets, tasks)", "(top level)")
    for key in data:
        if key not in TOP_LEVEL:
            hint = difflib.get_close_matches(str(key), list(TOP_LEVEL), n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            shown = str(key) if str(key).strip() else repr(key)  # an empty key path would be invisible
            raise ConfigError(f"unknown key{extra} (allowed: {', '.join(TOP_LEVEL)})", key=shown)
    _expect(data.get("version", 1) == 1, f"unsupported suite version {data.get('version')!r} (expected 1)", "version")
    _expect("suite" in data, "missing required key: the suite's name", "suite")
    name = _check_name(data["suite"], "suite", "suite")
    root = path.parent

    output = data.get("output", "results")
    _expect(isinstance(output, str) and output.strip() != "", f"expected a folder path, got {output!r}", "output")
    output_path = Path(output).expanduser()
    output_path = output_path if output_path.is_absolute() else root / output_path

    cache = data.get("cache")
    cache_path = None
    if cache is not None:
        _expect(isinstance(cache, str) and cache.strip() != "", f"expected a folder path, got {cache!r}", "cache")
        cache_path = Path(cache).expanduser()
        cache_path = cache_path if cache_path.is_absolute() else root / cache_path

    seed = data.get("seed", 0)
    _expect(isinstance(seed, int) and not isinstance(seed, bool), f"expected an integer, got {seed!r}", "seed")
    device = data.get("device", "auto")
    _expect(
        isinstance(device, str) and bool(DEVICE_RE.match(device)),
        f"expected auto, cpu, cuda or cuda:N, got {device!r}",
        "device",
    )

    launcher = None
    if data.get("launcher") is not None:
        from .launch import LauncherOptions
        from .options import parse_options

        launcher = parse_options(LauncherOptions, data["launcher"], key="launcher")

    raw_encoders = data.get("encoders")
    _expect(isinstance(raw_encoders, dict) and raw_encoders, "expected a non-empty mapping of encoders", "encoders")
    encoders = {}
    for enc_name, raw in raw_encoders.items():
        key = f"encoders.{enc_name}"
        _check_name(enc_name, key, "encoder")
        encoders[enc_name] = _parse_plugin(ENCODERS, enc_name, raw, key)

    raw_datasets = data.get("datasets", {}) or {}
    _expect(isinstance(raw_datasets, dict), "expected a mapping of datasets", "datasets")
    datasets = {}
    for ds_name, raw in raw_datasets.items():
        key = f"datasets.{ds_name}"
        _check_name(ds_name, key, "dataset")
        datasets[ds_name] = _parse_plugin(DATASETS, ds_name, raw, key)

    raw_tasks = data.get("tasks")
    _expect(isinstance(raw_tasks, list) and raw_tasks, "expected a non-empty list of tasks", "tasks")
    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_tasks):
        key = f"tasks[{i}]"
        _expect(isinstance(raw, dict), f"expected a mapping with `name` and `type`, got {raw!r}", key)
        _expect("name" in raw, "missing `name`", key)
        task_name = _check_name(raw["name"], f"{key}.name", "task")
        if task_name in seen:
            raise ConfigError(f"duplicate task name {task_name!r} (also tasks[{seen[task_name]}])", key=f"{key}.name")
        seen[task_name] = i
        spec = _parse_plugin(TASKS, task_name, raw, key, extra_keys=("name", "dataset", "encoders"))
        cls = spec.cls
        dataset = raw.get("dataset")
        if getattr(cls, "needs_dataset", True):
            _expect(dataset is not None, f"missing `dataset` (one of: {', '.join(datasets) or 'none defined'})", key)
        if dataset is not None:
            _expect(isinstance(dataset, str), f"expected a dataset name, got {dataset!r}", f"{key}.dataset")
            if dataset not in datasets:
                hint = difflib.get_close_matches(dataset, list(datasets), n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(
                    f"unknown dataset {dataset!r}{extra} (defined: {', '.join(datasets) or 'none'})",
                    key=f"{key}.dataset",
                )
            ds_cls = datasets[dataset].cls
            kinds = getattr(cls, "dataset_kinds", ())
            if kinds and ds_cls.kind not in kinds:
                raise ConfigError(
                    f"task type {spec.type!r} needs a dataset of kind {' or '.join(kinds)}; "
                    f"{dataset!r} ({datasets[dataset].type}) is {ds_cls.kind}",
                    key=f"{key}.dataset",
                )
        restrict = raw.get("encoders")
        if restrict is not None:
            if isinstance(restrict, str):
                restrict = [restrict]
            _expect(
                isinstance(restrict, list) and all(isinstance(e, str) for e in restrict) and restrict,
                f"expected a non-empty list of encoder names, got {restrict!r}",
                f"{key}.encoders",
            )
            for j, enc in enumerate(restrict):
                if enc not in encoders:
                    hint = difflib.get_close_matches(enc, list(encoders), n=1)
                    extra = f"; did you mean {hint[0]!r}?" if hint else ""
                    raise ConfigError(
                        f"unknown encoder {enc!r}{extra} (defined: {', '.join(encoders)})",
                        key=f"{key}.encoders[{j}]",
                    )
        tasks.append(
            TaskSpec(
                name=task_name, type=spec.type, cls=cls, options=spec.options, raw=spec.raw,
                dataset=dataset, encoders=restrict, index=i,
            )
        )
    return Suite(
        path=path, name=name, output=output_path, cache=cache_path, seed=seed, device=device,
        encoders=encoders, datasets=datasets, tasks=tasks, launcher=launcher,
    )


def load_suite(path: str | Path, *, check: bool = True) -> Suite:
    """Read, validate and (with ``check``) check the sources of the suite file at ``path``."""
    path = Path(path)
    suite = parse_suite(read_yaml(path), path)
    if check:
        check_sources(suite)
    return suite


def build_encoder(suite: Suite, name: str):
    spec = suite.encoders[name]
    return spec.cls(spec.options, name=name, root=suite.root, seed=suite.seed)


def build_dataset(suite: Suite, name: str):
    spec = suite.datasets[name]
    return spec.cls(spec.options, name=name, root=suite.root, seed=suite.seed)


def check_sources(suite: Suite) -> None:
    """Ask every encoder and dataset whether its files are there; ConfigError otherwise."""
    for group, builder in (("encoders", build_encoder), ("datasets", build_dataset)):
        for name in getattr(suite, group):
            try:
                builder(suite, name).check()
            except ConfigError as err:
                raise err.at(file=str(suite.path), key_prefix=f"{group}.{name}") from None
            except ClbenchError as err:
                raise ConfigError(str(err), file=str(suite.path), key=f"{group}.{name}") from None
            except (OSError, ValueError) as err:  # a plugin's unforeseen read error: still no traceback
                raise ConfigError(f"{type(err).__name__}: {err}", file=str(suite.path), key=f"{group}.{name}") from None
