"""The zoo catalogue: entries required by the issue, facts from CHECKPOINTS.md, resolution, CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clbench.errors import ConfigError
from clbench.suite import parse_suite
from clbench.zoo.catalogue import (
    CATALOGUE_FILE,
    STATUSES,
    encoder_spec,
    get_entry,
    load_catalogue,
    weights_path,
    zoo_dir,
)

REQUIRED = [
    "mocov1-200ep", "mocov2-200ep", "mocov2-800ep",
    "mocov3-r50-100ep", "mocov3-r50-300ep", "mocov3-r50-1000ep", "mocov3-vit-s", "mocov3-vit-b",
    "swav-800ep", "swav-400ep", "swav-200ep", "swav-100ep", "swav-200ep-bs256", "swav-400ep-bs256",
    "swav-400ep-2x224", "swav-rn50w2", "swav-rn50w4", "swav-rn50w5",
    "dino-vits16", "dino-vits8", "dino-vitb16", "dino-vitb8", "dino-resnet50",
    "mugs-vits16-800ep", "mugs-vitb16-400ep", "mugs-vitl16-250ep",
    "pixpro-100ep", "pixpro-400ep", "barlowtwins-r50", "mochi-512-1024-512-e1000",
    "simclr-v1-r50x1-converted", "simclr-v2-r50-1x-sk0", "mgca-vitb16", "mgca-resnet50",
    "whitenedcse-bert-base", "whitenedcse-bert-large", "dcl",
    "clip-openai-rn50", "clip-openai-vit-b-32", "clip-openai-vit-b-16", "clip-openai-vit-l-14",
    "clip-openai-vit-l-14-336", "clip-laion2b-vit-b-32", "clip-laion2b-vit-b-16", "clip-laion2b-vit-l-14",
]
SIMCSE = {
    "simcse-unsup-bert-base": ("princeton-nlp/unsup-simcse-bert-base-uncased", "cls-before-pooler", 76.25),
    "simcse-unsup-bert-large": ("princeton-nlp/unsup-simcse-bert-large-uncased", "cls-before-pooler", 78.41),
    "simcse-unsup-roberta-base": ("princeton-nlp/unsup-simcse-roberta-base", "cls-before-pooler", 76.57),
    "simcse-unsup-roberta-large": ("princeton-nlp/unsup-simcse-roberta-large", "cls-before-pooler", 78.90),
    "simcse-sup-bert-base": ("princeton-nlp/sup-simcse-bert-base-uncased", "cls", 81.57),
    "simcse-sup-bert-large": ("princeton-nlp/sup-simcse-bert-large-uncased", "cls", 82.21),
    "simcse-sup-roberta-base": ("princeton-nlp/sup-simcse-roberta-base", "cls", 82.52),
    "simcse-sup-roberta-large": ("princeton-nlp/sup-simcse-roberta-large", "cls", 83.76),
}


def test_every_required_entry_is_catalogued():
    cat = load_catalogue()
    missing = [n for n in REQUIRED + list(SIMCSE) if n not in cat]
    assert not missing
    assert len([n for n in cat if n.startswith("solo-learn")]) >= 1


def test_the_catalogue_file_ships_as_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"clbench.zoo" = ["catalogue.yaml"]' in text
    assert CATALOGUE_FILE.name == "catalogue.yaml" and CATALOGUE_FILE.is_file()


@pytest.mark.parametrize("name", sorted(load_catalogue()))
def test_entry_is_complete_and_resolves(name):
    e = get_entry(name)
    assert e.weights.status in STATUSES and e.licence and e.sources
    for p in e.published:
        assert p.source and p.value > 0
    if e.weights.status == "download":
        assert e.weights.url.startswith("https://") and e.weights.filename
        assert weights_path(e) == zoo_dir() / name / e.weights.filename
    if e.weights.status in ("gone", "never-released", "manual", "convert"):
        assert e.weights.url is None and e.weights.how  # no dead link presented as a download
    if e.loadable:
        with pytest.raises(ConfigError, match="cannot be loaded"):
            encoder_spec(e)
        return
    needs_file = e.weights.status in ("manual", "convert", "gone")
    if needs_file:
        with pytest.raises(ConfigError, match="set `checkpoint`"):
            encoder_spec(e)
    plugin, opts = encoder_spec(e, {"checkpoint": "local.pth"} if needs_file else None)
    assert plugin == e.plugin
    # every resolved option is one the plugin takes, with a valid value (torch-free)
    from clbench.encoders.zoo import _PLUGINS
    from clbench.options import parse_options

    parse_options(_PLUGINS[plugin][1], opts)


def test_gone_and_never_released_weights_say_so():
    for name in [n for n in load_catalogue() if n.startswith("solo-learn")]:
        e = get_entry(name)
        assert e.weights.status == "gone" and "9187ea3" in e.weights.how and "no longer" in e.weights.how
    dcl = get_entry("dcl")
    assert dcl.weights.status == "never-released" and dcl.loadable and dcl.encoder is None
    assert {p.value for p in dcl.published} >= {68.2, 72.3}


def test_facts_from_checkpoints_md():
    # MoCo v1/v2: md5 prefixes and linear numbers of the README (HEAD~1)
    assert [(get_entry(n).weights.checksum, get_entry(n).published[0].value) for n in
            ("mocov1-200ep", "mocov2-200ep", "mocov2-800ep")] == [
        ("md5-prefix:b251726a", 60.6), ("md5-prefix:59fd9945", 67.7), ("md5-prefix:a04e12f8", 71.1)]
    assert get_entry("mocov2-800ep").layout == "moco" and get_entry("mocov3-vit-b").layout == "mocov3"
    # MoCo v3 ViT-S: 12 heads; DINO / Mugs ViT-S: 6
    assert get_entry("mocov3-vit-s").encoder["model_kwargs"] == {"num_heads": 12}
    assert get_entry("mocov3-vit-s").checks == {"num_heads": 12}
    assert get_entry("dino-vits16").checks == {"num_heads": 6} == get_entry("mugs-vits16-800ep").checks
    # preprocessing
    assert get_entry("swav-800ep").preprocessing["std"] == [0.228, 0.224, 0.225]
    for name in ("dino-vits16", "dino-resnet50", "mugs-vitl16-250ep"):
        assert get_entry(name).preprocessing["interpolation"] == "bicubic"
    assert get_entry("mocov2-800ep").preprocessing["interpolation"] == "bilinear"
    assert get_entry("simclr-v1-r50x1-converted").preprocessing["normalize"] is False
    assert get_entry("mgca-vitb16").preprocessing["mean"] == [0.5, 0.5, 0.5]
    # DINO k-NN protocol
    knn = next(p for p in get_entry("dino-vits16").published if p.protocol == "knn")
    assert (knn.value, knn.k, knn.temperature) == (74.5, 20, 0.07)
    # Mugs k is unconfirmed: recorded as such
    assert all(p.k is None for p in get_entry("mugs-vitb16-400ep").published if p.protocol == "knn")
    # licences
    assert get_entry("dino-vitb8").licence == "Apache-2.0" and get_entry("swav-rn50w5").licence == "CC-BY-NC-4.0"
    assert get_entry("mochi-512-1024-512-e1000").licence == "unconfirmed"


def test_simcse_models_and_pooling():
    for name, (repo, pooling, avg) in SIMCSE.items():
        e = get_entry(name)
        assert e.weights.repo == repo and e.encoder["model"] == repo
        assert encoder_spec(e)[1]["pooling"] == pooling
        assert [p.value for p in e.published if p.dataset == "sts-avg"] == [avg]
    w = get_entry("whitenedcse-bert-base")
    assert encoder_spec(w)[1]["pooling"] == "cls-before-pooler"
    assert [p.value for p in w.published if p.dataset == "sts-avg"] == [78.78]


def test_clip_entries_agree_with_open_clip():
    open_clip = pytest.importorskip("open_clip")
    for e in load_catalogue().values():
        if e.plugin != "open_clip":
            continue
        model, tag = e.encoder["model"], e.encoder["pretrained"]
        cfg = open_clip.get_pretrained_cfg(model, tag)
        assert cfg, (model, tag)
        size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
        assert e.preprocessing["crop"] == e.preprocessing["resize"] == size
        assert e.preprocessing["interpolation"] == "bicubic"
        assert tuple(e.preprocessing["mean"]) == tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        assert tuple(e.preprocessing["std"]) == tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        if tag == "openai":
            # the URL is open_clip's (and OpenAI's), and its folder is the file's SHA-256
            assert e.weights.url == cfg["url"]
            assert e.weights.checksum == "sha256:" + e.weights.url.split("/")[-2]


def test_unknown_method_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean 'mocov2-800ep'"):
        get_entry("mocov2-800")


def _suite(encoder: dict) -> dict:
    return {"suite": "z", "encoders": {"e": encoder}, "datasets": {"d": {"type": "sklearn-digits"}},
            "tasks": [{"name": "k", "type": "knn", "dataset": "d"}]}


def test_suite_validation_names_the_key_and_suggests():
    with pytest.raises(ConfigError) as info:
        parse_suite(_suite({"type": "zoo", "method": "dino-vit16"}), Path("s.yaml"))
    assert "encoders.e.method" in str(info.value) and "'dino-vits16'" in str(info.value)
    with pytest.raises(ConfigError, match="encoders.e.pooling"):
        parse_suite(_suite({"type": "zoo", "method": "dino-vits16", "pooling": "tokn"}), Path("s.yaml"))
    with pytest.raises(ConfigError, match="encoders.e.checkpoint.*Google Drive"):
        parse_suite(_suite({"type": "zoo", "method": "pixpro-400ep"}), Path("s.yaml"))
    with pytest.raises(ConfigError, match="unknown option 'checkpiont'; did you mean 'checkpoint'"):
        parse_suite(_suite({"type": "zoo", "method": "pixpro-400ep", "checkpiont": "x"}), Path("s.yaml"))


def test_overrides_reach_the_plugin_options():
    s = parse_suite(_suite({"type": "zoo", "method": "pixpro-400ep", "checkpoint": "w/p.pth", "batch_size": 8,
                            "std": [0.2, 0.2, 0.2]}), Path("s.yaml"))
    entry, plugin, opts = s.encoders["e"].options.resolved()
    assert (entry.name, plugin) == ("pixpro-400ep", "torchvision")
    assert (opts.checkpoint, opts.format, opts.batch_size, opts.std) == ("w/p.pth", "pixpro", 8, [0.2, 0.2, 0.2])
    assert opts.interpolation == "bilinear" and opts.resize_size == 256 and opts.image_size == 224


def test_suite_validation_is_torch_free():
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from clbench.suite import parse_suite
        s = {"suite": "z", "encoders": {n: {"type": "zoo", "method": n} for n in
             ["mocov2-800ep", "mocov3-vit-s", "simcse-sup-bert-base", "clip-openai-vit-b-32", "swav-rn50w2"]},
             "datasets": {"d": {"type": "sklearn-digits"}}, "tasks": [{"name": "k", "type": "knn", "dataset": "d"}]}
        parse_suite(s, Path("s.yaml"))
        heavy = [m for m in ("torch", "timm", "transformers", "open_clip") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_list_and_show():
    from clbench.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["zoo", "list", "--method", "MoCo v3"], terminal_width=250)
    assert out.exit_code == 0 and "mocov3-vit-s" in out.output and "dino-vits16" not in out.output
    out = runner.invoke(app, ["zoo", "show", "mocov3-vit-s"], terminal_width=250)
    assert out.exit_code == 0
    text = out.output
    for fact in ("num_heads=12", "mocov3", "https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
                 "CC-BY-NC-4.0", "linear top1 73.2 on imagenet-1k", "facebookresearch/moco-v3 CONFIG.md",
                 "Resize(256, bilinear)", "none published (SHA-256 recorded on first download"):
        assert fact in text, fact
    out = runner.invoke(app, ["zoo", "show", "solo-learn-byol-r50-in1k-100ep"], terminal_width=250)
    assert "gone" in out.output and "no longer available" in out.output and "https://" not in out.output
    out = runner.invoke(app, ["zoo", "show", "swav-80ep"])
    assert out.exit_code == 2 and "did you mean" in out.output
    out = runner.invoke(app, ["list", "encoders"], terminal_width=250)
    assert "zoo" in out.output


def test_hub_entry_offline_names_the_repository(monkeypatch, tmp_path):
    from clbench.encoders.zoo import build
    from clbench.zoo.download import OfflineError, fetch_entry

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    enc = build("simcse-sup-bert-base", root=tmp_path)
    with pytest.raises(ConfigError, match="huggingface.co/princeton-nlp/sup-simcse-bert-base-uncased"):
        enc.check()
    with pytest.raises(OfflineError, match="huggingface-cli download princeton-nlp/sup-simcse-bert-base-uncased"):
        fetch_entry(get_entry("simcse-sup-bert-base"))


def test_manual_and_gone_entries_have_nothing_to_fetch():
    from clbench.zoo.download import DownloadError, fetch_entry

    with pytest.raises(DownloadError, match="Google Drive"):
        fetch_entry(get_entry("pixpro-100ep"))
    with pytest.raises(DownloadError, match="no longer available"):
        fetch_entry(get_entry("solo-learn-byol-r50-in1k-100ep"))
