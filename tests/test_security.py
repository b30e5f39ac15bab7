"""Security: no remote code unless asked per encoder, safe YAML, suite-relative paths, and clbench
writes only inside the configured output and cache folders.

(The malicious-pickle checkpoint test lives in tests/test_checkpoints.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _reliability import record
from typer.testing import CliRunner

from clbench.cli import app
from clbench.errors import ConfigError
from clbench.results.store import read_result
from clbench.suite import build_encoder, load_suite

REPO = Path(__file__).resolve().parents[1]


class _Stop(Exception):
    """Raised by the fake loaders once they have seen their arguments."""


def _suite(folder: Path, text: str) -> Path:
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _text_suite(folder: Path, encoders: str) -> Path:
    (folder / "model").mkdir(exist_ok=True)  # a local model folder, relative to the suite
    path = folder / "suite.yaml"
    path.write_text(
        "suite: sec\nencoders:\n" + textwrap.indent(textwrap.dedent(encoders).strip(), "  ") + "\n"
        "datasets:\n  syn: {type: synthetic, kind: vectors, n_train: 20, n_test: 10, num_classes: 2, dim: 4}\n"
        "tasks:\n  - {name: knn, type: knn, dataset: syn}\n"
    )
    return path


@pytest.fixture
def seen_kwargs(monkeypatch) -> list[tuple[str, dict]]:
    """Replace the transformers and sentence-transformers loaders by recorders that stop."""
    import sentence_transformers
    import transformers

    calls: list[tuple[str, dict]] = []

    def recorder(name):
        def load(*args, **kwargs):
            calls.append((name, {"args": args, **kwargs}))
            raise _Stop(name)
        return load

    for auto in ("AutoModel", "AutoTokenizer", "AutoImageProcessor", "AutoProcessor", "AutoConfig"):
        fake = type(auto, (), {"from_pretrained": staticmethod(recorder(auto))})
        monkeypatch.setattr(transformers, auto, fake)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recorder("SentenceTransformer"))
    return calls


def _setup(suite_path: Path, name: str) -> None:
    encoder = build_encoder(load_suite(suite_path), name)
    with pytest.raises(_Stop):
        encoder.setup("cpu")


@pytest.mark.parametrize("enc_type", ["hf", "sentence-transformers"])
def test_trust_remote_code_is_off_unless_set_on_that_encoder(tmp_path, seen_kwargs, enc_type):
    suite = _text_suite(tmp_path, f"""
        plain: {{type: {enc_type}, model: model}}
        trusted: {{type: {enc_type}, model: model, trust_remote_code: true}}
        after: {{type: {enc_type}, model: model}}
    """)
    for name, expected in (("plain", False), ("trusted", True), ("after", False)):
        seen_kwargs.clear()
        _setup(suite, name)
        assert seen_kwargs, name
        for loader, kwargs in seen_kwargs:
            assert kwargs.get("trust_remote_code") is expected, (name, loader, kwargs)
            assert kwargs.get("local_files_only") is True, (name, loader, kwargs)
            # the relative model folder resolved against the suite's folder, not the cwd
            assert str(kwargs["args"][0]) == str(tmp_path / "model"), kwargs
    record(f"{enc_type} encoder: trust_remote_code default", "False reaches the loader unless that encoder sets "
           "it (True then, for that encoder only)", injections=3, category="security")


def test_hf_clip_never_trusts_remote_code(tmp_path, seen_kwargs):
    suite = _text_suite(tmp_path, """
        clip: {type: hf-clip, model: model}
    """)
    _setup(suite, "clip")
    assert seen_kwargs
    assert all(not kwargs.get("trust_remote_code", False) for _, kwargs in seen_kwargs), seen_kwargs
    bad = _text_suite(tmp_path, """
        clip: {type: hf-clip, model: model, trust_remote_code: true}
    """)
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_suite(bad)
    record("hf-clip encoder: trust_remote_code", "never passed as True (the option does not exist: a suite "
           "setting it is refused)", injections=2, category="security")


# ------------------------------------------------------------------ YAML


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/object:pathlib.Path {{}}",
])
def test_python_yaml_tags_are_refused(tmp_path, tag):
    marker = tmp_path / "pwned"
    path = tmp_path / "suite.yaml"
    path.write_text(f"suite: x\nseed: {tag.format(marker=marker)}\n")
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert info.value.file == str(path) and "invalid YAML" in str(info.value)
    assert "constructor" in str(info.value) and "python/" in str(info.value)
    res = CliRunner().invoke(app, ["run", str(path)])
    out = res.output + (res.stderr if res.stderr_bytes is not None else "")
    assert res.exit_code == 2 and "Traceback" not in out and "invalid YAML" in out
    assert not marker.exists()
    record("suite YAML with a !!python/* tag", "refused: 'invalid YAML ... could not determine a constructor' "
           "naming the file; nothing executed", category="security")


# ------------------------------------------------------------------ paths and writes


RELATIVE = """
suite: rel
device: cpu
output: out
cache: feature-cache
encoders:
  emb: {type: precomputed, path: data/emb.npz}
  pixels: {type: identity}
datasets:
  lab: {type: labels, path: data/labels.csv}
  feats: {type: arrays, path: data/feats.npz}
tasks:
  - {name: lab-knn, type: knn, dataset: lab, k: [3], encoders: [emb]}
  - {name: feats-knn, type: knn, dataset: feats, k: [3], encoders: [pixels]}
"""


def _data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    data = folder / "data"
    data.mkdir(parents=True)
    ids = [f"s{i}" for i in range(24)]
    (data / "labels.csv").write_text("id,label,split\n" + "".join(
        f"{s},{i % 3},{'train' if i < 18 else 'test'}\n" for i, s in enumerate(ids)))
    np.savez(data / "emb.npz", ids=np.array(ids), embeddings=rng.standard_normal((24, 6)).astype(np.float32))
    np.savez(data / "feats.npz", x_train=rng.standard_normal((30, 5)), y_train=np.arange(30) % 3,
             x_test=rng.standard_normal((12, 5)), y_test=np.arange(12) % 3)


def test_relative_paths_resolve_against_the_suite_folder(tmp_path, monkeypatch):
    suite_dir, elsewhere = tmp_path / "suite", tmp_path / "cwd"
    suite_dir.mkdir()
    elsewhere.mkdir()
    _data(suite_dir)
    path = _suite(suite_dir, RELATIVE)
    (elsewhere / "data").mkdir()  # a decoy: same relative names, must not be read
    (elsewhere / "data" / "labels.csv").write_text("not,a,labels,file\n")
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(app, ["run", "../suite/suite.yaml"])
    assert res.exit_code == 0, res.output
    for task in ("lab-knn", "feats-knn"):
        enc = "emb" if task == "lab-knn" else "pixels"
        result = read_result(suite_dir / "out" / "rel" / enc / f"{task}.json")
        assert result["status"] == "ok"
    assert any((suite_dir / "feature-cache" / "features").rglob("x.npy"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["data"]  # nothing written in the cwd
    suite = load_suite(path)
    assert suite.output == suite_dir / "out" and suite.cache == suite_dir / "feature-cache"
    record("relative paths in a suite run from another cwd (decoy files there)", "output, cache, dataset and "
           "embedding files resolved against the suite's folder; nothing read or written in the cwd",
           category="security")


WRITES = """
suite: writes
device: cpu
output: results
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 16, num_workers: 0}
datasets:
  syn: {type: synthetic, kind: vectors, n_train: 300, n_test: 100, num_classes: 4, dim: 12}
  feats: {type: arrays, path: data/feats.npz}
tasks:
  - {name: knn, type: knn, dataset: syn, k: [5]}
  - {name: probe, type: linear_probe, dataset: syn, encoders: [mock]}
  - {name: diag, type: diagnostics, dataset: syn, encoders: [mock]}
  - {name: clusters, type: clustering, dataset: syn, encoders: [mock]}
  - {name: feats-knn, type: knn, dataset: feats, k: [3], encoders: [pixels]}
"""


def _snapshot(*roots: Path) -> dict[Path, tuple[int, int]]:
    files = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                files[p] = (st.st_size, st.st_mtime_ns)
    return files


def test_run_writes_only_inside_output_and_cache(tmp_path):
    suite_dir, cwd, home, xdg, tmp = (tmp_path / n for n in ("suite", "cwd", "home", "xdg-cache", "tmp"))
    for d in (suite_dir, cwd, home, xdg, tmp):
        d.mkdir()
    _data(suite_dir)
    suite = _suite(suite_dir, WRITES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLBENCH_", "MPL", "XDG_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(xdg), TMPDIR=str(tmp), PYTHONPATH=str(REPO),
               PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    roots = (suite_dir, cwd, home, xdg, tmp)
    before = _snapshot(*roots)
    proc = subprocess.run([sys.executable, "-m", "clbench", "run", str(suite)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _snapshot(*roots)
    changed = sorted(p for p, st in after.items() if before.get(p) != st)
    removed = sorted(set(before) - set(after))
    output, cache = suite_dir / "results", xdg / "clbench"  # the default cache: $XDG_CACHE_HOME/clbench
    outside = [p for p in changed if not (p.is_relative_to(output) or p.is_relative_to(cache))]
    assert not outside, outside
    assert not removed, removed
    assert any(p.is_relative_to(output) for p in changed) and any(p.is_relative_to(cache) for p in changed)
    assert not list(tmp.iterdir()), list(tmp.iterdir())  # temporary files of libraries are gone
    assert not list(cwd.iterdir()) and not list(home.iterdir())
    record("`clbench run` with cwd, HOME, XDG_CACHE_HOME and TMPDIR pointed at watched folders",
           f"{len(changed)} files written, all inside the output and cache folders; TMPDIR left empty",
           category="security")
