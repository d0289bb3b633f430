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
