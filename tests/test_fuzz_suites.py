"""Fuzzing suite files: any input is either a valid suite or a ConfigError naming file and key.

Random YAML-able structures and mutations of every shipped suite (and of a small valid test
suite) go through :func:`clbench.suite.parse_suite`, :func:`clbench.suite.load_suite` (on a file
written with ``yaml.safe_dump``) and ``clbench validate``: never a TypeError, AttributeError,
KeyError or any other traceback.
"""

from __future__ import annotations

import copy
import math
import textwrap
from pathlib import Path

import pytest
import yaml
from _reliability import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from clbench.cli import app
from clbench.errors import ConfigError
from clbench.suite import load_suite, parse_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml"))

SMALL = yaml.safe_load(textwrap.dedent("""
    suite: demo
    seed: 1
    device: cpu
    encoders:
      pixels: {type: identity}
      mock: {type: mock, dim: 8}
    datasets:
      syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 5}
    tasks:
      - {name: syn-knn, type: knn, dataset: syn, k: [5, 10], temperature: 0.1}
      - {name: syn-linear, type: linear_probe, dataset: syn, encoders: [mock]}
"""))
BASES = {"small": SMALL, **{p.name: yaml.safe_load(p.read_text()) for p in SUITES}}
PLUGIN_WORDS = [
    "identity", "mock", "timm", "hf", "open_clip", "precomputed", "synthetic", "knn", "linear_probe",
    "retrieval", "sts", "clustering", "", "Knn", "knn ", "__init__", "os.path:join", "..", "a.b:c", "../x",
]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# ------------------------------------------------------------------ strategies

keys = st.one_of(
    st.sampled_from(["suite", "type", "name", "dataset", "encoders", "datasets", "tasks", "k", "dim", "path",
                     "version", "seed", "device", "output", "cache", "prompts", "model_kwargs", "seeds"]),
    st.text(max_size=8),
    st.integers(-3, 3),
    st.booleans(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(PLUGIN_WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every (container path) below ``node`` (dicts and lists), with node itself."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, (dict, list)):
                yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _mutate(data, draw):
    """Apply one random mutation somewhere in ``data`` (a deep copy)."""
    data = copy.deepcopy(data)
    paths = list(_paths(data))
    target = _get(data, draw(st.sampled_from(paths)))
    op = draw(st.sampled_from(["drop", "rename", "replace", "insert", "retype", "dup-task", "dangle", "plugin"]))
    if op == "dup-task" and isinstance(data.get("tasks"), list) and data["tasks"]:
        data["tasks"].append(copy.deepcopy(draw(st.sampled_from(data["tasks"]))))
        return data
    if op == "dangle" and isinstance(data.get("tasks"), list) and data["tasks"]:
        task = draw(st.sampled_from(data["tasks"]))
        if isinstance(task, dict):
            field = draw(st.sampled_from(["dataset", "encoders"]))
            task[field] = draw(st.one_of(st.text(max_size=6), st.lists(st.text(max_size=6), max_size=3)))
        return data
    if op == "plugin":
        plugins = [d for d in _walk_dicts(data) if "type" in d]
        if plugins:
            draw(st.sampled_from(plugins))["type"] = draw(st.one_of(st.sampled_from(PLUGIN_WORDS), st.text(max_size=10)))
        return data
    if isinstance(target, dict):
        existing = list(target)
        if op == "drop" and existing:
            del target[draw(st.sampled_from(existing))]
        elif op == "rename" and existing:
            old = draw(st.sampled_from(existing))
            target[draw(keys)] = target.pop(old)
        elif op in ("replace", "retype") and existing:
            k = draw(st.sampled_from(existing))
            target[k] = draw(values) if op == "replace" else _retype(target[k], draw)
        else:
            target[draw(keys)] = draw(values)
    elif isinstance(target, list):
        if op == "drop" and target:
            del target[draw(st.integers(0, len(target) - 1))]
        elif op in ("replace", "retype", "rename") and target:
            i = draw(st.integers(0, len(target) - 1))
            target[i] = draw(values) if op != "retype" else _retype(target[i], draw)
        else:
            target.insert(draw(st.integers(0, len(target))), draw(values))
    return data


def _walk_dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk_dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_dicts(v)


def _retype(value, draw):
    """``value`` changed to another type that still looks like it (5 -> "5", [5] -> 5, ...)."""
    options = [str(value), [value], {"value": value}, None, True, 1.5, -1, 0]
    if isinstance(value, list) and value:
        options.append(value[0])
    if isinstance(value, dict):
        options.append(list(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        options += [-value, float("nan"), float(value) + 0.5, 10**30]
    return draw(st.sampled_from(options))


# ------------------------------------------------------------------ property


ACCEPTED = "accepted as a valid suite"
REJECTED = "rejected: ConfigError naming the file and the key path"


def _check_parse(data, path: Path, fault: str = "") -> None:
    try:
        parse_suite(data, path)
    except ConfigError as err:
        assert err.file == str(path), err
        assert isinstance(err.key, str) and err.key, err
        outcome = REJECTED
    else:
        outcome = ACCEPTED
    if fault:
        record(fault, outcome, category="fuzz")


def _check_load(data, path: Path, fault: str = "") -> None:
    try:
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    path.write_text(text, encoding="utf-8")
    try:
        load_suite(path, check=False)
    except ConfigError as err:
        assert err.file == str(path), err
        # a file that does not even read back as YAML has no key to point at
        assert err.key or err.message.startswith(("invalid YAML", "duplicate key")), err
        outcome = REJECTED if err.key else "rejected: ConfigError naming the file (invalid YAML / duplicate key)"
    else:
        outcome = ACCEPTED
    if fault:
        record(fault, outcome, category="fuzz")


def _fresh_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "suite.yaml"


@FAST
@given(data=values)
def test_random_structures_never_crash(tmp_path_factory, data):
    path = _fresh_path(tmp_path_factory)
    _check_parse(data, path, "random YAML-able structure (hypothesis) through parse_suite")
    _check_load(data, path, "random structure written as a suite file, through load_suite")


@FAST
@given(data=st.dictionaries(st.sampled_from(["version", "suite", "output", "cache", "seed", "device", "encoders",
                                             "datasets", "tasks", "extra"]), values, max_size=9))
def test_random_top_level_mappings_never_crash(tmp_path_factory, data):
    _check_parse(data, _fresh_path(tmp_path_factory), "random top-level suite mapping (hypothesis)")


@pytest.mark.parametrize("base", list(BASES), ids=list(BASES))
def test_base_suites_parse(base, tmp_path):
    parse_suite(copy.deepcopy(BASES[base]), tmp_path / "suite.yaml")


@pytest.mark.parametrize("base", list(BASES), ids=list(BASES))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.data())
def test_mutated_suites_never_crash(tmp_path_factory, base, data):
    mutated = BASES[base]
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = _mutate(mutated, data.draw)
    path = _fresh_path(tmp_path_factory)
    _check_parse(mutated, path, "shipped suite with 1-3 random mutations (parse_suite)")
    _check_load(mutated, path, "shipped suite with 1-3 random mutations (load_suite on the file)")


def test_cli_validate_on_mutated_files(tmp_path):
    import random

    rng = random.Random(7)
    runner = CliRunner()

    # fixed, hand-picked mutations, plus a seeded choice of shipped suites with a bad task type
    cases = [
        dict(SMALL, seed="one"),
        dict(SMALL, tasks=SMALL["tasks"] + [copy.deepcopy(SMALL["tasks"][0])]),
        dict(SMALL, encoders={"pixels": {"type": 3}}),
        dict(SMALL, encoders={"pixels": {"type": "identity", "batch_size": [1, 2]}}),
        dict(SMALL, datasets=[1, 2]),
        dict(SMALL, tasks=[{"name": "x", "type": "knn", "dataset": ["syn"]}]),
        dict(SMALL, tasks=[{"name": "x", "type": "knn", "dataset": "syn", "encoders": [None]}]),
        {k: v for k, v in SMALL.items() if k != "encoders"},
        dict(SMALL, suite={"a": 1}),
        SMALL,
    ]
    for name in rng.sample(list(BASES), 3):
        base = copy.deepcopy(BASES[name])
        base["tasks"][0]["type"] = "no-such-task"
        cases.append(base)
    for i, case in enumerate(cases):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(yaml.safe_dump(case, sort_keys=False))
        res = runner.invoke(app, ["validate", str(path)])
        out = res.output + (res.stderr if res.stderr_bytes is not None else "")
        assert res.exit_code in (0, 2), (case, out, res.exception)
        assert "Traceback" not in out
        assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
        record("mutated suite file through `clbench validate`",
               "exit 0 (valid)" if res.exit_code == 0 else "exit 2 with an error message, no traceback", category="fuzz")
    path = tmp_path / "bad.yaml"
    path.write_text("suite: [unclosed\n")
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output


# ------------------------------------------------------------------ raw YAML text

SNIPPETS = [
    "? [1, 2]\n: 3", "{a: 1}: x", "? {a: 1}\n: 2", "x: &a [*a]", "x: &a {k: *a}", "<<: 5", "<<: [1]",
    "y: !!binary aGVsbG8=", "z: 2020-01-01", "w: !!python/object:os.system x", "dup: 1\ndup: 2", "t: [", "- 1",
    "  bad indent: 1", "k: {a: 1, a: 2}", "\t", "%YAML 1.1\n---", "---\n---", "k: .nan", "k: .inf", "'': 1",
    "~: 1", "1: 1", "true: 1", "k: |\n  text",
]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_raw_yaml_text_never_crashes(tmp_path_factory, data):
    base = data.draw(st.sampled_from(list(BASES)))
    lines = yaml.safe_dump(BASES[base], sort_keys=False).splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["insert", "drop", "dup", "indent"]))
        i = data.draw(st.integers(0, len(lines) - 1)) if lines else 0
        if op == "insert" or not lines:
            lines.insert(i, data.draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=10))))
        elif op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            lines[i] = "  " + lines[i]
    path = _fresh_path(tmp_path_factory)
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        load_suite(path, check=False)
    except ConfigError as err:
        assert err.file == str(path), err
        assert err.key or "line" in err.message or err.message.startswith("invalid YAML"), err
        outcome = "rejected: ConfigError naming the file and the key path or line"
    else:
        outcome = ACCEPTED
    record("suite file text with random line edits and YAML snippets (hypothesis)", outcome, category="fuzz")


# ------------------------------------------------------------------ regressions found by the fuzzer


def test_empty_top_level_key_has_a_visible_key_path(tmp_path):
    data = dict(SMALL, **{"": 1})
    with pytest.raises(ConfigError) as info:
        parse_suite(data, tmp_path / "suite.yaml")
    assert info.value.key == "''" and info.value.file == str(tmp_path / "suite.yaml")


@pytest.mark.parametrize("text", ["suite: x\n? [1, 2]\n: 3\n", "suite: x\n{a: 1}: 3\n"])
def test_unhashable_yaml_key_is_a_config_error(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="cannot be a key") as info:
        load_suite(path, check=False)
    assert info.value.file == str(path)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_yaml_merge_keys_work_and_duplicates_are_still_refused(tmp_path):
    text = textwrap.dedent("""
        suite: demo
        encoders:
          a: &base {type: mock, dim: 8}
          b: {<<: *base, dim: 4}
        datasets:
          syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 5}
        tasks:
          - {name: knn, type: knn, dataset: syn}
    """)
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    suite = load_suite(path, check=False)
    assert suite.encoders["a"].options.dim == 8 and suite.encoders["b"].options.dim == 4
    path.write_text(text.replace("dim: 4}", "dim: 4, dim: 5}"))
    with pytest.raises(ConfigError, match="duplicate key 'dim'"):
        load_suite(path, check=False)


def test_nan_and_inf_are_plain_values(tmp_path):
    data = copy.deepcopy(SMALL)
    data["tasks"][0]["temperature"] = math.nan
    _check_parse(data, tmp_path / "suite.yaml")


# ------------------------------------------------------------------ every plugin's options


def _plugins():
    from clbench.registry import DATASETS, ENCODERS, TASKS

    out = []
    for group, registry in (("encoders", ENCODERS), ("datasets", DATASETS), ("tasks", TASKS)):
        for name in registry.names():
            try:
                cls = registry.get(name)
            except ImportError:  # an optional plugin that cannot be imported here
                cls = None
            if cls is not None:
                out.append((group, name, cls))
    return out


PLUGINS = _plugins()


def _options_strategy(cls):
    import dataclasses

    fields = dataclasses.fields(cls.Options)

    def value_for(f):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        return st.one_of(values, st.builds(lambda d: d, st.just(default)),
                         st.sampled_from([0, -1, 1, 2, 10**12, 0.5, -0.5, "", " ", "x", [], {}, [0], [1, 1],
                                          [2, 1], {"": 1}, {"k": None}, "nan", "1e-3", float("nan")]))

    if not fields:
        return st.just({})
    return st.fixed_dictionaries({}, optional={f.name: value_for(f) for f in fields})


@pytest.mark.parametrize("group,name,cls", PLUGINS, ids=[f"{g}.{n}" for g, n, _ in PLUGINS])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_plugin_options_never_crash(tmp_path_factory, group, name, cls, data):
    opts = data.draw(_options_strategy(cls))
    suite = copy.deepcopy(SMALL)
    entry = dict(opts, type=name)
    if group == "tasks":
        suite["tasks"] = [dict(entry, name="t", dataset="syn")]
    else:
        suite[group] = {"p": entry}
        suite["tasks"] = [{"name": "t", "type": "knn", "dataset": "syn" if group == "encoders" else "p"}]
    _check_parse(suite, _fresh_path(tmp_path_factory), "random option values for every registered plugin")
