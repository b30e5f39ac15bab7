"""Tiny randomly initialised CLIPs (transformers and open_clip) end to end on CPU.

Retrieval on coco-mini and zero-shot on MNIST through clbench equal the same metrics computed
directly from the model's own embeddings (its own processor / transform and tokenizer), outside
clbench. The same encoders also serve an image-only task (k-NN) and a text task (STS).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_clip_metrics import brute_recall

from clbench.api import run_suite
from clbench.results.store import read_result
from clbench.suite import build_dataset, load_suite

MNIST_TEMPLATES = ["a photo of the number: '{c}'.", "a drawing of the digit {c}."]


def _byte_chars() -> list[str]:
    """The 256 characters a byte-level BPE uses for the bytes (printable ones stand for themselves)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


@pytest.fixture(scope="module")
def hf_clip_folder(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    eos = 513
    cfg = CLIPConfig(
        text_config={
            "vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 512,
            "eos_token_id": eos, "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("tiny-hf-clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(cfg).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory) -> tuple[Path, Path]:
    open_clip = pytest.importorskip("open_clip")
    import torch

    folder = tmp_path_factory.mktemp("tiny-open-clip")
    cfg = folder / "tiny-clip-test.json"
    cfg.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = open_clip.create_model("tiny-clip-test")
    ckpt = folder / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return cfg, ckpt


def _suite(tmp_path: Path, shared: Path, encoder: str) -> Path:
    mini = shared / "coco-mini"
    sts = tmp_path / "sts.jsonl"
    sts.write_text("".join(json.dumps({"sentence1": f"a {a}", "sentence2": f"the {b}", "score": s}) + "\n"
                           for a, b, s in [("cat", "cat", 5), ("dog", "car", 1), ("red box", "blue box", 3),
                                           ("a man", "a woman", 2.5), ("tree", "sky", 0)]))
    p = tmp_path / "suite.yaml"
    tasks = [
        "{name: ret, type: image_text_retrieval, dataset: coco}",
        f"{{name: zs, type: zero_shot, dataset: mnist, templates: {json.dumps(MNIST_TEMPLATES)}}}",
        "{name: knn, type: knn, dataset: mnist, k: [5]}",
        "{name: sts, type: sts, dataset: sts}",
    ]
    p = tmp_path / "suite.yaml"
    p.write_text("\n".join([
        "suite: clip",
        "device: cpu",
        "encoders:",
        f"  {encoder}",
        "datasets:",
        (
            f"  coco: {{type: coco-captions, images: {mini / 'val2017'}, "
            f"annotations: {mini / 'annotations/captions_val2017.json'}}}"
        ),
        f"  mnist: {{type: mnist, path: {shared / 'mnist'}, limit: 300}}",
        f"  sts: {{type: sts, path: {sts}}}",
        "tasks:",
        *[f"  - {t}" for t in tasks],
    ]) + "\n")
    return p


def _reference(path: Path, encode_images, encode_texts) -> tuple[dict, dict]:
    """Metrics from embeddings computed outside clbench (only the data is read through clbench)."""
    from PIL import Image

    suite = load_suite(path)
    coco = build_dataset(suite, "coco")
    images, captions, c2i = coco.image_text()
    img = encode_images([Image.open(p).convert("RGB") for p in images.items.paths])
    txt = encode_texts(list(captions.items))
    ret = {}
    for k in (1, 5, 10):
        ret[f"text_to_image_R@{k}"], ret[f"image_to_text_R@{k}"] = brute_recall(img, txt, c2i, k)
    mnist = build_dataset(suite, "mnist")
    test = mnist.split("test")
    x = encode_images([Image.fromarray(np.asarray(a)).convert("RGB") for a in test.items])
    prompts = [t.replace("{c}", str(d)) for d in range(10) for t in MNIST_TEMPLATES]
    e = encode_texts(prompts).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    w = e.reshape(10, len(MNIST_TEMPLATES), -1).mean(1)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    s = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ w.T
    y = test.labels
    pred = s.argmax(1)
    zs = {
        "top1": float(np.mean(pred == y)),
        "top5": float(np.mean([t in np.argsort(-r)[:5] for r, t in zip(s, y)])),
        "mean_per_class_recall": float(np.mean([np.mean(pred[y == c] == c) for c in range(10)])),
    }
    return ret, zs


def _check(tmp_path: Path, enc: str, ret_ref: dict, zs_ref: dict) -> None:
    def res(task):
        r = read_result(tmp_path / f"results/clip/{enc}/{task}.json")
        assert r["status"] == "ok", r["reason"]
        return r

    ret = res("ret")["metrics"]
    for key, value in ret_ref.items():
        assert ret[key] == pytest.approx(value, abs=1e-12), key
    zs = res("zs")
    for key, value in zs_ref.items():
        assert zs["metrics"][key] == pytest.approx(value, abs=1e-12), key
    assert zs["details"]["n_prompts"] == 20
    assert res("knn")["main_value"] > 0.0  # image-only task on the image tower
    assert res("sts")["main_value"] is not None  # text task on the text tower


def test_tiny_hf_clip_end_to_end(tmp_path, shared_data, hf_clip_folder):
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    path = _suite(tmp_path, shared_data, f"tiny: {{type: hf-clip, model: {hf_clip_folder}, num_workers: 0}}")
    summary = run_suite(path)
    assert summary.ok, [c.reason for c in summary.cells]
    info = read_result(tmp_path / "results/clip/tiny/ret.json")["details"]["encoder_info"]
    assert info["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)

    model = AutoModel.from_pretrained(hf_clip_folder).eval()
    proc = AutoImageProcessor.from_pretrained(hf_clip_folder)
    tok = AutoTokenizer.from_pretrained(hf_clip_folder)

    def images(pils):
        with torch.no_grad():
            out = model.get_image_features(pixel_values=proc(images=pils, return_tensors="pt")["pixel_values"])
        return getattr(out, "pooler_output", out).numpy()

    def texts(ts):
        with torch.no_grad():
            out = model.get_text_features(**tok(ts, padding=True, truncation=True, max_length=77, return_tensors="pt"))
        return getattr(out, "pooler_output", out).numpy()

    _check(tmp_path, "tiny", *_reference(path, images, texts))


def test_tiny_open_clip_end_to_end(tmp_path, shared_data, open_clip_files):
    import open_clip
    import torch

    cfg, ckpt = open_clip_files
    enc = f"tiny: {{type: open_clip, model: tiny-clip-test, model_config: {cfg}, checkpoint: {ckpt}, num_workers: 0}}"
    path = _suite(tmp_path, shared_data, enc)
    summary = run_suite(path)
    assert summary.ok, [c.reason for c in summary.cells]

    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test", pretrained=str(ckpt))
    model.eval()
    tok = open_clip.get_tokenizer("tiny-clip-test")

    def images(pils):
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(p) for p in pils])).numpy()

    def texts(ts):
        with torch.no_grad():
            return model.encode_text(tok(ts)).numpy()

    _check(tmp_path, "tiny", *_reference(path, images, texts))


def test_plugins_import_no_heavy_module():
    import subprocess

    code = ("import sys, clbench.encoders.hf_clip, clbench.encoders.open_clip_encoder, clbench.tasks.zero_shot, "
            "clbench.tasks.image_text_retrieval, clbench.datasets.captions, clbench.metrics.image_text; "
            "bad = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fingerprints_without_loading(tmp_path, hf_clip_folder, open_clip_files):
    from clbench.encoders.hf_clip import HFClipEncoder
    from clbench.encoders.open_clip_encoder import OpenClipEncoder
    from clbench.errors import ConfigError
    from clbench.options import parse_options

    e = HFClipEncoder(parse_options(HFClipEncoder.Options, {"model": str(hf_clip_folder)}))
    fp = e.fingerprint()
    assert e.model is None and "digest" in fp["model"]
    cfg, ckpt = open_clip_files
    o = OpenClipEncoder(parse_options(OpenClipEncoder.Options,
                                      {"model": "tiny-clip-test", "model_config": str(cfg), "checkpoint": str(ckpt)}))
    o.check()
    assert o.model is None and "checkpoint_digest" in o.fingerprint()
    wrong = OpenClipEncoder(parse_options(OpenClipEncoder.Options, {"model": "other", "model_config": str(cfg)}))
    with pytest.raises(ConfigError, match="file name"):
        wrong.check()


def test_tiny_siglip_uses_its_processor_and_full_length_padding(tmp_path, hf_clip_folder):
    import torch
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    from clbench.encoders.hf_clip import HFClipEncoder
    from clbench.options import parse_options

    cfg = SiglipConfig(
        text_config={"vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": 513},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SiglipModel(cfg).eval()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(hf_clip_folder).save_pretrained(tmp_path)
    proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    proc.save_pretrained(tmp_path)

    enc = HFClipEncoder(parse_options(HFClipEncoder.Options, {"model": str(tmp_path)}))
    enc.setup("cpu")
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8) for _ in range(3)]
    got_img = enc.encode(enc.collate([enc.preprocess(p, "image") for p in pics], "image"), "image").numpy()
    got_txt = enc.encode(["a cat", "a much longer caption about a dog"], "text").numpy()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=proc(images=pics, return_tensors="pt")["pixel_values"])
        ids = tok(["a cat", "a much longer caption about a dog"], padding="max_length", max_length=16,
                  truncation=True, return_tensors="pt")["input_ids"]
        ref_txt = model.get_text_features(input_ids=ids)
    ref_img, ref_txt = (getattr(r, "pooler_output", r).numpy() for r in (ref_img, ref_txt))
    np.testing.assert_allclose(got_img, ref_img / np.linalg.norm(ref_img, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(got_txt, ref_txt / np.linalg.norm(ref_txt, axis=1, keepdims=True), atol=1e-5)
    assert enc.info()["logit_bias"] is not None and enc.logit_scale > 0
