"""objects=auto embeds and searches a bounded number of proposals: a security probe's 8x8
grid of coloured squares on white (64 foreground blobs) made one request embed 87 crops
(3.85 s against 0.05 s for a plain search). The largest MAX_BLOBS blobs and the grid are kept."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shopsearch import regions
from shopsearch.regions import MAX_BLOBS, Box, _foreground_boxes, _grid_boxes, find_objects, propose_boxes
from shopsearch.results import SearchResult
from tests.conftest import FakeEmbedder
from tests.test_webapp import api_search, app_for, make_site

MOST = MAX_BLOBS + len(_grid_boxes())  # proposals one photo may cost


def squares(n: int = 8, size: int = 480, seed: int = 0) -> Image.Image:
    """n x n coloured squares with white gaps between them, on white."""
    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), 255, np.uint8)
    cell = size // n
    gap = cell // 8
    for i in range(n):
        for j in range(n):
            a[i * cell + gap:(i + 1) * cell - gap, j * cell + gap:(j + 1) * cell - gap] = rng.integers(0, 200, 3)
    return Image.fromarray(a)


class _Service:
    """What find_objects uses of a SearchService, counting what it embeds and searches."""

    def __init__(self) -> None:
        self.embedder = FakeEmbedder()
        self.searches = 0

    def search_vector(self, vec, k=5, filters=None, flat=False):
        self.searches += 1
        return SearchResult((), "fake", "b0")


def test_the_probe_photo_has_more_blobs_than_are_searched():
    assert len(_foreground_boxes(squares())) == 64 > MAX_BLOBS
    assert len(propose_boxes(squares())) == MOST


def test_objects_auto_on_an_8x8_grid_embeds_and_searches_at_most_the_cap():
    svc = _Service()
    assert find_objects(svc, squares(), 4, 5) == []  # no hits from the stub
    assert 0 < svc.embedder.calls <= MOST and svc.searches == svc.embedder.calls
    assert MOST <= 27  # before: every one of the 64 blobs too (87)


def test_the_largest_blobs_are_the_ones_kept():
    """Three large products below a row of smaller things: all three are proposed."""
    a = np.full((480, 480, 3), 255, np.uint8)
    big = [(90, 20), (90, 300), (310, 170)]
    for y, x in big:
        a[y:y + 140, x:x + 140] = (30, 90, 160)
    for i in range(6):  # a row of smaller things along the top: found first, reading the photo
        a[10:66, 10 + i * 78:66 + i * 78] = (200, 20, 20)
    img = Image.fromarray(a)
    assert len(_foreground_boxes(img)) > MAX_BLOBS
    blobs = propose_boxes(img)[:MAX_BLOBS]
    for y, x in big:
        truth = Box(x / 480, y / 480, 140 / 480, 140 / 480)
        assert max(b.iou(truth) for b in blobs) > 0.7


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("regions-cap"), n=6)


def test_the_api_embeds_the_photo_and_at_most_the_cap(site, monkeypatch):
    embedder = FakeEmbedder()
    app = app_for(site, embedder=embedder)
    try:
        buf = io.BytesIO()
        squares().save(buf, "PNG")
        embedder.calls = 0
        r = api_search(app.test_client(), buf.getvalue(), objects="auto")
        assert r.status_code == 200, r.get_json()
        assert 1 < embedder.calls <= 1 + MOST, embedder.calls  # the whole photo, then the proposals
        # the cap is what bounds it: without it every blob is embedded
        monkeypatch.setattr(regions, "MAX_BLOBS", 1000)
        embedder.calls = 0
        assert api_search(app.test_client(), buf.getvalue(), objects="auto").status_code == 200
        assert embedder.calls > 1 + MOST
    finally:
        app.extensions["shopsearch"].close()
