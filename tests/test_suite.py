"""Suite validation: every bad suite is refused before any work, naming file and key path."""

from __future__ import annotations

import textwrap

import pytest

from clbench.errors import ConfigError
from clbench.suite import load_suite

GOOD = """
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
"""


def _suite(tmp_path, text, name="suite.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_suite_parses(tmp_path):
    suite = load_suite(_suite(tmp_path, GOOD))
    assert suite.name == "demo" and suite.seed == 1 and suite.device == "cpu"
    assert list(suite.encoders) == ["pixels", "mock"]
    assert suite.encoders["mock"].options.dim == 8
    assert [t.name for t in suite.tasks] == ["syn-knn", "syn-linear"]
    assert suite.tasks[0].options.k == [5, 10]
    assert suite.tasks[1].encoders == ["mock"]
    assert suite.output == tmp_path / "results"  # relative to the suite file's folder


BAD = [
    # (description, replacement (old, new) applied to GOOD, expected key path, expected words)
    ("unknown top-level key", ("seed: 1", "sed: 1"), "sed", "did you mean 'seed'"),
    ("bad device", ("device: cpu", "device: gpu"), "device", "cuda"),
    ("seed not an int", ("seed: 1", "seed: one"), "seed", "integer"),
    ("unknown encoder type", ("{type: identity}", "{type: identiy}"), "encoders.pixels.type", "did you mean 'identity'"),
    ("missing encoder type", ("{type: identity}", "{}"), "encoders.pixels", "missing `type`"),
    ("unknown encoder option", ("{type: mock, dim: 8}", "{type: mock, dims: 8}"), "encoders.mock.dims", "did you mean 'dim'"),
    ("wrong option type", ("{type: mock, dim: 8}", "{type: mock, dim: eight}"), "encoders.mock.dim", "integer"),
    ("option fails validation", ("{type: mock, dim: 8}", "{type: mock, dim: 0}"), "encoders.mock", "dim"),
    ("unknown dataset type", ("{type: synthetic,", "{type: synthetc,"), "datasets.syn.type", "did you mean 'synthetic'"),
    ("unknown task type", ("type: knn,", "type: kNN,"), "tasks[0].type", "knn"),
    ("unknown task option", ("temperature: 0.1", "temprature: 0.1"), "tasks[0].temprature", "did you mean 'temperature'"),
    ("wrong list item type", ("k: [5, 10]", "k: [5, ten]"), "tasks[0].k[1]", "integer"),
    ("dangling dataset", ("dataset: syn, k", "dataset: syn2, k"), "tasks[0].dataset", "unknown dataset 'syn2'"),
    ("dangling encoder restriction", ("encoders: [mock]", "encoders: [mok]"), "tasks[1].encoders[0]", "did you mean 'mock'"),
    ("task without name", ("{name: syn-knn, ", "{"), "tasks[0]", "missing `name`"),
    ("duplicate task name", ("name: syn-linear", "name: syn-knn"), "tasks[1].name", "duplicate task name"),
    ("bad encoder name", ("  pixels: {type", "  pix/els: {type"), "encoders.pix/els", "invalid encoder name"),
    ("tasks not a list", ("tasks:\n", "tasks: 3\nxtasks:\n"), "xtasks", "unknown key"),
    ("missing suite name", ("suite: demo", "# no name"), "suite", "missing required key"),
]


@pytest.mark.parametrize("desc,change,key,words", BAD, ids=[b[0] for b in BAD])
def test_bad_suites_name_file_and_key(tmp_path, desc, change, key, words):
    old, new = change
    text = textwrap.dedent(GOOD)
    assert old in text, desc
    path = _suite(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key, str(err)
    assert words in str(err)
    assert str(path) in str(err)


def test_yaml_syntax_error_names_line(tmp_path):
    path = _suite(tmp_path, "suite: x\nencoders: {a: [\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_suite(path)


def test_duplicate_yaml_key_refused(tmp_path):
    path = _suite(tmp_path, "suite: a\nsuite: b\nencoders: {}\ntasks: []\n")
    with pytest.raises(ConfigError, match="duplicate key 'suite'"):
        load_suite(path)


def test_missing_suite_file(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_suite(_suite(tmp_path, "- just\n- a list\n"))


def test_missing_dataset_file_is_reported_before_work(tmp_path):
    text = GOOD.replace(
        "syn: {type: synthetic, kind: vectors, n_train: 60, n_test: 30, num_classes: 3, dim: 5}",
        "syn: {type: arrays, path: missing.npz}",
    )
    path = _suite(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert info.value.key == "datasets.syn"
    assert "missing.npz" in str(info.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = _suite(tmp_path, "suite: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_suite(path)
    assert not (tmp_path / "pwned").exists()


def test_task_dataset_kind_mismatch(tmp_path):
    text = GOOD + "  - {name: bad, type: knn, dataset: stsb}\n" 
    text = text.replace("datasets:\n", "datasets:\n  stsb: {type: sts, path: sts.csv}\n")
    (tmp_path / "sts.csv").write_text("x\n")
    path = _suite(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert info.value.key == "tasks[2].dataset" and "kind classification" in str(info.value)
