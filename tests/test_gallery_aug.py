"""Synthetic shopper views of studio photos (gallery-side augmentation) and the new bench keys."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shopsearch.errors import ConfigError
from shopsearch.evaluation.configs import BenchConfig, parse_config
from shopsearch.gallery_aug import shopper_view_vectors, shopper_views
from tests.conftest import FakeEmbedder


def _studio(colour) -> Image.Image:
    """A product on a white studio background."""
    img = Image.new("RGB", (120, 160), "white")
    ImageDraw.Draw(img).ellipse((25, 30, 95, 140), fill=colour)
    return img


def test_views_are_deterministic_and_change_the_background():
    img = _studio((200, 30, 30))
    a = shopper_views(img, 3, seed=7, clutter=[_studio((30, 30, 200))])
    b = shopper_views(img, 3, seed=7, clutter=[_studio((30, 30, 200))])
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    c = shopper_views(img, 3, seed=8)
    assert np.asarray(a[0]).tobytes() != np.asarray(c[0]).tobytes()
    for v in a:
        px = np.asarray(v.convert("RGB"), dtype=np.int16)
        white = ((255 - px).max(axis=2) < 10).mean()
        assert white < 0.2  # the studio white is mostly gone
        red = (px[..., 0] - np.maximum(px[..., 1], px[..., 2]) > 60).mean()
        assert red > 0.05  # the product is still there


def test_view_vectors_are_cached_per_image(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        p = tmp_path / f"{i}.png"
        _studio(colour).save(p)
        paths.append((str(p), f"{i:064x}"))
    emb = FakeEmbedder()
    cache = shopper_view_vectors(emb, paths, 4, tmp_path / "vectors", progress=False)
    assert len(cache) == 2 and emb.calls == 8
    v = cache.get_many([paths[0][1]])[0]
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)
    again = shopper_view_vectors(emb, paths, 4, tmp_path / "vectors", progress=False)
    assert emb.calls == 8 and np.allclose(again.get_many([paths[0][1]])[0], v)  # nothing embedded twice


def test_bench_config_quality_keys():
    d = BenchConfig(model="m")
    (c,) = parse_config("tta=on,dba=3,rerank=qe+kr,fusion=on,shopper_views=8", d)
    assert (c.tta, c.dba, c.rerank, c.fusion, c.shopper_views) == (True, 3, "qe+kr", True, 8)
    assert "tta" in c.label and "rerank=qe+kr" in c.label and "fusion" in c.label
    for bad in ("rerank=bogus", "dba=-1", "tta=maybe", "shopper_views=x"):
        with pytest.raises(ConfigError):
            parse_config(bad, d)


def test_pile_views_show_several_copies_without_the_studio_white():
    import random

    from shopsearch.gallery_aug import _tight_mask, pile_view

    img = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(img).rectangle((30, 20, 70, 80), fill=(250, 250, 250), outline=(0, 0, 200), width=3)
    ImageDraw.Draw(img).rectangle((40, 40, 60, 60), fill=(0, 0, 200))  # a white carton with a blue label
    mask = np.asarray(_tight_mask(img)) > 128
    assert mask[50, 35] and not mask[5, 5]  # the carton's white side is product, the studio white is not
    a = pile_view(img, random.Random(3))
    b = pile_view(img, random.Random(3))
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    px = np.asarray(a.resize((120, 120)), dtype=np.int16)
    blue = (px[..., 2] - np.maximum(px[..., 0], px[..., 1]) > 80)
    assert blue.mean() > 0.02
    # several labels: the blue pixels fall into more than one separate column band
    cols = np.flatnonzero(blue.any(0))
    assert len(cols) and (np.diff(cols) > 3).sum() >= 1


def test_pile_views_join_the_shopper_views_in_their_own_cache(tmp_path):
    p = tmp_path / "0.png"
    _studio((200, 30, 30)).save(p)
    pairs = [(str(p), "0" * 64)]
    emb = FakeEmbedder()
    plain = shopper_view_vectors(emb, pairs, 2, tmp_path / "vectors", progress=False)
    assert emb.calls == 2
    both = shopper_view_vectors(emb, pairs, 2, tmp_path / "vectors", progress=False, piles=2)
    assert emb.calls == 6  # 2 shopper + 2 pile views, cached apart from the shopper-only mean
    assert not np.allclose(plain.get_many(["0" * 64]), both.get_many(["0" * 64]))
    d = BenchConfig(model="m")
    (c,) = parse_config("shopper_views=8,pile_views=4", d)
    assert (c.shopper_views, c.pile_views) == (8, 4) and "pile-views=4" in c.label
    with pytest.raises(ConfigError):
        parse_config("pile_views=4", d)  # piles join shopper views, never alone
