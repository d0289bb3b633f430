"""The web app through Flask's test client: every page, every API route, every upload error.

Fixture: 12 generated products in 3 categories (products 0..5 with a second, jittered
photo), indexed with the deterministic FakeEmbedder into a tmp data dir, so each
shopper photo (a jittered copy) has exactly one right answer."""
from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.build import IndexBuilder
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.index import IndexStore
from shopsearch.results import CategoryPrediction
from tests.conftest import FakeEmbedder, jitter, make_image, sha
from webapp import create_app
from webapp.service import ServiceOverrides

CATS = [("Fruit", "Apple"), ("Fruit", "Banana"), ("Dairy", "Milk")]


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _add_product(cat: CatalogueStore, root: Path, i: int) -> None:
    p = root / f"img_{i:04d}.png"
    make_image(i).save(p)
    imgs = [ImageRecord(str(p), sha256=sha(p))]
    if i < 6:
        extra = root / f"extra_{i}.png"
        jitter(make_image(i), seed=100 + i, amount=6).save(extra)
        imgs.append(ImageRecord(str(extra), role="reference", sha256=sha(extra)))
    cat.upsert_product(ProductRecord(sku=f"P{i}", title=f"Product {i}", price=Decimal(i), currency="EUR",
                                     brand="Acme" if i == 0 else None, category_path=CATS[i % 3],
                                     description=f"Description of product {i}", images=tuple(imgs)))


def _build(settings: Settings, cat: CatalogueStore, emb: FakeEmbedder):
    return IndexBuilder(emb, cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(
        progress=False, workers=1)


def make_site(root: Path, n: int = 12, database_url: str | None = None) -> Settings:
    settings = Settings(data_dir=root / "data", database_url=database_url)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cat = CatalogueStore.open(settings.db_url)
    for i in range(n):
        _add_product(cat, root / "images", i)
    _build(settings, cat, FakeEmbedder())
    cat.close()
    return settings


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Settings:
    return make_site(tmp_path_factory.mktemp("site"))


def app_for(settings: Settings, embedder=None, router=None, **extra):
    cfg = {"SETTINGS": settings, "TESTING": True, "RELOAD_CHECK_S": 0, **extra}
    return create_app(cfg, ServiceOverrides(embedder=embedder or FakeEmbedder(), router=router))


@pytest.fixture
def app(site):
    a = app_for(site)
    yield a
    a.extensions["shopsearch"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def photo(i: int, seed: int | None = None) -> bytes:
    """A shopper photo of product i: jittered pixels, JPEG-compressed."""
    return _png(jitter(make_image(i), seed=seed if seed is not None else i), "JPEG", quality=92)


def api_search(client, data: bytes, **params):
    return client.post("/api/v1/search", data={"image": (io.BytesIO(data), "photo.jpg"), **params},
                       content_type="multipart/form-data")


def page_search(client, data: bytes | None, **fields):
    form = dict(fields)
    if data is not None:
        form["image"] = (io.BytesIO(data), "photo.jpg")
    return client.post("/search", data=form, content_type="multipart/form-data")


def card_skus(html: str) -> list[str]:
    return re.findall(r'<article class="card" data-sku="([^"]+)"', html)


def assert_no_traceback(body: str) -> None:
    assert "Traceback" not in body and 'File "' not in body


# -- the upload page --------------------------------------------------------------
def test_upload_page(client):
    r = client.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert 'id="dropzone"' in html and 'accept="image/*"' in html and 'capture="environment"' in html
    assert 'enctype="multipart/form-data"' in html and 'name="viewport"' in html
    # no CDN: every script, stylesheet and image is served by the app itself
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert '<option value="Dairy/Milk"' in html and '<option value="Fruit"' in html
    # the filters are named once (their summary), not again by a hidden legend a screen reader reads
    assert "<summary>Filters</summary>" in html and html.count(">Filters<") == 1
    assert 'name="q"' not in html  # FakeEmbedder has no text tower: no text box
    assert "18 product photos to search." in html  # the model's name is for the shop (a tooltip), not the text
    assert "Content-Security-Policy" in r.headers
    for static in ("/static/style.css", "/static/app.js"):
        assert client.get(static).status_code == 200


def test_text_box_only_with_text_tower(site):
    class TextFake(FakeEmbedder):
        has_text = True

        def encode_texts(self, texts):
            # "photo of product N" -> the vector of product N's image: exact ground truth
            return self.encode_images([make_image(int(t.split()[-1])) for t in texts])

    app = app_for(site, embedder=TextFake())
    c = app.test_client()
    assert 'name="q"' in c.get("/").get_data(as_text=True)
    r = c.get("/api/v1/search/text", query_string={"q": "photo of product 7", "k": 3})
    assert r.status_code == 200 and r.json["results"][0]["sku"] == "P7" and r.json["query"] == "photo of product 7"
    html = c.get("/search/text", query_string={"q": "photo of product 4"}).get_data(as_text=True)
    assert card_skus(html)[0] == "P4" and "Results for" in html


# -- results pages ------------------------------------------------------------------
@pytest.mark.parametrize("i", [0, 4, 11])
def test_page_search_finds_the_product(client, i):
    r = page_search(client, photo(i))
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    skus = card_skus(html)
    assert skus[0] == f"P{i}" and len(skus) == len(set(skus)) == 12
    first = html[html.index('data-sku="P%d"' % i):]
    first = first[: first.index("</article>")]
    # too few held-out photos in this site to calibrate: plain similarity; the currency as a symbol
    assert "/images/" in first and "similarity" in first and f"€{i:.2f}" in first
    # the tag names the product's own (leaf) category; its path is the tooltip (and on the product page)
    assert f'title="{" › ".join(CATS[i % 3])}">{CATS[i % 3][1]}<' in first
    assert 'src="data:image/jpeg;base64,' in html  # the shopper's photo, inlined, not stored
    assert 'name="qv"' in html


def test_card_shows_matched_photo_when_it_is_not_the_main_one(client):
    # product 2's second photo is a jittered copy; a photo closer to it matches that one
    html = page_search(client, _png(jitter(make_image(2), seed=102, amount=6))).get_data(as_text=True)
    card = html[html.index('data-sku="P2"'):]
    card = card[: card.index("</article>")]
    assert 'class="matched"' in card and "2 of its photos matched" in card
    assert "Acme" in page_search(client, photo(0)).get_data(as_text=True)  # brand on the card


def test_page_filters_rerun_the_same_query(client):
    html = page_search(client, photo(3)).get_data(as_text=True)
    qv = re.search(r'name="qv" value="([^"]+)"', html).group(1)
    qthumb = re.search(r'name="qthumb" value="([^"]+)"', html).group(1)
    r = page_search(client, None, qv=qv, qthumb=qthumb, category="Dairy")
    skus = card_skus(r.get_data(as_text=True))
    assert skus == ["P2", "P5", "P8", "P11"] or sorted(skus) == ["P11", "P2", "P5", "P8"]
    assert 'src="data:image/jpeg;base64,' in r.get_data(as_text=True)
    r = page_search(client, None, qv=qv, min_price="3", max_price="6")
    assert sorted(card_skus(r.get_data(as_text=True))) == ["P3", "P4", "P5", "P6"]
    assert card_skus(r.get_data(as_text=True))[0] == "P3"
    # nothing matches: an empty state, not an error
    r = page_search(client, None, qv=qv, min_price="1000")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and card_skus(html) == [] and "No products found" in html
    # "show more": a larger k
    assert len(card_skus(page_search(client, None, qv=qv, k="5").get_data(as_text=True))) == 5
    # a tampered query vector is refused with a message
    r = page_search(client, None, qv="AAAA")
    assert r.status_code == 400 and "upload the photo again" in r.get_data(as_text=True)


@pytest.mark.parametrize("data,status,text", [
    (None, 400, "Choose or take a photo first"),
    (b"%PDF-1.4 definitely not a photo", 415, "Not an image format"),
    (b"", 400, "empty"),
])
def test_page_upload_errors_are_messages(client, data, status, text):
    if data == b"":
        r = client.post("/search", data={"image": (io.BytesIO(b""), "x.jpg")}, content_type="multipart/form-data")
    else:
        r = page_search(client, data)
    html = r.get_data(as_text=True)
    assert r.status_code == status and text in html
    assert 'id="dropzone"' in html  # back on the upload form, ready to retry
    assert_no_traceback(html)


def test_page_upload_too_large(site):
    app = app_for(site, MAX_CONTENT_LENGTH=50_000)
    noise = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)))
    assert len(noise) > 50_000
    r = page_search(app.test_client(), noise)
    assert r.status_code == 413 and "larger than the" in r.get_data(as_text=True)
    r = api_search(app.test_client(), noise)
    assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"


def test_product_page_with_recommendations(client):
    r = client.get("/products/P0")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "<h1>Product 0</h1>" in html and "Acme" in html and "Description of product 0" in html
    assert "€0.00" in html and "Fruit › Apple" in html
    assert len(re.findall(r'class="gallery-thumb"', html)) == 2  # both of its photos
    rec = html[html.index('id="similar"'):]
    skus = card_skus(rec)
    assert "P0" not in skus and len(skus) == len(set(skus)) == 8
    cats = [re.search(r'title="([^"]+)"', rec[rec.index(f'data-sku="{s}"'):]).group(1) for s in skus]
    assert max(cats.count(c) for c in set(cats)) <= 4  # diversified: no category fills the list


def test_not_found_pages(client):
    for url in ("/products/NOPE", "/no/such/page"):
        r = client.get(url)
        html = r.get_data(as_text=True)
        assert r.status_code == 404 and "Back to search" in html
        assert_no_traceback(html)
    assert client.get("/search").status_code == 302  # refresh of a results page: back to the form


def test_server_errors_are_messages_not_tracebacks(site, monkeypatch):
    app = app_for(site)
    svc = app.extensions["shopsearch"].get()
    monkeypatch.setattr(svc, "search_vector", lambda *a, **k: 1 / 0)
    c = app.test_client()
    r = api_search(c, photo(1))
    assert r.status_code == 500 and r.json == {"error": {"code": "internal_error",
                                                         "message": "Something went wrong on our side. Please try again."}}
    r = page_search(c, photo(1))
    assert r.status_code == 500 and "Something went wrong" in r.get_data(as_text=True)
    assert_no_traceback(r.get_data(as_text=True))


# -- the JSON API ---------------------------------------------------------------------
def test_api_search_multipart_and_raw_body(client):
    r = api_search(client, photo(7), k="3")
    assert r.status_code == 200
    body = r.json
    assert [h["sku"] for h in body["results"]][0] == "P7" and body["count"] == 3 and body["k"] == 3
    hit = body["results"][0]
    assert hit["category"] == "Fruit/Banana" and hit["price"] == 7.0 and hit["currency"] == "EUR"
    assert hit["url"] == "/products/P7" and hit["matched_image"]["thumbnail_url"].startswith("/images/")
    assert "path" not in hit["matched_image"]  # no server file paths in public responses
    assert body["model"] == "fake" and body["predicted_category"] is None
    # raw body, any (or no) Content-Type: the bytes are sniffed
    r = client.post("/api/v1/search?k=2", data=photo(9), content_type="application/octet-stream")
    assert r.status_code == 200 and r.json["results"][0]["sku"] == "P9" and r.json["count"] == 2
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):  # the latter: curl --data-binary
        r = client.post("/api/v1/search", data=_png(jitter(make_image(10), seed=3)), content_type=ctype)
        assert r.status_code == 200 and r.json["results"][0]["sku"] == "P10"


def test_api_search_quality_switches(client):
    for params in ({"rerank": "qe+kr"}, {"rerank": "off", "tta": "on"}, {"fusion": "on"}):
        r = api_search(client, photo(4), k="3", **params)
        assert r.status_code == 200 and r.json["results"][0]["sku"] == "P4"


def test_api_search_filters(client):
    r = api_search(client, photo(0), category="Dairy", k="10")
    assert sorted(h["sku"] for h in r.json["results"]) == ["P11", "P2", "P5", "P8"]
    r = client.post("/api/v1/search?min_price=3&max_price=6&k=10", data=photo(0))
    assert sorted(h["sku"] for h in r.json["results"]) == ["P3", "P4", "P5", "P6"]
    assert r.json["filters"] == {"category": None, "min_price": 3.0, "max_price": 6.0}


@pytest.mark.parametrize("params,message", [
    ({"k": "0"}, "k must be between"), ({"k": "ten"}, "whole number"), ({"k": "1000"}, "k must be between"),
    ({"min_price": "cheap"}, "min_price must be a number"), ({"max_price": "-1"}, "0 or more"),
    ({"min_price": "5", "max_price": "2"}, "above max_price"), ({"min_price": "NaN"}, "0 or more"),
    ({"rerank": "magic"}, "rerank: unknown part"), ({"tta": "maybe"}, "tta must be on or off"),
    ({"fusion": "2"}, "fusion must be on or off"),
])
def test_api_bad_parameters(client, params, message):
    r = api_search(client, photo(1), **params)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter"
    assert message in r.json["error"]["message"]


def _bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels: Pillow's bomb check must refuse it unread."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    start = data.index(b"IHDR")
    data[start + 4:start + 17] = ihdr
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("data,status,code", [
    (b"%PDF-1.4\n%%EOF", 415, "unsupported_media_type"),
    ("corrupt", 400, "invalid_image"),
    ("truncated", 400, "invalid_image"),
    ("bomb", 400, "image_too_large"),
    ("strip", 400, "image_too_large"),
    (b"", 400, "missing_image"),
])
def test_api_hostile_uploads(client, data, status, code):
    if data == "truncated":
        full = photo(2)
        data = full[: len(full) // 2]
    elif data == "corrupt":  # a real PNG header, damaged pixel data
        raw = bytearray(_png(make_image(3)))
        at = raw.index(b"IDAT") + 20
        raw[at:at + 16] = b"\xff" * 16
        data = bytes(raw)
    elif data == "bomb":
        data = _bomb_png(60_000, 60_000)
    elif data == "strip":
        data = _png(Image.new("RGB", (25_000, 1)))
    r = client.post("/api/v1/search", data=data, content_type="image/jpeg")  # the Content-Type lies
    assert r.status_code == status, r.json
    assert r.json["error"]["code"] == code and r.json["error"]["message"]


def test_api_upload_disguised_by_filename(client):
    r = client.post("/api/v1/search", data={"image": (io.BytesIO(b"#!/bin/sh\necho hi\n"), "cat.jpg", "image/jpeg")},
                    content_type="multipart/form-data")
    assert r.status_code == 415 and r.json["error"]["code"] == "unsupported_media_type"
    # and a real photo named .txt is still a photo
    r = client.post("/api/v1/search", data={"image": (io.BytesIO(photo(6)), "notes.txt", "text/plain")},
                    content_type="multipart/form-data")
    assert r.status_code == 200 and r.json["results"][0]["sku"] == "P6"
    r = client.post("/api/v1/search", data={"other": "x"}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_image"


def test_exif_orientation_is_applied(client):
    upright = jitter(make_image(5, size=(96, 64)), seed=1)
    # stored rotated, with the EXIF tag (6 = "rotate 90 CW to view") that puts it upright again
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    with_tag = _png(stored, "JPEG", quality=95, exif=exif.tobytes())
    without_tag = _png(stored, "JPEG", quality=95)
    tagged = api_search(client, with_tag, k="1").json["results"][0]
    untagged = api_search(client, without_tag, k="1").json["results"][0]
    assert tagged["sku"] == "P5"
    assert tagged["score"] > untagged["score"]


def test_api_product_and_similar(client):
    r = client.get("/api/v1/products/P1")
    p = r.json
    assert r.status_code == 200 and p["sku"] == "P1" and p["category"] == "Fruit/Banana" and p["price"] == 1.0
    assert len(p["images"]) == 2 and all("path" not in i for i in p["images"])
    assert all(i["thumbnail_url"].startswith("/images/") for i in p["images"])
    assert client.get(p["images"][0]["thumbnail_url"]).status_code == 200
    r = client.get("/api/v1/products/P1/similar?k=6")
    skus = [h["sku"] for h in r.json["results"]]
    assert r.status_code == 200 and "P1" not in skus and len(skus) == len(set(skus)) == 6
    cats = [h["category"] for h in r.json["results"]]
    assert max(cats.count(c) for c in set(cats)) <= 3
    r = client.get("/api/v1/products/NOPE")
    assert r.status_code == 404 and r.json["error"]["code"] == "product_not_found"
    r = client.get("/api/v1/products/NOPE/similar")
    assert r.status_code == 404 and r.json["error"]["code"] == "product_not_found"
    r = client.get("/api/v1/products/P1/similar?k=-1")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter"


def test_api_text_search_needs_clip(client):
    r = client.get("/api/v1/search/text?q=green+apple")
    assert r.status_code == 409 and r.json["error"]["code"] == "capability_missing"
    assert "text tower" in r.json["error"]["message"]
    r = client.get("/search/text?q=green+apple")
    assert r.status_code == 409 and "text tower" in r.get_data(as_text=True)


def test_api_routing_errors_are_json(client):
    r = client.get("/api/v1/search")
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed" and "POST" in r.headers["Allow"]
    r = client.get("/api/v1/nothing/here")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"


def test_healthz_and_openapi(app, client, site):
    h = client.get("/api/v1/healthz").json
    store = IndexStore(site.index_dir)
    assert h["status"] == "ok" and h["index_loaded"] is True and h["model"] == "fake"
    assert h["vectors"] == 18 and h["build_id"] == store.current_id() and h["has_text"] is False
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    documented = set(doc["paths"])
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule[len("/api/v1"):])
            assert path in documented, f"{rule.rule} is not in the OpenAPI document"
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in doc["paths"][path]
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


def test_healthz_without_index(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    CatalogueStore.open(settings.db_url).close()
    app = app_for(settings)
    c = app.test_client()
    r = c.get("/api/v1/healthz")  # alive, even without an index
    assert r.status_code == 200 and r.json["status"] == "ok" and r.json["index_loaded"] is False
    r = c.get("/api/v1/readyz")  # ...but not ready
    assert r.status_code == 503 and r.json["status"] == "unavailable" and r.json["index_loaded"] is False
    assert r.json["reasons"] == ["no index is loaded (index_not_found)"]
    r = api_search(c, photo(1))
    assert r.status_code == 503 and r.json["error"]["code"] == "index_not_found"
    html = c.get("/").get_data(as_text=True)
    assert "has not been indexed yet" in html
    # ...and the first build is picked up without a restart
    cat = CatalogueStore.open(settings.db_url)
    (tmp_path / "images").mkdir()
    _add_product(cat, tmp_path / "images", 0)
    _build(settings, cat, FakeEmbedder())
    cat.close()
    r = c.get("/api/v1/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready" and r.json["vectors"] == 2


# -- index reload -----------------------------------------------------------------------
def test_new_build_is_picked_up_without_restart(tmp_path):
    settings = make_site(tmp_path, n=6)
    app = app_for(settings)
    holder = app.extensions["shopsearch"]
    c = app.test_client()
    first = c.get("/api/v1/readyz").json
    assert first["vectors"] == 12 and holder.loads == 1
    for _ in range(3):  # unchanged pointer: no reload, however many requests
        c.get("/api/v1/readyz")
    assert holder.loads == 1
    cat = CatalogueStore.open(settings.db_url)
    _add_product(cat, tmp_path / "images", 9)
    report = _build(settings, cat, FakeEmbedder())
    cat.close()
    second = c.get("/api/v1/readyz").json
    assert second["build_id"] == report.build_id != first["build_id"] and second["vectors"] == 13
    assert api_search(c, photo(9)).json["results"][0]["sku"] == "P9"
    assert holder.loads == 2
    # rollback is a pointer change too
    IndexStore(settings.index_dir).rollback()
    assert c.get("/api/v1/readyz").json["build_id"] == first["build_id"]


def test_reload_check_is_throttled(tmp_path):
    settings = make_site(tmp_path, n=3)
    app = app_for(settings, RELOAD_CHECK_S=3600)
    c = app.test_client()
    before = c.get("/api/v1/readyz").json["build_id"]
    cat = CatalogueStore.open(settings.db_url)
    _add_product(cat, tmp_path / "images", 4)
    _build(settings, cat, FakeEmbedder())
    cat.close()
    assert c.get("/api/v1/readyz").json["build_id"] == before  # not checked again within the hour


# -- predicted category (the category router's output) ------------------------------------
class BananaRouter:
    """A CategoryRouter that is sure everything is a banana (exercises the display of predictions)."""

    def route(self, vector):
        return CategoryPrediction("Fruit/Banana", 0.9, alternatives=(("Fruit/Apple", 0.06),),
                                  routing="filter"), ("Fruit/Banana",)


def test_predicted_category_in_api_and_cards(site):
    app = app_for(site, router=BananaRouter())
    c = app.test_client()
    body = api_search(c, photo(0), k="4").json
    assert body["predicted_category"]["category"] == "Fruit/Banana"
    assert body["predicted_category"]["routing"] == "filter"
    assert [h["category"] for h in body["results"]] == ["Fruit/Banana"] * 4
    assert api_search(c, photo(0), k="4", routing="off").json["results"][0]["sku"] == "P0"
    html = page_search(c, photo(0)).get_data(as_text=True)
    # one figure a page: the verdict's chance; the head's own probability is not shown beside it
    assert "Looks like" in html and ">Banana</span>" in html and "% sure" not in html


def test_predicted_product_category_tag(tmp_path):
    settings = make_site(tmp_path, n=3)
    cat = CatalogueStore.open(settings.db_url)
    img = tmp_path / "images" / "uncategorised.png"
    make_image(40).save(img)
    cat.upsert_product(ProductRecord(sku="U1", title="Mystery fruit", images=(ImageRecord(str(img), sha256=sha(img)),)))
    cat.set_predicted_category(cat.get_product("U1").id, cat.ensure_category(["Fruit", "Banana"]), 0.8)
    _build(settings, cat, FakeEmbedder())
    cat.close()
    c = app_for(settings).test_client()
    assert c.get("/api/v1/products/U1").json["category_source"] == "predicted"
    html = page_search(c, _png(jitter(make_image(40), seed=1))).get_data(as_text=True)
    assert card_skus(html)[0] == "U1"
    card = html[html.index('data-sku="U1"'):]
    assert 'class="tag predicted"' in card[: card.index("</article>")]
    assert "predicted 80%" in c.get("/products/U1").get_data(as_text=True)


# -- uploads never touch the disk (unless retention is on) ---------------------------------
def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_uploads_stay_in_memory(site, monkeypatch, tmp_path):
    import werkzeug.formparser as fp

    def no_temp_files(*a, **k):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(fp, "SpooledTemporaryFile", no_temp_files)
    app = app_for(site)
    c = app.test_client()
    big = _png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)))
    assert len(big) > 1_000_000  # well over werkzeug's 500 KB spooling threshold
    before = _files(site.data_dir)
    assert api_search(c, big).status_code == 200
    assert page_search(c, big).status_code == 200
    assert _files(site.data_dir) == before


def test_retention_when_switched_on(site, tmp_path):
    keep = tmp_path / "kept"
    c = app_for(site, RETAIN_UPLOADS=str(keep)).test_client()
    data = photo(3)
    assert api_search(c, data).status_code == 200
    import hashlib

    assert [p.name for p in keep.iterdir()] == [hashlib.sha256(data).hexdigest() + ".jpg"]
    assert client_post_bad(c) == 415 and len(list(keep.iterdir())) == 1  # non-images are never kept


def client_post_bad(c) -> int:
    return c.post("/api/v1/search", data=b"not an image at all").status_code


# -- configuration ---------------------------------------------------------------------
def test_config_defaults_env_then_test_config(site, monkeypatch, tmp_path):
    monkeypatch.setenv("SHOPSEARCH_MAX_UPLOAD_MB", "2")
    monkeypatch.setenv("SHOPSEARCH_RETAIN_UPLOADS", str(tmp_path / "r"))
    monkeypatch.setenv("SHOPSEARCH_RESULTS_K", "5")
    app = app_for(site, EAGER_LOAD=False)
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    assert app.config["RETAIN_UPLOADS"] == tmp_path / "r" and app.config["RESULTS_K"] == 5
    assert app.config["THUMB_DIR"] == site.data_dir / "thumbs"
    app = app_for(site, MAX_UPLOAD_MB=1, RESULTS_K=7, EAGER_LOAD=False)  # test config beats env
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024 and app.config["RESULTS_K"] == 7
    monkeypatch.delenv("SHOPSEARCH_MAX_UPLOAD_MB")
    monkeypatch.setenv("SHOPSEARCH_DATA_DIR", str(site.data_dir))
    app = create_app({"TESTING": True}, ServiceOverrides(embedder=FakeEmbedder()))
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024  # the default
    assert app.config["SETTINGS"].data_dir == site.data_dir
    assert app.extensions["shopsearch"].loads == 1  # loaded at creation, once


def test_injected_search_service(site):
    from shopsearch.search import SearchService

    cat = CatalogueStore.open(site.db_url)
    index, manifest = IndexStore(site.index_dir).load_current()
    svc = SearchService(FakeEmbedder(), index, cat, manifest)
    c = create_app({"TESTING": True, "SETTINGS": site}, ServiceOverrides(search_service=svc)).test_client()
    assert api_search(c, photo(8)).json["results"][0]["sku"] == "P8"
    cat.close()


def test_api_on_both_databases(tmp_path, db_url):
    """The same app over SQLite and PostgreSQL (a private schema)."""
    settings = make_site(tmp_path, n=6, database_url=db_url)
    app = app_for(settings)
    c = app.test_client()
    assert api_search(c, photo(4)).json["results"][0]["sku"] == "P4"
    assert c.get("/api/v1/products/P4").json["category"] == "Fruit/Banana"
    assert "P4" not in [h["sku"] for h in c.get("/api/v1/products/P4/similar").json["results"]]
    assert card_skus(page_search(c, photo(2)).get_data(as_text=True))[0] == "P2"
    app.extensions["shopsearch"].close()


class _WarmingEmbedder(FakeEmbedder):
    """An embedder that must be prepared before its first query (like an int8 model)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.warmed, self.fail = 0, fail

    def warm_up(self) -> None:
        from shopsearch.errors import ModelUnavailableError

        self.warmed += 1
        if self.fail:
            raise ModelUnavailableError("the int8 model failed to compile or run: no compiler")


def test_the_model_is_warmed_up_when_the_index_loads_not_in_a_request(site):
    emb = _WarmingEmbedder()
    client = app_for(site, embedder=emb).test_client()
    assert emb.warmed == 1  # at app creation (EAGER_LOAD), before any shopper arrives
    buf = io.BytesIO()
    make_image(3).save(buf, format="PNG")
    assert client.post("/api/v1/search", data={"image": (io.BytesIO(buf.getvalue()), "q.png")}).status_code == 200
    assert emb.warmed == 1
    broken = app_for(site, embedder=_WarmingEmbedder(fail=True)).test_client()
    res = broken.post("/api/v1/search", data={"image": (io.BytesIO(buf.getvalue()), "q.png")})
    assert res.status_code >= 500 and "failed to compile" in res.get_json()["error"]["message"]
