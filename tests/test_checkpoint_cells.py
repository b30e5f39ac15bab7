"""Checkpoints through a whole suite run: coverage recorded, incomplete checkpoints fail the cell."""

from __future__ import annotations

import textwrap

import pytest
import torch
from typer.testing import CliRunner

from clbench.cli import app
from clbench.results.store import read_result

SUITE = """
suite: ckpt
device: cpu
encoders:
  moco: {type: timm, model: resnet18, checkpoint: moco.pth.tar, image_size: 32, batch_size: 16}
  broken: {type: timm, model: resnet18, checkpoint: broken.pth.tar, image_size: 32, batch_size: 16}
datasets:
  imgs: {type: synthetic, kind: images, n_train: 40, n_test: 20, num_classes: 2, size: 16}
tasks:
  - {name: knn, type: knn, dataset: imgs, k: [5]}
"""


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _moco_checkpoint(drop: str | None = None) -> dict:
    import timm

    torch.manual_seed(1)
    model = timm.create_model("resnet18", num_classes=0)
    sd = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)  # v2 MLP head, dropped knowingly
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 512)
    sd["module.queue"] = torch.randn(128, 64)
    if drop:
        del sd[f"module.encoder_q.{drop}"]
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd}


def test_missing_backbone_weight_fails_the_cell_and_the_run(tmp_path):
    torch.save(_moco_checkpoint(), tmp_path / "moco.pth.tar")
    torch.save(_moco_checkpoint(drop="layer4.1.bn2.weight"), tmp_path / "broken.pth.tar")
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    res = CliRunner().invoke(app, ["run", str(suite)])
    assert res.exit_code == 1, res.output

    good = read_result(tmp_path / "results/ckpt/moco/knn.json")
    assert good["status"] == "ok"
    cov = good["coverage"]
    assert cov["missing"] == [] and cov["unexpected"] == [] and cov["mismatched"] == []
    assert cov["format"] == "moco"
    assert any(k.startswith("fc.") or "fc.0" in k for k in cov["dropped"]) and any("queue" in k for k in cov["dropped"])
    assert good["fingerprints"]["encoder"]  # weights digest is part of the identity

    bad = read_result(tmp_path / "results/ckpt/broken/knn.json")
    assert bad["status"] == "failed"
    assert "layer4.1.bn2.weight" in bad["reason"]
    assert bad["main_value"] is None
