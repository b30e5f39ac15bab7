"""Image-text recall, template ensembling and zero-shot scores against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from clbench.metrics.image_text import image_text_ranks, image_text_recall, zero_shot_weights
from clbench.tasks.image_text_retrieval import ImageTextRetrievalOptions, ImageTextRetrievalTask
from clbench.tasks.zero_shot import ZeroShotOptions, ZeroShotTask, build_prompts, fill


def brute_recall(img, txt, c2i, k, similarity="cosine"):
    """Full score matrix, stable descending sort, explicit loops: the reference definition."""
    img = np.asarray(img, np.float64)
    txt = np.asarray(txt, np.float64)
    if similarity == "cosine":
        img = img / np.linalg.norm(img, axis=1, keepdims=True)
        txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = txt @ img.T
    t_hits = 0
    for c in range(len(txt)):
        order = sorted(range(len(img)), key=lambda j: (-s[c, j], j))
        t_hits += c2i[c] in order[:k]
    i_hits = 0
    for i in range(len(img)):
        order = sorted(range(len(txt)), key=lambda c: (-s[c, i], c))
        i_hits += any(c2i[c] == i for c in order[:k])
    return t_hits / len(txt), i_hits / len(img)


def _case(seed, n_img=23, dim=6, ties=False):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n_img)
    c2i = np.repeat(np.arange(n_img), counts)
    rng.shuffle(c2i)  # captions need not be grouped by image
    if ties:  # small integer vectors: many exactly equal scores
        img = rng.integers(-1, 2, size=(n_img, dim)).astype(np.float32)
        txt = rng.integers(-1, 2, size=(len(c2i), dim)).astype(np.float32)
    else:
        img = rng.normal(size=(n_img, dim)).astype(np.float32)
        txt = (img[c2i] + rng.normal(scale=1.5, size=(len(c2i), dim))).astype(np.float32)
    return img, txt, c2i


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_recall_equals_brute_force(seed, ties, chunk):
    img, txt, c2i = _case(seed, ties=ties)
    similarity = "dot" if ties else "cosine"  # dot keeps integer scores exact
    if ties:
        img[np.abs(img).sum(1) == 0, 0] = 1  # no zero rows
        txt[np.abs(txt).sum(1) == 0, 0] = 1
    m = image_text_recall(img, txt, c2i, ks=(1, 5, 10), chunk_size=chunk, similarity=similarity)
    for k in (1, 5, 10):
        t2i, i2t = brute_recall(img, txt, c2i, k, similarity)
        assert m[f"text_to_image_R@{k}"] == pytest.approx(t2i, abs=1e-12)
        assert m[f"image_to_text_R@{k}"] == pytest.approx(i2t, abs=1e-12)
        assert m[f"mean_R@{k}"] == pytest.approx((t2i + i2t) / 2)
    six = [m[f"{d}_R@{k}"] for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)]
    assert m["mean_recall"] == pytest.approx(np.mean(six))


def test_ranks_are_chunk_independent_and_perfect_for_an_oracle():
    img, txt, c2i = _case(5)
    a = image_text_ranks(img, txt, c2i, chunk_size=3)
    b = image_text_ranks(img, txt, c2i, chunk_size=10_000)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    oracle = np.eye(len(img), dtype=np.float32)
    t2i, i2t = image_text_ranks(oracle, oracle[c2i], c2i)
    assert (t2i == 0).all() and (i2t == 0).all()


def test_bad_mapping_is_rejected():
    img, txt, c2i = _case(0)
    with pytest.raises(ValueError, match="caption_to_image"):
        image_text_recall(img, txt, c2i[:-1])
    with pytest.raises(ValueError, match="every image"):
        image_text_recall(img, txt, np.zeros(len(txt), dtype=np.int64))


def test_retrieval_task_evaluate_adds_recall_at_1():
    img, txt, c2i = _case(3)
    out = ImageTextRetrievalTask.evaluate(img, txt, c2i, ImageTextRetrievalOptions(k_values=[5]))
    assert out.main_metric == "mean_R@1" and "text_to_image_R@5" in out.metrics
    t2i, i2t = brute_recall(img, txt, c2i, 1)
    assert out.metrics["mean_R@1"] == pytest.approx((t2i + i2t) / 2)


def test_template_ensembling_matches_a_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 5))
    owner = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    w = zero_shot_weights(emb, owner, 3)
    for c in range(3):
        rows = [e / np.linalg.norm(e) for e, o in zip(emb, owner) if o == c]
        ref = np.mean(rows, axis=0)
        np.testing.assert_allclose(w[c], ref / np.linalg.norm(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="every class"):
        zero_shot_weights(emb, owner, 4)


def test_zero_shot_evaluate_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    w = rng.normal(size=(7, 8)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    y = rng.integers(0, 7, size=200)
    out = ZeroShotTask.evaluate(x, y, w)
    s = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ w.T
    top1 = np.mean([np.argmax(r) == t for r, t in zip(s, y)])
    top5 = np.mean([t in np.argsort(-r)[:5] for r, t in zip(s, y)])
    pred = s.argmax(1)
    per_class = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    assert out.metrics["top1"] == pytest.approx(top1)
    assert out.metrics["top5"] == pytest.approx(top5)
    assert out.metrics["mean_per_class_recall"] == pytest.approx(np.mean(per_class))
    assert "top5" not in ZeroShotTask.evaluate(x, y % 3, w[:3]).metrics


def test_prompts_templates_and_cupl_lists():
    assert fill("a photo of the number: '{d}'.", "3") == "a photo of the number: '3'."
    assert fill("a {c}", "cat") == "a cat" and fill("a {}", "cat") == "a cat"
    prompts, owner = build_prompts(["cat", "dog"], ["a {c}.", "the {c}."], {"dog": ["a good dog."]}, "add")
    assert prompts == ["a cat.", "the cat.", "a dog.", "the dog.", "a good dog."]
    assert owner.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="placeholder"):
        ZeroShotOptions(templates=["no placeholder"]).validate()
