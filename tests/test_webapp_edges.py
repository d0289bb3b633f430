"""What a second adversarial probe of the web app and CLI found, each pinned down: deeply
nested JSON, a small crop of a large photo, 32-bit greyscale photos, Pillow's wording of its
bomb limit, page prices past the limit, digit separators, an unescaped `+`, a bad routing
switch, a posted-back vector that overflows float32, "//" redirects echoing the Host header,
cached result pages, an unknown results link, and the CLI's price filters."""
from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from indexer.cli import cli
from shopsearch.images import load_image
from shopsearch.regions import Box, InvalidRegionError, crop_source
from tests.conftest import jitter, make_image
from tests.test_webapp import api_search, app_for, make_site, page_search, photo


@pytest.fixture(scope="module")
def priced_site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("edges"), n=6)  # products P0..P5 with prices


@pytest.fixture
def client(priced_site):
    app = app_for(priced_site)
    yield app.test_client()
    app.extensions["shopsearch"].close()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixels are missing: what a bomb costs to send."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# -- requests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000])
def test_deeply_nested_feedback_json_is_400_not_500(client, body):
    r = client.post("/api/v1/feedback", data=body, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_parameter"
    assert "JSON object" in r.get_json()["error"]["message"]


@pytest.mark.parametrize("params, message", [
    ({"k": "1_0"}, "whole number"), ({"min_price": "1_0"}, "must be a number"),
    ({"crop": "0,0,0.5_0,1"}, "four numbers"), ({"objects": "1_0"}, "objects must be"),
    ({"routing": "banana"}, "routing must be on or off"), ({"k": "\uff15"}, "whole number"),
    ({"crop": "\uff10,0,1,1"}, "four numbers"), ({"max_price": "\u0665"}, "must be a number"),
])
def test_digit_separators_and_unknown_switches_are_400(client, params, message):
    r = api_search(client, photo(1), **params)
    assert r.status_code == 400 and message in r.get_json()["error"]["message"], r.get_json()


def test_an_unescaped_plus_in_rerank_means_plus(client):
    """`?rerank=qe+kr` typed into a URL arrives as "qe kr" (form decoding): it means qe+kr."""
    spaced = client.post("/api/v1/search?rerank=qe+kr", data=photo(2), content_type="image/jpeg")
    escaped = client.post("/api/v1/search?rerank=qe%2Bkr", data=photo(2), content_type="image/jpeg")
    assert spaced.status_code == escaped.status_code == 200, spaced.get_json()
    assert [h["sku"] for h in spaced.get_json()["results"]] == [h["sku"] for h in escaped.get_json()["results"]]
    assert client.post("/api/v1/search?rerank=qe+zz", data=photo(2), content_type="image/jpeg").status_code == 400


def test_double_slashes_are_not_redirected_to_the_host_header(client):
    r = client.get("/api/v1/products//P1", headers={"Host": "evil.example"})
    assert r.status_code == 404 and "Location" not in r.headers and r.is_json
    assert client.get("/api/v1/products/P1").status_code == 200


# -- the photo ----------------------------------------------------------------------------------
def test_a_small_crop_of_a_large_photo_is_cut_at_full_resolution(client):
    """A 100 px product in a 4000 x 3000 photo: the photo is decoded shrunk to 640 px for the model,
    where the box would be 16 x 12 pixels (refused); it is cut from the photo itself instead."""
    scene = Image.new("RGB", (4000, 3000), (128, 128, 128))
    scene.paste(make_image(4, (100, 100)), (2000, 1500))
    body = _jpeg(scene)
    r = api_search(client, body, crop="0.5,0.5,0.025,0.0333")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["sku"] == "P4"
    tiny = api_search(client, body, crop="0.5,0.5,0.003,0.003").get_json()["error"]["message"]
    assert "12x9 pixels of this 4000x3000 photo" in tiny  # the photo's own size, not the shrunk copy's


def test_crop_source_cuts_a_png_from_its_pixels_and_keeps_a_large_box_as_it_was():
    big = Image.new("RGB", (3000, 1000), (0, 0, 0))
    big.paste(Image.new("RGB", (60, 60), (255, 0, 0)), (1500, 500))
    data = io.BytesIO()
    big.save(data, "PNG")
    decoded = load_image(data.getvalue())
    decoded.thumbnail((640, 640))  # what a query photo is decoded to (shopsearch.embedding.items)
    part = crop_source(data.getvalue(), decoded, Box(0.5, 0.5, 0.02, 0.06), model_px=224, max_side=640)
    assert part.size == (60, 60) and part.getpixel((30, 30)) == (255, 0, 0)
    whole = crop_source(data.getvalue(), decoded, Box(0.0, 0.0, 1.0, 1.0), model_px=224, max_side=640)
    assert whole.size == decoded.size  # the shrunk photo already has the pixels a big box needs
    with pytest.raises(InvalidRegionError, match="of this 3000x1000 photo"):
        crop_source(data.getvalue(), decoded, Box(0.5, 0.5, 0.001, 0.5), model_px=224, max_side=640)


@pytest.mark.parametrize("values, expected", [(200, 200), (40000, 156), (4_000_000, 255)])
def test_32_bit_greyscale_photos_keep_their_content(values, expected):
    """Mode I holds what its writer put in it: 8-bit values stay (they used to be divided to black),
    16-bit ones are scaled like I;16, wider ones by their maximum."""
    arr = np.full((20, 20), values, np.int32)
    arr[0, 0] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, "I").save(buf, "TIFF")
    img = load_image(buf.getvalue())
    assert img.getpixel((5, 5)) == (expected,) * 3 and img.getpixel((0, 0)) == (0, 0, 0)


def test_an_image_past_pillows_own_bomb_limit_names_our_limit(client):
    r = api_search(client, _png_header(30000, 30000))
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "image_too_large"
    message = r.get_json()["error"]["message"]
    assert "40,000,000 pixels" in message and "decompression bomb" not in message.lower()


def test_a_posted_back_vector_that_overflows_float32_is_renormalised_not_zeroed(client):
    html = page_search(client, photo(3)).get_data(as_text=True)
    good = base64.urlsafe_b64decode(html.split('name="qv" value="')[1].split("~")[0])
    vec = np.frombuffer(good, "<f4") * np.float32(3e38)  # the same direction, squares far past float32
    signer = client.application.extensions["shopsearch_signer"]  # as though this server had sent it
    qv = signer.seal("qv", base64.urlsafe_b64encode(vec.astype("<f4").tobytes()).decode() + "~")
    page = client.post("/search", data={"qv": qv}).get_data(as_text=True)
    assert 'data-sku="P3"' in page.split("<article")[1] and "No close match" not in page
    zero = signer.seal("qv", base64.urlsafe_b64encode(np.zeros_like(vec).astype("<f4").tobytes()).decode() + "~")
    assert client.post("/search", data={"qv": zero}).status_code == 400


# -- pages ------------------------------------------------------------------------------------
def test_a_page_price_past_the_limit_is_an_inline_error_that_keeps_the_photo(client):
    r = page_search(client, photo(3), min_price="1e13")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "Min price must be at most 1,000,000,000,000." in html
    assert 'src="data:image/jpeg;base64,' in html and 'data-sku="P3"' in html
    assert "Min_price" not in html


def test_a_results_page_with_the_photo_is_kept_from_shared_caches_only(client):
    """`private`: no proxy keeps the shopper's photo; their browser may, for Back (no-store broke it)."""
    r = page_search(client, photo(2))
    assert r.status_code == 200 and r.headers["Cache-Control"] == "private"


def test_an_unknown_results_link_says_so_in_a_shoppers_words(client):
    r = client.get("/results/" + "0" * 32)
    assert r.status_code == 404 and "These results are no longer available" in r.get_data(as_text=True)
    assert "request id" not in r.get_data(as_text=True)


# -- the CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--min-price", "nan"], "is not a price"), (["--max-price", "inf"], "is not a price"),
    (["--max-price", "-5"], "is not a price"), (["--min-price", "abc"], "is not a number"),
    (["--min-price", "1_0"], "is not a number"), (["--min-price", "5", "--max-price", "1"], "is above --max-price"),
])
def test_cli_search_refuses_the_price_filters_the_api_refuses(tmp_path, args, message):
    image = tmp_path / "q.jpg"
    image.write_bytes(photo(1))
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "search", str(image), *args])
    assert res.exit_code == 2 and message in res.output, res.output


# -- a busy worker ------------------------------------------------------------------------------
def test_the_search_gate_lets_a_search_wait_its_turn_then_says_busy():
    import threading
    import time

    from webapp.errors import ServerBusyError
    from webapp.search_gate import SearchGate

    gate = SearchGate(slots=1, wait_s=0.2)
    held, release = threading.Event(), threading.Event()

    def search() -> None:
        with gate.enter():
            held.set()
            release.wait(5)

    t = threading.Thread(target=search)
    t.start()
    assert held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(ServerBusyError, match="busy"):
        with gate.enter():
            pass
    assert 0.15 <= time.monotonic() - t0 < 2
    threading.Timer(0.05, release.set).start()  # a search that frees its slot within the wait lets the next in
    with gate.enter():
        pass
    t.join()
    with SearchGate(slots=0).enter():  # no limit (the development server, tests)
        pass


def test_the_gate_refuses_at_once_when_its_queue_is_full():
    """At most `max_waiting` searches wait for a slot (serve: the spare threads less one): one more
    is told at once, so waiting searches never hold every spare thread (health checks queue behind)."""
    import threading
    import time

    from webapp.errors import ServerBusyError
    from webapp.search_gate import SearchGate

    gate = SearchGate(slots=1, wait_s=5, max_waiting=1)
    held, release, waited = threading.Event(), threading.Event(), []

    def hold() -> None:
        with gate.enter():
            held.set()
            release.wait(5)

    def wait() -> None:
        with gate.enter():
            waited.append(True)

    holder, waiter = threading.Thread(target=hold), threading.Thread(target=wait)
    holder.start()
    assert held.wait(5)
    waiter.start()
    for _ in range(100):  # the waiter is queued
        if gate.waiting == 1:
            break
        time.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(ServerBusyError):
        with gate.enter():
            pass
    assert time.monotonic() - t0 < 1  # refused at once, not after wait_s
    release.set()
    holder.join(5)
    waiter.join(5)
    assert waited == [True]  # the one that waited got its turn


def test_server_workers_cap_their_malloc_arenas():
    import sys

    from webapp.server import limit_malloc_arenas

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt")
    assert limit_malloc_arenas(8) is True  # the call takes (M_ARENA_MAX is honoured by glibc)


def test_a_search_with_no_free_slot_is_503_busy_while_health_answers(priced_site):
    import threading

    from tests.conftest import FakeEmbedder

    started, release = threading.Event(), threading.Event()

    class Slow(FakeEmbedder):
        def encode_batch(self, batch):
            started.set()
            release.wait(10)
            return super().encode_batch(batch)

    app = app_for(priced_site, embedder=Slow(), SEARCH_SLOTS=1, SEARCH_WAIT_S=0.2)
    try:
        first: list = []
        t = threading.Thread(target=lambda: first.append(api_search(app.test_client(), photo(1))))
        t.start()
        assert started.wait(10)
        busy = api_search(app.test_client(), photo(2))
        assert busy.status_code == 503 and busy.get_json()["error"]["code"] == "busy"
        assert busy.headers["Retry-After"] == "2"
        page = page_search(app.test_client(), photo(2))
        assert page.status_code == 503 and "busy right now" in page.get_data(as_text=True)
        assert app.test_client().get("/healthz").status_code == 200
        release.set()
        t.join(10)
        assert first[0].status_code == 200 and first[0].get_json()["results"][0]["sku"] == "P1"
        assert api_search(app.test_client(), photo(2)).status_code == 200  # the slot is free again
    finally:
        release.set()
        app.extensions["shopsearch"].close()


def test_a_photo_of_one_flat_colour_is_no_match():
    """A flat colour lies close to some product's colours (a newcomer got "Close match: Orange" for
    a pink square), but nothing in it can identify a product."""
    from shopsearch.images import lacks_detail

    assert lacks_detail(Image.new("RGB", (640, 480), (254, 87, 199)))
    ramp = np.linspace(0, 1, 512)[None, :, None] * np.array([60, 60, 60]) + np.array([200, 100, 150])
    assert lacks_detail(Image.fromarray(np.clip(ramp, 0, 255).repeat(512, 0).astype(np.uint8)))  # a smooth gradient
    assert not lacks_detail(make_image(3)) and not lacks_detail(Image.effect_noise((64, 64), 20).convert("RGB"))
    dark = Image.eval(jitter(make_image(5, (320, 240)), seed=1), lambda v: int(v * 0.08))  # a dark photo has edges
    assert not lacks_detail(dark)


PINK = (254, 87, 199)


@pytest.fixture(scope="module")
def flat_site(tmp_path_factory):
    """20 generated products, three photos each, calibrated; product F0's photos are plain pink, so a
    pink square finds it at a similarity near 1 and, by its score alone, a close match."""
    from indexer.build import IndexBuilder
    from shopsearch.catalogue.records import ImageRecord, ProductRecord
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.config import Settings
    from shopsearch.index import IndexStore
    from tests.conftest import FakeEmbedder, jitter, sha

    root = tmp_path_factory.mktemp("flat")
    settings = Settings(data_dir=root / "data")
    cat = CatalogueStore.open(settings.db_url)
    for i in range(20):
        records = []
        for j in range(3):
            base = Image.new("RGB", (96, 96), PINK) if i == 0 else make_image(i)
            p = root / f"f{i}_{j}.png"
            (base if j == 0 else jitter(base, seed=100 * i + j, amount=6)).save(p)
            records.append(ImageRecord(str(p), role="catalogue" if j == 0 else "reference", sha256=sha(p)))
        cat.upsert_product(ProductRecord(sku=f"F{i}", title=f"Thing {i}", category_path=("Things",), images=tuple(records)))
    IndexBuilder(FakeEmbedder(), cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(
        progress=False, workers=1)
    cat.close()
    return settings


def test_flat_photos_get_no_match_in_the_api_and_the_page_and_its_reruns(flat_site):
    app = app_for(flat_site)
    try:
        c = app.test_client()
        detailed = api_search(c, _jpeg(make_image(3))).get_json()  # the calibration works on this site
        assert detailed["match"] == "strong" and detailed["results"][0]["sku"] == "F3"
        body = api_search(c, _jpeg(Image.new("RGB", (320, 240), PINK))).get_json()
        assert body["results"][0]["sku"] == "F0" and body["results"][0]["score"] > 0.95  # found, yet
        assert body["match"] == "none" and body["confidence"] == 0.01 and body["confidence_limit"] == "flat"
        html = page_search(c, _jpeg(Image.new("RGB", (320, 240), PINK))).get_data(as_text=True)
        assert 'data-match="none"' in html and 'name="qflat" value="1"' in html and "shows no detail" in html
        assert "clear the filters" not in page_search(c, _jpeg(Image.new("RGB", (320, 240), PINK)),
                                                      category="Things").get_data(as_text=True)
        qv = html.split('name="qv" value="')[1].split('"')[0]
        again = c.post("/search", data={"qv": qv, "qflat": "1"}).get_data(as_text=True)  # "Show more", filters
        assert 'data-match="none"' in again
    finally:
        app.extensions["shopsearch"].close()


FLAT_TEXT = "This photo shows no detail (one flat colour)"


def test_a_flat_photos_results_rebuilt_from_the_log_keep_the_flat_photo_wording(flat_site):
    """/results/<rid> said "We may not sell this product" for a pink square: confidence_limit was not logged."""
    app = app_for(flat_site)
    try:
        c = app.test_client()
        html = page_search(c, _jpeg(Image.new("RGB", (320, 240), PINK))).get_data(as_text=True)
        (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
        shown = c.get(f"/results/{rid}").get_data(as_text=True)
        assert FLAT_TEXT in html and FLAT_TEXT in shown and "We may not sell" not in shown
        assert app.extensions["shopsearch"].feedback.search(rid).confidence_limit == "flat"
        normal = page_search(c, _jpeg(make_image(3))).get_data(as_text=True)
        (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', normal))
        assert FLAT_TEXT not in normal and FLAT_TEXT not in c.get(f"/results/{rid}").get_data(as_text=True)
        logged = app.extensions["shopsearch"].feedback.search(rid)
        assert logged.confidence_limit is None and "confidence_limit" not in logged.options
        for odd in ("<b>x</b>", "FLAT", 1, ["flat"]):  # only the known values are read back
            assert replace(logged, options={"confidence_limit": odd}).confidence_limit is None
    finally:
        app.extensions["shopsearch"].close()


def test_a_box_too_small_even_at_full_size_is_refused_before_decoding_again(monkeypatch):
    """crop=0,0,1e-300,1 on a large photo used to re-decode it in full (~0.9 s) only to refuse it."""
    import shopsearch.regions as regions

    big = Image.new("RGB", (3000, 2000), (10, 20, 30))
    data = io.BytesIO()
    big.save(data, "JPEG")
    decoded = load_image(data.getvalue())
    decoded.thumbnail((640, 640))
    monkeypatch.setattr(regions, "load_image", lambda *a, **k: pytest.fail("decoded again"))
    with pytest.raises(InvalidRegionError, match="of this 3000x2000 photo"):
        crop_source(data.getvalue(), decoded, Box(0.0, 0.0, 1e-300, 1.0), model_px=224, max_side=640)
