"""Shopper probe fix: a nearly black (underexposed) photo keeps its results but gets advice, in
the API (`advice: ["too_dark"]`, in the OpenAPI document) and on the results page ("The photo is
very dark"), also after the page's filters or "Show more" and on the page rebuilt from the log
(/results/<rid>); a well-lit photo of a dark product (a black shoe on a light background) gets none."""
from __future__ import annotations

import glob
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shopsearch.photo_advice import TOO_DARK, known_advice, photo_advice, too_dark
from tests.conftest import GROCERY, jitter, make_image, needs_grocery
from tests.test_webapp import api_search, app_for, make_site, page_search
from tests.test_webapp_edges import _jpeg

ADVICE_TEXT = "The photo is very dark: try again with more light."


def darker(img: Image.Image, factor: float, noise: int = 3, seed: int = 0) -> Image.Image:
    """The same scene underexposed: brightness times `factor`, plus a little sensor noise."""
    return jitter(Image.eval(img.convert("RGB"), lambda v: int(v * factor)), seed=seed, amount=noise)


def black_shoe(size: tuple[int, int] = (640, 480), scale: float = 1.0) -> Image.Image:
    """A black shoe (dark greys: upper, sole, laces, a sheen) photographed on a light table."""
    w, h = size
    rng = np.random.default_rng(7)
    bg = np.linspace(236, 214, h)[:, None, None] * np.array([1.0, 0.99, 0.96]) + rng.normal(0, 2, (h, w, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[float, float]:
        return w / 2 + (x - 0.5) * w * scale, h * 0.62 + (y - 0.62) * h * scale

    d.polygon([p(.12, .58), p(.2, .4), p(.42, .36), p(.55, .48), p(.86, .56), p(.9, .7), p(.12, .7)],
              fill=(20, 20, 22))  # the upper
    d.rectangle([p(.11, .7), p(.91, .76)], fill=(38, 37, 36))  # the sole
    for i in range(4):  # laces
        d.line([p(.3 + .05 * i, .42 + .02 * i), p(.36 + .05 * i, .46 + .02 * i)], fill=(52, 52, 55), width=3)
    d.ellipse([p(.6, .52), p(.7, .56)], fill=(70, 70, 74))  # the leather's sheen
    d.ellipse([p(.2, .78), p(.85, .82)], fill=(150, 148, 142))  # its shadow on the table
    return img


def test_too_dark_tells_an_underexposed_photo_from_a_dark_product():
    shoe, big_shoe = black_shoe(), black_shoe(scale=1.6)  # the second fills most of the frame
    for fine in (shoe, big_shoe, make_image(3, (320, 240)), jitter(make_image(5, (320, 240)), seed=1)):
        assert not too_dark(fine) and photo_advice(fine) == ()
    night = np.clip(np.random.default_rng(1).normal(6, 4, (240, 320, 3)), 0, 255).astype(np.uint8)  # sensor noise
    for dark in (darker(shoe, 0.15), darker(big_shoe, 0.3), darker(make_image(5, (320, 240)), 0.08, noise=6),
                 Image.fromarray(night), Image.new("RGB", (32, 32))):
        assert too_dark(dark) and photo_advice(dark) == (TOO_DARK,)
    assert known_advice(["too_dark", "x", "too_dark"]) == (TOO_DARK,) and known_advice([]) == ()


@needs_grocery
def test_real_photos_are_not_too_dark_until_darkened():
    files = sorted(glob.glob(str(GROCERY / "dataset" / "test" / "**" / "*.jpg"), recursive=True))[::10]
    assert len(files) > 100
    for f in files:
        with Image.open(f) as im:
            im.draft("RGB", (256, 256))
            im = im.convert("RGB")
        assert not too_dark(im), f
        assert too_dark(Image.eval(im, lambda v: int(v * 0.25))), f


@pytest.fixture(scope="module")
def dark_app(tmp_path_factory):
    app = app_for(make_site(tmp_path_factory.mktemp("dark"), n=6))
    yield app
    app.extensions["shopsearch"].close()


def test_the_api_keeps_a_dark_photos_results_and_says_why_it_may_miss(dark_app):
    c = dark_app.test_client()
    dark = api_search(c, _jpeg(darker(make_image(2), 0.1))).get_json()
    assert dark["advice"] == ["too_dark"] and dark["count"] > 0 and dark["results"]
    for fine in (_jpeg(black_shoe()), _jpeg(jitter(make_image(2), seed=2))):
        assert api_search(c, fine).get_json()["advice"] == []
    assert c.get("/api/v1/products/P2/similar").get_json()["advice"] == []  # recommendations: never
    spec = c.get("/api/v1/openapi.json").get_json()["components"]["schemas"]["SearchResponse"]["properties"]
    assert spec["advice"]["items"]["enum"] == ["too_dark"]


def test_the_page_shows_the_advice_and_keeps_it_through_filters_and_show_more(dark_app):
    c = dark_app.test_client()
    html = page_search(c, _jpeg(darker(make_image(4), 0.1))).get_data(as_text=True)
    assert ADVICE_TEXT in html and 'data-advice="too_dark"' in html and 'class="card"' in html
    assert 'name="qadvice" value="too_dark"' in html  # the filter form (and "Show more") carry it
    qv = html.split('name="qv" value="')[1].split('"')[0]
    again = c.post("/search", data={"qv": qv, "qadvice": "too_dark", "k": "4"}).get_data(as_text=True)
    assert ADVICE_TEXT in again and 'class="card"' in again
    forged = c.post("/search", data={"qv": qv, "qadvice": "<b>x</b>"}).get_data(as_text=True)
    assert ADVICE_TEXT not in forged and "<b>x</b>" not in forged  # only known advice, never echoed
    for fine in (_jpeg(black_shoe()), _jpeg(jitter(make_image(4), seed=4))):
        shown = page_search(c, fine).get_data(as_text=True)
        assert ADVICE_TEXT not in shown and "qadvice" not in shown


def _rid(html: str) -> str:
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    return rid


def test_the_results_page_rebuilt_from_the_log_keeps_the_advice(dark_app):
    c = dark_app.test_client()
    html = page_search(c, _jpeg(darker(make_image(3), 0.1))).get_data(as_text=True)
    assert ADVICE_TEXT in html
    rid = _rid(html)
    again = c.get(f"/results/{rid}")
    assert again.status_code == 200
    shown = again.get_data(as_text=True)
    assert ADVICE_TEXT in shown and 'data-advice="too_dark"' in shown and 'class="card"' in shown
    store = dark_app.extensions["shopsearch"].feedback
    assert store.search(rid).options["advice"] == ["too_dark"] and store.search(rid).advice == (TOO_DARK,)
    qv = html.split('name="qv" value="')[1].split('"')[0]  # a filter re-run ("refine") is logged with it too
    refined = _rid(c.post("/search", data={"qv": qv, "qadvice": "too_dark", "k": "4"}).get_data(as_text=True))
    assert ADVICE_TEXT in c.get(f"/results/{refined}").get_data(as_text=True)
    rid = api_search(c, _jpeg(darker(make_image(3), 0.1))).get_json()["request_id"]  # the API's searches too
    assert ADVICE_TEXT in c.get(f"/results/{rid}").get_data(as_text=True)
    for fine in (_jpeg(black_shoe()), _jpeg(jitter(make_image(3), seed=3))):
        rid = _rid(page_search(c, fine).get_data(as_text=True))
        shown = c.get(f"/results/{rid}").get_data(as_text=True)
        assert 'class="card"' in shown and ADVICE_TEXT not in shown and "photo-advice" not in shown
        assert "advice" not in store.search(rid).options and store.search(rid).advice == ()
