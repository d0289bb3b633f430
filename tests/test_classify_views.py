"""Synthetic views of training images for the frozen head (`classify train --views`): the
augmenter, its per-view cache, group-aware cross-validation and training with views."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shopsearch.classify.data import LabelledImage
from shopsearch.classify.photo_views import is_studio, photo_view, training_view, view_vectors
from shopsearch.classify.probe import _group_folds, fit_probe
from shopsearch.classify.training import train_frozen
from tests.conftest import FakeEmbedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(colour, size=(160, 120)) -> Image.Image:
    """A shopper-like photo: a coloured object on a busy (non-white) background."""
    rng = np.random.default_rng(sum(colour))
    img = Image.fromarray(rng.integers(40, 160, (size[1], size[0], 3), dtype=np.uint8))
    ImageDraw.Draw(img).ellipse((40, 20, 120, 100), fill=colour)
    return img


def _studio(colour) -> Image.Image:
    img = Image.new("RGB", (120, 160), "white")
    ImageDraw.Draw(img).rectangle((30, 30, 90, 140), fill=colour)
    return img


def test_studio_shots_are_told_from_photos():
    assert is_studio(_studio((200, 30, 30)))
    assert not is_studio(_photo((200, 30, 30)))


def test_views_are_deterministic_and_differ():
    img = _photo((30, 200, 30))
    a = [np.asarray(training_view(img, 5, i)) for i in range(3)]
    b = [np.asarray(training_view(img, 5, i)) for i in range(3)]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert a[0].tobytes() != a[1].tobytes()
    v = photo_view(img, random.Random(1))
    assert v.mode == "RGB" and v.width <= img.width and v.height <= img.height
    px = np.asarray(v, dtype=np.int16)
    assert (px[..., 1] - np.maximum(px[..., 0], px[..., 2]) > 60).mean() > 0.02  # the object is still there


def test_view_vectors_cache_each_view_so_more_views_only_embed_the_new_ones(tmp_path):
    pairs = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        p = tmp_path / f"{i}.png"
        (_studio(colour) if i == 2 else _photo(colour)).save(p)
        pairs.append((str(p), f"{i:064x}"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    pairs.append((str(bad), "f" * 64))
    emb = FakeEmbedder()
    v2, ok = view_vectors(emb, pairs, 2, tmp_path / "vectors", progress=False)
    assert v2.shape == (4, 2, emb.dim) and ok.tolist() == [True, True, True, False]
    assert emb.calls == 6
    v3, ok3 = view_vectors(emb, pairs, 3, tmp_path / "vectors", progress=False)
    assert emb.calls == 9  # only view 2 of the three decodable images
    assert np.allclose(v3[:, :2], v2) and ok3.tolist() == ok.tolist()
    assert not np.allclose(v3[0, 0], v3[0, 1])


def test_group_folds_keep_a_photo_and_its_views_together():
    y = np.repeat(np.arange(3), 6)
    groups = np.repeat(np.arange(9), 2)  # 9 photos of 3 classes, two samples each
    fold = _group_folds(y, groups, 3, seed=0)
    for g in range(9):
        assert len(set(fold[groups == g])) == 1
    for c in range(3):
        assert len(set(fold[y == c])) == 3  # each class spread over every fold


def _clusters(n: int, seed: int, classes: int = 4, dim: int = 16, noise: float = 1.2):
    centres = np.random.default_rng(0).normal(size=(classes, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n)
    x = centres[y] + noise * rng.normal(size=(len(y), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_probe_cross_validation_scores_photos_only():
    x, y = _clusters(10, 1, dim=64, noise=6.0)  # overlapping classes: held-out photos are hard
    views = x + 0.01 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    xs, ys = np.vstack([x, views]), np.concatenate([y, y])
    groups = np.concatenate([np.arange(len(y)), np.arange(len(y))])
    scored = np.arange(len(ys)) < len(y)
    grid = (0.01, 100.0)
    grouped = fit_probe(xs, ys, 4, c_grid=grid, groups=groups, scored=scored)
    leaky = fit_probe(xs, ys, 4, c_grid=grid)
    # with a photo's near-copy on the other side of the split, a memorising fit looks perfect
    assert grouped.cv_accuracy[100.0] < leaky.cv_accuracy[100.0] - 0.2
    assert grouped.cv_accuracy[100.0] < 0.6


def _labelled(per_class: int, val_per_class: int):
    """(train vectors, their labels, train items, val vectors, val items) of 4 two-level classes."""
    cats = ["A/a", "A/b", "B/c", "B/d"]
    x, y = _clusters(per_class, 3)
    xv, yv = _clusters(val_per_class, 4)
    items = [LabelledImage(f"t{i}.png", cats[c]) for i, c in enumerate(y)]
    return x, y, items, xv, [LabelledImage(f"v{i}.png", cats[c]) for i, c in enumerate(yv)]


def test_train_frozen_with_views_learns_from_them_and_reports_them():
    x, y, items, xv, val = _labelled(4, 25)
    rng = np.random.default_rng(5)
    n = 6
    src = np.repeat(np.arange(len(y)), n)
    centres = np.random.default_rng(0).normal(size=(4, 16))
    # views drawn around each photo's class centre: more samples of the same distribution
    views = centres[y[src]] + 1.2 * rng.normal(size=(len(src), 16))
    views = (views / np.linalg.norm(views, axis=1, keepdims=True)).astype(np.float32)
    plain = train_frozen(x, items, xv, val, "fp", "fake", refit=False)
    more = train_frozen(x, items, xv, val, "fp", "fake", refit=False, views=(views, src))
    assert more.metrics["train_view_vectors"] == len(src) and "train_view_vectors" not in plain.metrics
    assert more.metrics["knn_vote"]["val_top1_head"] >= plain.metrics["knn_vote"]["val_top1_head"]
    served = train_frozen(x, items, xv, val, "fp", "fake", views=(views, src))
    assert served.metrics["refit"] == "train+val" and served.metrics["train_samples"] == len(y) + len(val)
    if served.knn is not None:  # the vote is over the photos, not their views
        assert len(served.knn["labels"]) == len(y) + len(val)


def test_train_frozen_with_one_c_skips_cross_validation():
    x, _, items, xv, val = _labelled(6, 10)
    fixed = train_frozen(x, items, xv, val, "fp", "fake", refit=False, c_grid=(0.3,))
    assert fixed.metrics["C_fine"] == 0.3 and fixed.metrics["C_coarse"] == 0.3
    assert fixed.metrics["cv_fine_top1"] is None  # nothing cross-validated
    searched = train_frozen(x, items, xv, val, "fp", "fake", refit=False)
    assert searched.metrics["cv_fine_top1"] is not None
