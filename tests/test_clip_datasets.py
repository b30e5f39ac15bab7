"""Caption datasets (coco-captions, karpathy, image-captions) and the oracle image-text retrieval."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from test_clip_metrics import brute_recall

from clbench.api import run_suite
from clbench.datasets.captions import CocoCaptionsDataset, ImageCaptionsDataset, KarpathyDataset
from clbench.encoders.base import Encoder, EncoderOptions
from clbench.errors import DataError
from clbench.options import option, parse_options
from clbench.registry import ENCODERS
from clbench.results.store import read_result


def _coco(shared: Path, **kw) -> CocoCaptionsDataset:
    mini = shared / "coco-mini"
    opts = parse_options(CocoCaptionsDataset.Options, {
        "images": str(mini / "val2017"), "annotations": str(mini / "annotations/captions_val2017.json"), **kw})
    return CocoCaptionsDataset(opts, name="coco")


def test_coco_captions_on_coco_mini(shared_data):
    ds = _coco(shared_data)
    ds.check()
    images, captions, c2i = ds.image_text()
    assert (len(images), len(captions)) == (79, 395)
    assert images.modality == "image" and captions.modality == "text" and ds.kind == "image-text"
    assert np.bincount(c2i).tolist() == [5] * 79
    ann = json.loads((shared_data / "coco-mini/annotations/captions_val2017.json").read_text())
    by_id: dict[str, list[str]] = {}
    for a in ann["annotations"]:
        by_id.setdefault(str(a["image_id"]), []).append(a["caption"].strip())
    for c, text in enumerate(captions.items):
        assert text in by_id[images.ids[c2i[c]]]
    assert images.items[0].ndim == 3 and images.items[0].dtype == np.uint8  # read on access
    assert len(_coco(shared_data, limit=3).split("captions")) == 15


def test_karpathy_and_image_captions_files(tmp_path, shared_data):
    src = sorted((shared_data / "coco-mini/val2017").iterdir())[:3]
    (tmp_path / "val2014").mkdir()
    for p in src:
        (tmp_path / "val2014" / p.name).symlink_to(p)
    entries = [
        {"filepath": "val2014", "filename": p.name, "split": s, "cocoid": i,
         "sentences": [{"raw": f"caption {i} {j}"} for j in range(2 + i)]}
        for i, (p, s) in enumerate(zip(src, ["test", "test", "train"]))
    ]
    (tmp_path / "k.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    k = KarpathyDataset(parse_options(KarpathyDataset.Options, {"path": str(tmp_path / "k.json"),
                                                                 "images": str(tmp_path)}))
    imgs, caps, c2i = k.image_text()
    assert imgs.ids == ["0", "1"] and caps.items == ["caption 0 0", "caption 0 1"] + [f"caption 1 {j}" for j in range(3)]
    assert c2i.tolist() == [0, 0, 1, 1, 1]

    csv = tmp_path / "val2014" / "c.csv"
    csv.write_text(f"image,caption,caption_2\n{src[0].name},a dog,a brown dog\n{src[1].name},\"a cat, sitting\",\n"
                   f"{src[0].name},one more,\n")
    d = ImageCaptionsDataset(parse_options(ImageCaptionsDataset.Options, {"path": str(csv)}))
    imgs, caps, c2i = d.image_text()
    assert caps.items == ["a dog", "a brown dog", "one more", "a cat, sitting"] and c2i.tolist() == [0, 0, 0, 1]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"image": src[2].name, "caption": ["x", "y"]}) + "\n\n"
                  + json.dumps({"image": src[0].name, "caption": "z"}) + "\n")
    d = ImageCaptionsDataset(parse_options(ImageCaptionsDataset.Options,
                                           {"path": str(jl), "images": str(tmp_path / "val2014")}))
    imgs, caps, c2i = d.image_text()
    assert caps.items == ["x", "y", "z"] and imgs.ids == [src[2].name, src[0].name]


def test_bad_input_names_the_file_and_line(tmp_path, shared_data):
    img = min((shared_data / "coco-mini/val2017").iterdir())
    bad = tmp_path / "caps.json"
    bad.write_text('{"images": [\n  {"id": 1, "file_name": "x.jpg"},\n  oops\n]}')
    ds = CocoCaptionsDataset(parse_options(CocoCaptionsDataset.Options,
                                           {"images": str(tmp_path), "annotations": str(bad)}))
    with pytest.raises(DataError, match=r"caps\.json: line 3: malformed JSON"):
        ds.check()
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "missing.jpg"}],
                               "annotations": [{"image_id": 1, "caption": "c"}]}))
    with pytest.raises(DataError, match=r"missing\.jpg: image file not found \(listed in .*caps\.json\)"):
        CocoCaptionsDataset(ds.options).check()
    csv = tmp_path / "c.csv"
    csv.write_text(f"image,caption\n{img},ok\n{img},too,many\n")
    with pytest.raises(DataError, match=r"c\.csv: line 3: 3 fields"):
        ImageCaptionsDataset(parse_options(ImageCaptionsDataset.Options, {"path": str(csv)})).check()
    csv.write_text("picture,caption\nx,y\n")
    with pytest.raises(DataError, match=r"c\.csv: line 1: header needs"):
        ImageCaptionsDataset(parse_options(ImageCaptionsDataset.Options, {"path": str(csv)})).check()
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"image": str(img), "caption": "a"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"c\.jsonl: line 2: malformed JSON"):
        ImageCaptionsDataset(parse_options(ImageCaptionsDataset.Options, {"path": str(jl)})).check()
    kj = tmp_path / "k.json"
    kj.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": "nope"}]}))
    with pytest.raises(DataError, match=r"k\.json: images\[0\]: expected a 'sentences' list"):
        KarpathyDataset(parse_options(KarpathyDataset.Options, {"path": str(kj), "images": str(tmp_path)})).check()


# -- the oracle encoder ------------------------------------------------------------------------
def _image_key(arr) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()


@dataclasses.dataclass
class OracleOptions(EncoderOptions):
    shuffle_seed: int | None = option(None, "permute the caption -> image answers (a broken oracle)")


class OracleEncoder(Encoder):
    """Embeds an image and each of its captions as the same one-hot vector (the image's index)."""

    Options = OracleOptions
    modalities = frozenset({"image", "text"})
    images: ClassVar[dict[str, int]] = {}
    captions: ClassVar[dict[str, int]] = {}

    def preprocess(self, sample, modality):
        n = len(self.images)
        if modality == "image":
            i = self.images[_image_key(sample)]
        else:
            i = self.captions[sample]
            if self.options.shuffle_seed is not None:
                i = int(np.random.default_rng(self.options.shuffle_seed).permutation(n)[i])
        v = np.zeros(n, dtype=np.float32)
        v[i] = 1.0
        return v

    def encode(self, batch, modality, role=None):
        return np.asarray(batch)


ENCODERS.register("clip-oracle", OracleEncoder)


def test_oracle_reaches_recall_1_and_a_shuffled_oracle_falls_to_chance(tmp_path, shared_data):
    ds = _coco(shared_data)
    images, captions, c2i = ds.image_text()
    OracleEncoder.images = {_image_key(images.items[i]): i for i in range(len(images))}
    OracleEncoder.captions = dict(zip(captions.items, c2i.tolist()))
    assert len(OracleEncoder.captions) == len(captions)  # distinct captions
    mini = shared_data / "coco-mini"
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        suite: oracle
        device: cpu
        encoders:
          oracle: {{type: clip-oracle, num_workers: 0}}
          shuffled: {{type: clip-oracle, num_workers: 0, shuffle_seed: 3}}
        datasets:
          coco: {{type: coco-captions, images: {mini / 'val2017'},
                  annotations: {mini / 'annotations/captions_val2017.json'}}}
        tasks:
          - {{name: ret, type: image_text_retrieval, dataset: coco}}
    """))
    summary = run_suite(suite)
    assert summary.ok, [c.reason for c in summary.cells]
    r = read_result(tmp_path / "results/oracle/oracle/ret.json")
    for d in ("text_to_image", "image_to_text"):
        assert r["metrics"][f"{d}_R@1"] == 1.0
    assert r["main_metric"] == "mean_R@1" and r["main_value"] == 1.0

    s = read_result(tmp_path / "results/oracle/shuffled/ret.json")["metrics"]
    perm = np.random.default_rng(3).permutation(79)
    onehot = np.eye(79, dtype=np.float32)
    for k in (1, 5, 10):
        t2i, i2t = brute_recall(onehot, onehot[perm[c2i]], c2i, k)
        assert s[f"text_to_image_R@{k}"] == pytest.approx(t2i) and s[f"image_to_text_R@{k}"] == pytest.approx(i2t)
    # chance: a caption's answer is a random other image (perm has few fixed points)
    fixed = int((perm == np.arange(79)).sum())
    assert s["text_to_image_R@1"] == pytest.approx(fixed / 79)
    assert s["text_to_image_R@1"] < 0.1 and s["image_to_text_R@10"] < 0.35


# -- zero-shot wiring: class names, CuPL prompt files, a fake image+text encoder ------------------
def _text_vec(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).normal(size=8).astype(np.float32)


_PROJ = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)


class FakeClip(Encoder):
    Options = EncoderOptions
    modalities = frozenset({"image", "text"})

    def preprocess(self, sample, modality):
        if modality == "image":
            return np.asarray(sample, dtype=np.float32).reshape(-1) @ _PROJ
        return _text_vec(str(sample))

    def encode(self, batch, modality, role=None):
        if isinstance(batch, list) and batch and isinstance(batch[0], str):
            return np.stack([_text_vec(t) for t in batch])
        return np.asarray(batch)


ENCODERS.register("clip-fake", FakeClip)


def test_zero_shot_with_cupl_prompts_matches_a_hand_computation(tmp_path):
    from clbench.suite import build_dataset, load_suite

    prompts_file = tmp_path / "cupl.json"
    prompts_file.write_text(json.dumps({"3": ["a curly three", "the digit three"], "7": ["a seven"]}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        suite: zs
        device: cpu
        encoders:
          fake: {{type: clip-fake, num_workers: 0}}
        datasets:
          digits: {{type: sklearn-digits, test_fraction: 0.3}}
        tasks:
          - {{name: cupl, type: zero_shot, dataset: digits, class_prompts: {prompts_file},
              class_prompts_mode: add, templates: ["a photo of the number: '{{c}}'.", "digit {{c}}"]}}
          - {{name: auto, type: zero_shot, dataset: digits}}
    """))
    summary = run_suite(suite)
    assert summary.ok, [c.reason for c in summary.cells]
    test = build_dataset(load_suite(suite), "digits").split("test")
    x = np.stack([np.asarray(a, np.float32).reshape(-1) @ _PROJ for a in test.items])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cupl = json.loads(prompts_file.read_text())

    def top1(prompts_of):
        w = []
        for d in range(10):
            e = np.stack([_text_vec(p) for p in prompts_of(str(d))]).astype(np.float64)
            m = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
            w.append(m / np.linalg.norm(m))
        return float(np.mean((x @ np.array(w).T).argmax(1) == test.labels))

    r = read_result(tmp_path / "results/zs/fake/cupl.json")
    assert r["details"]["n_prompts"] == 23
    assert r["main_value"] == pytest.approx(
        top1(lambda c: [f"a photo of the number: '{c}'.", f"digit {c}", *cupl.get(c, [])]))
    auto = read_result(tmp_path / "results/zs/fake/auto.json")  # digits: the built-in `mnist` set
    assert auto["main_value"] == pytest.approx(top1(lambda c: [f"a photo of the number: '{c}'."]))
