"""Answers a shopper can trust (issue 16), through Flask's test client: calibrated confidence
and "no close match", the crop box, several products in one photo, the category filter,
and the page's rough edges.

Fixture: 20 generated products, three photos each (a catalogue image and two jittered
copies), no prices, indexed with the FakeEmbedder: enough held-out photos to calibrate."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.build import IndexBuilder
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.confidence import CALIBRATION_FILE
from shopsearch.index import IndexStore
from shopsearch.regions import Box, InvalidRegionError, parse_box, propose_boxes
from shopsearch.results import CategoryPrediction
from tests.conftest import FakeEmbedder, jitter, make_image, sha
from tests.test_webapp import app_for, make_site
from webapp import create_app
from webapp.service import ServiceOverrides

CATS = [("Fruit", "Apple"), ("Fruit", "Banana"), ("Dairy", "Milk"), ("Vegetables", "Pepper", "Red-Bell-Pepper")]
N = 20


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trust_site(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("trust")
    settings = Settings(data_dir=root / "data")
    (root / "images").mkdir()
    cat = CatalogueStore.open(settings.db_url)
    for i in range(N):
        paths = []
        for j in range(3 if i else 15):  # product 0 has 15 photos: the product page must show them all
            p = root / "images" / f"p{i}_{j}.png"
            (make_image(i) if j == 0 else jitter(make_image(i), seed=1000 * i + j, amount=6)).save(p)
            paths.append(ImageRecord(str(p), role="catalogue" if j == 0 else "reference", sha256=sha(p)))
        cat.upsert_product(ProductRecord(sku=f"S{i}", title=f"Thing {i}", category_path=CATS[i % 4],
                                         attributes={"coarse_label": 2, "colour": "mixed"}, images=tuple(paths)))
    IndexBuilder(FakeEmbedder(), cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(
        progress=False, workers=1)
    cat.close()
    return settings


@pytest.fixture
def client(trust_site):
    app = app_for(trust_site)
    yield app.test_client()
    app.extensions["shopsearch"].close()


def _search(client, data: bytes, **params):
    return client.post("/api/v1/search", data={"image": (io.BytesIO(data), "q.jpg"), **params},
                       content_type="multipart/form-data")


def _page(client, data: bytes, **fields):
    return client.post("/search", data={"image": (io.BytesIO(data), "q.jpg"), **fields},
                       content_type="multipart/form-data")


def _unknown() -> Image.Image:
    return make_image(987654)  # a colour pattern the shop does not sell


def _composite(seeds: list[int], size=(480, 200), background=(255, 255, 255)) -> Image.Image:
    """Products side by side on a plain canvas, 120 px each with gaps."""
    canvas = Image.new("RGB", size, background)
    for n, s in enumerate(seeds):
        canvas.paste(make_image(s, (120, 120)), (20 + n * 160, 40))
    return canvas


# -- confidence and "no close match" --------------------------------------------------------
def test_build_stores_a_calibration_for_itself(trust_site):
    store = IndexStore(trust_site.index_dir)
    saved = json.loads((store.build_dir(store.current_id()) / CALIBRATION_FILE).read_text())
    assert saved["fitted"] and saved["build_id"] == store.current_id() and saved["samples"] >= 30


def test_api_confidence_strong_for_a_known_product_none_for_an_unknown(client):
    body = _search(client, _jpeg(jitter(make_image(7), seed=5, amount=8))).get_json()
    assert body["results"][0]["sku"] == "S7"
    assert body["match"] == "strong" and body["confidence"] > 0.6
    assert body["results"][0]["calibrated_score"] == body["confidence"]
    assert body["results"][1]["calibrated_score"] < 0.5
    assert body["calibration"]["status"] == "calibrated"
    other = _search(client, _jpeg(_unknown())).get_json()
    assert other["match"] == "none" and other["confidence"] < other["calibration"]["none_below"]
    assert len(other["results"]) == 10  # the nearest items still come back


def test_a_search_rescored_by_reranking_is_not_given_the_raw_path_calibration(client):
    body = _search(client, _jpeg(jitter(make_image(7), seed=5, amount=8)), rerank="qe").get_json()
    assert body["results"][0]["sku"] == "S7"  # still answered, but not with a confidence fitted on other scores
    assert body["confidence"] is None and body["match"] is None
    assert body["calibration"]["status"] == "uncalibrated" and "rerank=off" in body["calibration"]["reason"]
    plain = _search(client, _jpeg(jitter(make_image(7), seed=5, amount=8))).get_json()
    assert plain["calibration"]["scoring"] == "rerank=off;fusion=off" and plain["confidence"] is not None


def test_uncalibrated_build_states_the_fallback(tmp_path):
    site = make_site(tmp_path, n=8)  # 6 products with two photos: too few held-out photos
    app = app_for(site)
    try:
        body = _search(app.test_client(), _png(make_image(3))).get_json()
        assert body["confidence"] is None and body["match"] is None
        assert body["calibration"]["status"] == "uncalibrated" and "at least" in body["calibration"]["reason"]
        # the catalogue's own photo scores a similarity of 1.0: the page must not present it as certain
        assert body["results"][0]["score"] > 0.995
        html = _page(app.test_client(), _png(make_image(3))).get_data(as_text=True)
        assert "similarity 0.99" in html and "similarity 1.00" not in html and "100%" not in html
    finally:
        app.extensions["shopsearch"].close()


def test_page_says_no_close_match_and_shows_nearest_items_apart(client):
    html = _page(client, _jpeg(_unknown())).get_data(as_text=True)
    assert "No close match in this shop" in html and 'data-match="none"' in html
    assert "Nearest items we have (not a match)" in html and 'class="grid nearest"' in html
    good = _page(client, _jpeg(jitter(make_image(4), seed=3, amount=8))).get_data(as_text=True)
    assert 'data-match="strong"' in good and "Nearest items" not in good and "Likely match" in good


def test_cards_use_the_verdicts_bands_and_their_chances_add_up_to_one_at_most(client):
    """A card under "no close match" never says "Possible match" (its chance is below the verdict's
    none_below), and the products' chances, exclusive since a photo shows one, sum to 1 at most."""
    for img in (_unknown(), jitter(make_image(4), seed=3, amount=8), jitter(make_image(2), seed=5, amount=40)):
        body = _search(client, _jpeg(img), k="12").get_json()
        cal, chances = body["calibration"], [h["calibrated_score"] for h in body["results"]]
        assert sum(chances) <= 1.0 + 0.01 * len(chances)  # each shown chance is at least 1%
        html = _page(client, _jpeg(img)).get_data(as_text=True)
        if body["match"] == "none":
            assert "Possible match" not in html and "Likely match" not in html
        if body["match"] == "strong":
            assert body["confidence"] >= cal["strong_at"] and "Likely match" in html


def test_recommendations_show_no_similarity_figure(client):
    page = client.get("/products/S4")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="similar"' in html and 'class="card' in html.split('id="similar"')[1]
    assert "similarity 0." not in html and "% chance" not in html


class _AppleHead:
    """A category router whose head is sure every photo shows an apple (routing off: it only informs)."""

    def route(self, vector):
        return CategoryPrediction("Fruit/Apple", 0.97, routing="all"), None

    def category_probs(self, vector):
        return {"Fruit/Apple": 0.97, "Fruit/Banana": 0.01, "Dairy/Milk": 0.01, "Vegetables/Pepper/Red-Bell-Pepper": 0.01,
                "": 0.25}


def test_no_close_match_under_a_filter_that_hides_the_product(trust_site):
    """Product 4 (an apple) searched among the dairy only: the calibration, fitted on unfiltered
    searches, calls the first dairy product a close match; the head puts 1% of the photo in Dairy,
    so the confidence is at most that, and the page points at the filter, not the shop. Without a
    head, the whole shop's neighbourhood bounds it: the apple, outside the filter, ranks first there."""
    photo = _jpeg(jitter(make_image(4), seed=3, amount=8))
    plain = app_for(trust_site)
    headed = app_for(trust_site, router=_AppleHead())
    try:
        headless = _search(plain.test_client(), photo, category="Dairy").get_json()
        assert headless["match"] == "none" and headless["confidence_limit"] == "filter"
        body = _search(headed.test_client(), photo, category="Dairy").get_json()
        assert body["match"] == "none" and body["confidence"] == pytest.approx(0.01) and body["confidence_limit"] == "filter"
        assert all(h["calibrated_score"] <= 0.01 for h in body["results"])
        html = _page(headed.test_client(), photo, category="Dairy").get_data(as_text=True)
        assert 'data-match="none"' in html and "No close match with these filters" in html
        assert "clear the filters to search the whole shop" in html and "No close match in this shop" not in html
        assert "Looks like" not in html  # no category guess beside "no close match"
        fruit = _search(headed.test_client(), photo, category="fruit").get_json()  # a filter holding it
        assert fruit["match"] == "strong" and fruit["results"][0]["sku"] == "S4"
    finally:
        plain.extensions["shopsearch"].close()
        headed.extensions["shopsearch"].close()


# -- crop --------------------------------------------------------------------------------------
def test_crop_searches_that_part_of_the_photo(client):
    two = _composite([3, 11], size=(320, 200))
    left = _search(client, _jpeg(two), crop="0.0625,0.2,0.375,0.6").get_json()
    right = _search(client, _jpeg(two), crop="0.5625,0.2,0.375,0.6").get_json()
    assert left["results"][0]["sku"] == "S3" and right["results"][0]["sku"] == "S11"
    assert right["crop"] == {"x": 0.5625, "y": 0.2, "w": 0.375, "h": 0.6}


def test_crop_applies_after_exif_orientation(client):
    upright = _composite([3, 11], size=(320, 200))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    body = _search(client, _jpeg(stored, exif=exif.tobytes()), crop="0.5625,0.2,0.375,0.6").get_json()
    assert body["results"][0]["sku"] == "S11"


@pytest.mark.parametrize("crop, message", [
    ("1,2", "four numbers"), ("a,b,c,d", "four numbers"), ("0.5,0.5,0.6,0.2", "leaves the photo"),
    ("-0.1,0,0.5,0.5", "at least 0"), ("0,0,0,0.5", "above 0"), ("0,0,0.01,0.01", "at least 16 pixels"),
    ("nan,0,0.5,0.5", "finite"),
])
def test_bad_crop_boxes_are_400(client, crop, message):
    r = _search(client, _jpeg(make_image(1)), crop=crop)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_crop"
    assert message in r.get_json()["error"]["message"]


def test_parse_box_and_iou():
    assert parse_box(" 0.1, 0.2 ,0.3,0.4") == Box(0.1, 0.2, 0.3, 0.4)
    with pytest.raises(InvalidRegionError):
        parse_box("0,0,1.5,1")
    assert Box(0, 0, 0.5, 0.5).iou(Box(0, 0, 0.5, 0.5)) == 1.0
    assert Box(0, 0, 0.5, 0.5).iou(Box(0.5, 0.5, 0.5, 0.5)) == 0.0


# -- several products in one photo -------------------------------------------------------------
def test_proposals_find_the_objects_on_a_plain_ground():
    boxes = propose_boxes(_composite([2, 5, 9]))
    for n in range(3):  # each pasted product is covered by a proposal that fits it closely
        truth = Box((20 + n * 160) / 480, 40 / 200, 120 / 480, 120 / 200)
        assert max(b.iou(truth) for b in boxes) > 0.7


def test_objects_auto_returns_each_product_with_box_and_confidence(client):
    body = _search(client, _jpeg(_composite([2, 5, 9])), objects="auto", k=5).get_json()
    regions = body["regions"]
    firsts = [r["results"][0]["sku"] for r in regions]
    assert {"S2", "S5", "S9"} <= set(firsts), firsts
    for r in regions:
        assert set(r["box"]) == {"x", "y", "w", "h"} and r["match"] in ("strong", "weak")
        assert 0 <= r["confidence"] <= 1 and len(r["results"]) <= 5
    assert _search(client, _jpeg(make_image(1)), objects="7").status_code == 400


class _FusingHead(_AppleHead):
    """A category head that fuses into the ranking (as a shop's trained head does), with no preference."""

    fusion_weight = 0.05

    def category_boost(self, vector):
        return {}


def test_regions_are_scored_on_the_path_the_calibration_was_fitted_on(trust_site):
    """Where the shop's confidence was calibrated on fused searches (the demo's), each region is
    searched the same way: it gets a confidence and a verdict (regions were searched unfused, so
    every one came back uncalibrated and none could be told 'no match'); plain ground is none."""
    from dataclasses import replace as dc_replace

    from shopsearch.app import open_search_service
    from shopsearch.confidence import scoring_key
    from shopsearch.regions import find_objects

    svc = open_search_service(trust_site, embedder=FakeEmbedder())
    try:
        svc.router, svc.fusion = _FusingHead(), True
        svc.calibration = dc_replace(svc.calibration, scoring=scoring_key("off", True))
        photo = _composite([2, 5, 9])
        assert svc.search_image(photo, k=5).confidence is not None  # the whole photo: calibrated
        regions = find_objects(svc, photo, 4, 5)
        assert {r.result.hits[0].sku for r in regions} >= {"S2", "S5", "S9"}
        assert all(r.confidence is not None and r.match in ("strong", "weak") for r in regions)
        assert find_objects(svc, Image.new("RGB", (480, 200), (255, 255, 255)), 4, 5) == []  # nothing there
    finally:
        svc.catalogue.close()


def test_page_shows_regions_as_outlines_and_chips(client):
    html = _page(client, _jpeg(_composite([2, 5, 9])), objects="auto").get_data(as_text=True)
    assert html.count('class="region-outline') >= 3 and 'class="region-chips"' in html
    assert 'id="region-1"' in html and "Whole photo" in html


# -- categories ----------------------------------------------------------------------------------
def test_categories_endpoint_and_forgiving_category_filter(client):
    cats = client.get("/api/v1/categories").get_json()
    assert {"path": "Fruit/Banana", "name": "Banana", "depth": 1, "display": "Fruit > Banana"} in cats["categories"]
    photo = _jpeg(jitter(make_image(1), seed=2, amount=6))
    for spelled in ("Fruit/Banana", "fruit > banana", "Banana", "BANANA", " Fruit >Banana "):
        body = _search(client, photo, category=spelled).get_json()
        assert body["filters"]["category"] == "Fruit/Banana" and body["results"], spelled
        assert all(h["category"] == "Fruit/Banana" for h in body["results"])
    assert _search(client, photo, category="fruit").get_json()["filters"]["category"] == "Fruit"
    assert _search(client, photo, category="red bell pepper").get_json()["filters"]["category"] == \
        "Vegetables/Pepper/Red-Bell-Pepper"
    bad = _search(client, photo, category="Slippers")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "unknown_category"
    assert "GET /api/v1/categories" in bad.get_json()["error"]["message"]


# -- the page's rough edges -------------------------------------------------------------------
def test_min_price_above_max_keeps_photo_and_results_with_an_inline_error(tmp_path):
    site = make_site(tmp_path, n=8)  # products with prices
    app = app_for(site)
    try:
        r = _page(app.test_client(), _png(make_image(3)), min_price="5", max_price="2")
        html = r.get_data(as_text=True)
        assert r.status_code == 200
        assert "Min price (5.00) is higher than Max price (2.00)" in html and "min_price" not in html.split(
            'id="filter-error"')[1].split("</p>")[0]
        assert 'src="data:image/jpeg;base64,' in html and 'data-sku="P3"' in html  # photo and results kept
        assert 'value="5"' in html and 'aria-invalid="true"' in html
        cleared = app.test_client().post("/search", data={"qv": html.split('name="qv" value="')[1].split('"')[0],
                                                           "min_price": "1", "clear": "1"})
        assert 'id="clear-filters"' not in cleared.get_data(as_text=True)
    finally:
        app.extensions["shopsearch"].close()


def test_price_filter_hidden_without_prices_and_currency_default(client, tmp_path):
    assert 'name="min_price"' not in client.get("/").get_data(as_text=True)
    site = make_site(tmp_path, n=3)
    cat = CatalogueStore.open(site.db_url)
    p = tmp_path / "images" / "nocur.png"
    make_image(50).save(p)
    cat.upsert_product(ProductRecord(sku="NC", title="No currency", price=12, images=(ImageRecord(str(p), sha256=sha(p)),)))
    cat.close()
    app = app_for(site, CURRENCY="GBP")
    try:
        c = app.test_client()
        assert 'name="min_price"' in c.get("/").get_data(as_text=True)
        assert "£12.00" in c.get("/products/NC").get_data(as_text=True)
    finally:
        app.extensions["shopsearch"].close()


def test_product_page_every_photo_leaf_path_and_hidden_attributes(client, trust_site):
    html = client.get("/products/S0").get_data(as_text=True)
    assert "more</span>" not in html and "Show all 15 photos" in html
    assert html.count('class="gallery-thumb"') == 15
    assert "coarse" not in html  # raw dataset attributes stay hidden by default
    assert "Fruit › Apple" in html
    assert client.get("/api/v1/products/S0").get_json()["attributes"] == {}  # the API is as public as the page
    app = app_for(trust_site, VISIBLE_ATTRIBUTES="colour")
    try:
        shown = app.test_client().get("/products/S0").get_data(as_text=True)
        assert "mixed" in shown and "coarse" not in shown
        assert app.test_client().get("/api/v1/products/S0").get_json()["attributes"] == {"colour": "mixed"}
    finally:
        app.extensions["shopsearch"].close()


def test_truncated_jpeg_message_in_shopper_words(client):
    data = _jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)))
    r = _page(client, data[: len(data) // 2])
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and "damaged or incomplete" in html
    assert "truncated" not in html and "broken data stream" not in html
    api = client.post("/api/v1/search", data=data[: len(data) // 2], content_type="image/jpeg")
    assert api.status_code == 400 and api.json["error"]["code"] == "invalid_image"
    message = api.json["error"]["message"]
    assert "damaged or incomplete" in message and "truncated" not in message and "Error" not in message


def test_upload_controls_are_keyboard_reachable(client):
    html = client.get("/").get_data(as_text=True)
    for label_id in ("camera-button", "file-button"):
        tag = html.split(f'id="{label_id}"')[0].rsplit("<label", 1)[1]
        assert 'tabindex="0"' in tag and 'role="button"' in tag
    assert 'id="crop-box"' in html and 'name="objects"' in html and 'name="crop"' in html


def test_app_import_without_calibration_file_still_serves(trust_site, tmp_path):
    # a build from before calibration existed: the stated fallback, not an error
    store = IndexStore(trust_site.index_dir)
    path = store.build_dir(store.current_id()) / CALIBRATION_FILE
    saved = path.read_bytes()
    path.unlink()
    try:
        app = create_app({"SETTINGS": trust_site, "TESTING": True}, ServiceOverrides(embedder=FakeEmbedder()))
        body = _search(app.test_client(), _jpeg(make_image(2))).get_json()
        assert body["match"] is None and "index calibrate" in body["calibration"]["reason"]
        app.extensions["shopsearch"].close()
    finally:
        path.write_bytes(saved)


def test_resolve_category_spellings_ambiguity_and_unknown():
    from shopsearch.category_filter import resolve_category
    from shopsearch.errors import UnknownCategoryError

    paths = ["Fruit", "Fruit/Apple", "Fruit/Apple/Granny-Smith", "Juice/Apple", "Juice"]
    assert resolve_category("fruit > apple > granny smith", paths) == "Fruit/Apple/Granny-Smith"
    assert resolve_category("Granny_Smith", paths) == "Fruit/Apple/Granny-Smith"
    assert resolve_category("JUICE/apple", paths) == "Juice/Apple"
    with pytest.raises(UnknownCategoryError, match="ambiguous: Fruit > Apple, Juice > Apple"):
        resolve_category("apple", paths)
    with pytest.raises(UnknownCategoryError, match="GET /api/v1/categories"):
        resolve_category(" > ", paths)
