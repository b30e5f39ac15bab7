"""Extraction precision (fp32 / bf16 / fp16 autocast), channels-last, and workers sized to the machine."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from clbench.api import run_suite
from clbench.encoders.timm_encoder import TimmEncoder, TimmOptions
from clbench.errors import ConfigError
from clbench.features import auto_workers
from clbench.options import parse_options


def _encoder(**kw) -> TimmEncoder:
    opts = parse_options(TimmOptions, {"model": "resnet18", "pretrained": False, "image_size": 32, **kw})
    return TimmEncoder(opts, name="r18", seed=0)


def _features(enc: TimmEncoder, x) -> np.ndarray:
    enc.setup("cpu")
    return np.asarray(enc.encode(x, "image"))


@pytest.fixture(scope="module")
def batch():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 32, 32, generator=g)


def test_bf16_autocast_on_cpu_is_close_to_fp32(batch):
    ref = _features(_encoder(), batch)
    low = _features(_encoder(precision="bf16"), batch)
    assert low.dtype == np.float32 and low.shape == ref.shape  # stored as float32 whatever the compute
    assert not np.array_equal(low, ref)  # autocast did run in bf16
    cos = (low * ref).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99, cos
    assert np.abs(low - ref).max() <= 0.05 * np.abs(ref).max()


def test_channels_last_gives_the_same_features(batch):
    ref = _features(_encoder(), batch)
    cl = _features(_encoder(channels_last=True), batch)
    np.testing.assert_allclose(cl, ref, rtol=1e-4, atol=1e-5)


def test_precision_and_layout_are_part_of_the_cache_key():
    base = _encoder().fingerprint()
    assert "precision" not in base and "channels_last" not in base  # fp32 keys unchanged
    assert _encoder(precision="bf16").fingerprint()["precision"] == "bf16"
    assert _encoder(precision="fp16").fingerprint() != _encoder(precision="bf16").fingerprint()
    assert _encoder(channels_last=True).fingerprint()["channels_last"] is True
    with pytest.raises(ConfigError, match="precision"):
        parse_options(TimmOptions, {"model": "resnet18", "precision": "int8"})


def test_precision_is_recorded_in_the_result(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        suite: prec
        device: cpu
        encoders:
          r18-bf16: {type: timm, model: resnet18, pretrained: false, image_size: 16, precision: bf16,
                     channels_last: true, num_workers: 0}
        datasets:
          syn: {type: synthetic, kind: images, n_train: 40, n_test: 20, num_classes: 2, size: 16}
        tasks:
          - {name: knn, type: knn, dataset: syn, k: [5]}
    """))
    summary = run_suite(suite)
    assert summary.ok, summary.cells
    result = json.loads((tmp_path / "results" / "prec" / "r18-bf16" / "knn.json").read_text())
    assert result["options"]["encoder"]["precision"] == "bf16"
    assert result["details"]["encoder_info"]["precision"] == "bf16"
    assert result["details"]["encoder_info"]["channels_last"] is True
    # a cached re-run reads the precision back from the cache entry
    summary = run_suite(suite, force=True)
    result = json.loads((tmp_path / "results" / "prec" / "r18-bf16" / "knn.json").read_text())
    assert result["features"][0]["cached"] and result["details"]["encoder_info"]["precision"] == "bf16"


def test_workers_are_sized_to_the_cpus_and_shared_by_local_ranks(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers(-1) == 8  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers(-1) == 3  # 16 CPUs / 4 ranks, one left for the main loop
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert auto_workers(-1) == 0
    assert auto_workers(2) == 2  # an explicit number wins
