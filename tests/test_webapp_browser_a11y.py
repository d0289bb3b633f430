"""The results and upload pages in a real headless Chromium (as tests/test_webapp_browser.py
launches it), for what only a browser shows: what a screen reader is told (the object chosen,
"Searching…", "Updating results…"), the filters after Back, the outlines' numbers and tab
order, and a photo over the upload limit reduced in the browser before it is sent.

The shop is tests/test_webapp_trust.py's: 20 generated products, calibrated, FakeEmbedder, so
these run in seconds and need no dataset."""
from __future__ import annotations

import dataclasses
import io
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from shopsearch.regions import Box, Region
from tests.conftest import FakeEmbedder, jitter, make_image
from tests.test_webapp_browser import DESKTOP, PHONE, _context, chromium, open_with_photo
from tests.test_webapp_trust import _composite, _jpeg, trust_site  # noqa: F401 - a fixture
from webapp.service import ServiceOverrides

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@contextmanager
def serving(settings, **config):
    from werkzeug.serving import make_server

    from webapp import create_app

    app = create_app({"SETTINGS": settings, **config}, ServiceOverrides(embedder=FakeEmbedder()))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["shopsearch"].close()


@pytest.fixture(scope="module")
def shop(trust_site):  # noqa: F811 - the imported fixture
    with serving(trust_site) as url:
        yield url


def _poll(page, expression: str, tries: int = 50) -> bool:
    """True once `expression` is truthy in the page (wait_for_function needs eval, which the CSP refuses)."""
    for _ in range(tries):
        if page.evaluate(expression):
            return True
        page.wait_for_timeout(100)
    return False


def _search(page, base: str, path, **checks) -> None:
    page.goto(base + "/")
    page.set_input_files("#image-input", str(path))
    page.wait_for_selector("#preview:not([hidden])")
    for box in checks.get("check", ()):
        page.check(box)
    page.click("#search-button")
    page.wait_for_selector("#results .card")


def hold_submits(page) -> None:
    """Forms stop just before they would be sent (after the app's own submit handlers ran), so the
    test sees what the page shows while a search runs; window.__held lists them, send_held sends."""
    page.evaluate("""() => {
        window.__held = [];
        const submit = HTMLFormElement.prototype.submit;
        window.__send = (f) => submit.call(f);
        HTMLFormElement.prototype.submit = function () { window.__held.push(this); };  // the app's own submit()
        document.addEventListener("submit", (e) => {  // registered after app.js: runs after its handlers
            if (!e.defaultPrevented) { e.preventDefault(); window.__held.push(e.target); }
        });
    }""")


def wait_held(page) -> None:
    assert _poll(page, "window.__held.length > 0", 100), "the form was not sent"


def send_held(page) -> None:
    page.evaluate("window.__send(window.__held[0])")


# -- issue 2: what a screen reader is told ---------------------------------------------------------
def test_choosing_an_object_is_announced_and_searching_is_said(shop, tmp_path):
    basket = tmp_path / "basket.jpg"
    basket.write_bytes(_jpeg(_composite([2, 5, 9])))
    with chromium() as browser:
        ctx, page, errors = open_with_photo(browser, "desktop", shop, basket)
        page.check("#objects-toggle")
        # "Searching…" goes to a polite live region, and the form is busy, while the search runs
        hold_submits(page)
        page.click("#search-button")
        wait_held(page)
        status = page.locator("#search-status")
        assert status.count() == 1, "no live region for the search's progress"
        assert status.get_attribute("role") == "status" and status.get_attribute("aria-live") == "polite"
        assert status.inner_text() == "Searching…"
        assert page.get_attribute("#upload-form", "aria-busy") == "true"
        with page.expect_navigation():
            send_held(page)
        page.wait_for_selector(".region-chips")
        assert " products found in your photo: Thing " in page.title()
        # a chip chosen with the keyboard: the section shown is said politely; focus stays on the chip
        chips = page.locator(".region-chips .chip")
        assert chips.count() >= 3
        chips.nth(2).focus()
        page.keyboard.press("Enter")
        live = page.locator("#results-status")
        assert live.get_attribute("aria-live") == "polite"
        expected = page.get_attribute("#region-2", "data-announce")
        assert expected.startswith("Object 2: Thing ") and " products" in expected
        assert _poll(page, "document.getElementById('results-status').textContent.startsWith('Object 2: ')")
        assert live.inner_text() == expected
        assert page.locator("#region-2").is_visible() and page.locator("#region-2 h2").inner_text().startswith("Object 2")
        assert page.evaluate("document.activeElement.getAttribute('data-region')") == "region-2"
        chips.first.focus()
        page.keyboard.press("Enter")
        assert _poll(page, "document.getElementById('results-status').textContent.startsWith('Whole photo: ')")
        # a filter applied: the results are busy and "Updating results…" is said while it runs
        hold_submits(page)
        page.select_option("#filter-form select[name=category]", "Fruit")
        wait_held(page)
        assert page.get_attribute("#results", "aria-busy") == "true"
        assert live.inner_text() == "Updating results…"
        with page.expect_navigation():
            send_held(page)
        page.wait_for_selector(".region-chips")  # the objects are still there after the filter
        assert page.locator(".region-outline").count() == chips.count() - 1
        assert page.get_attribute("#results", "aria-busy") is None
        assert not errors, errors
        ctx.close()


# -- issue 3: Back shows the filters the page's results were filtered by ------------------------
def _unfold_filters(page, label: str) -> None:
    """A phone's results page folds unset filters under "Filters" (the products first): tap it."""
    page.wait_for_load_state("load")  # app.js folds them as it runs
    if not page.locator("#filter-form details").evaluate("d => d.open"):
        assert label == "phone"
        page.click("#filter-form summary")


def test_back_from_a_filtered_page_shows_its_own_filters(shop, tmp_path):
    photo = tmp_path / "thing.jpg"
    photo.write_bytes(_jpeg(jitter(make_image(4), seed=3, amount=8)))
    with chromium() as browser:
        for label in ("phone", "desktop"):
            ctx = _context(browser, label)
            page = ctx.new_page()
            _search(page, shop, photo)
            select = "#filter-form select[name=category]"
            assert page.input_value(select) == ""
            _unfold_filters(page, label)
            with page.expect_navigation():
                page.select_option(select, "Fruit")
            page.wait_for_selector("#results .card")
            assert page.input_value(select) == "Fruit"
            page.go_back(wait_until="commit")
            page.wait_for_selector("#results .card")
            page.wait_for_load_state("load")
            # the unfiltered results: their filter is "All categories", not the one picked before
            assert _poll(page, f"document.querySelector('{select}').value === ''"), page.input_value(select)
            # so picking "Fruit" again is a change, and applies
            _unfold_filters(page, label)
            with page.expect_navigation():
                page.select_option(select, "Fruit")
            page.wait_for_selector("#results .card")
            assert page.input_value(select) == "Fruit"
            ctx.close()


# -- issue 5: the outlines' numbers readable, tab order as on the photo -----------------------------
def test_overlapping_outlines_show_every_number_in_reading_order(trust_site, tmp_path, monkeypatch):  # noqa: F811
    import webapp.pages as pages

    boxes = [Box(0.55, 0.05, 0.4, 0.4),  # top right
             Box(0.05, 0.55, 0.4, 0.4),  # bottom left
             Box(0.05, 0.05, 0.4, 0.4),  # top left
             Box(0.05, 0.05, 0.25, 0.25)]  # inside the top left one, same corner

    def overlapping(svc, img, n, k, filters):
        res = svc.search_image(img, k=k, filters=filters)
        vecs = svc.embedder.encode_images([img.crop(b.pixels(*img.size)) for b in boxes])
        return [Region(b, res.confidence, res.match, res.hits[0].score, res, "grid", v) for b, v in zip(boxes, vecs)]

    monkeypatch.setattr(pages, "find_objects", overlapping)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(_jpeg(_composite([2, 5, 9])))
    with serving(trust_site) as url, chromium() as browser:
        landscape = {"width": PHONE["height"], "height": PHONE["width"]}
        for viewport in (landscape, DESKTOP):
            ctx = browser.new_context(viewport=viewport, is_mobile=viewport is landscape,
                                      has_touch=viewport is landscape)
            page = ctx.new_page()
            page.goto(url + "/")
            page.set_input_files("#image-input", str(photo))
            page.wait_for_selector("#preview:not([hidden])")
            page.check("#objects-toggle")
            page.click("#search-button")
            page.wait_for_selector(".region-outline")
            page.wait_for_load_state("load")
            page.wait_for_timeout(200)
            badges = page.evaluate("""Array.from(document.querySelectorAll('.region-outline span')).map(s => {
                const r = s.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
            assert len(badges) == 4
            for i in range(4):
                for j in range(i + 1, 4):
                    a, b = badges[i], badges[j]
                    apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                    assert apart, f"badges {i + 1} and {j + 1} overlap: {a} {b}"
            # Tab through the outlines: 1, 2, 3, 4, which is top to bottom, left to right on the photo
            page.focus("#query-frame .region-outline >> nth=0")
            order = []
            for _ in range(4):
                order.append(page.evaluate("""(() => { const e = document.activeElement;
                    const b = e.getAttribute('data-box').split(',').map(parseFloat);
                    return [e.querySelector('span').textContent, b[0], b[1], b[2], b[3]]; })()"""))
                page.keyboard.press("Tab")
            assert [o[0] for o in order] == ["1", "2", "3", "4"]
            boxes_seen = [tuple(round(v, 2) for v in o[1:]) for o in order]
            assert boxes_seen == [(0.05, 0.05, 0.25, 0.25), (0.05, 0.05, 0.4, 0.4), (0.55, 0.05, 0.4, 0.4),
                                  (0.05, 0.55, 0.4, 0.4)]
            chips = page.locator(".region-chips .chip")
            assert [chips.nth(i).inner_text().split(".")[0] for i in range(1, 5)] == ["1", "2", "3", "4"]
            ctx.close()


# -- issue 6: a photo over the upload limit is reduced in the browser -------------------------------
def _big_sideways_photo(path) -> None:
    """A 3000x2000 (upright) photo stored sideways with EXIF orientation 6, over 4 MB as a JPEG."""
    im = make_image(3, (300, 200)).resize((3000, 2000), Image.BILINEAR)
    a = np.asarray(im).astype(np.int16)
    a = np.clip(a + np.random.default_rng(0).integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    stored = Image.fromarray(a).transpose(Image.Transpose.ROTATE_90)  # the camera's pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    stored.save(path, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())


def test_a_photo_over_the_limit_is_reduced_and_searched(trust_site, tmp_path):  # noqa: F811
    big = tmp_path / "phone.jpg"
    _big_sideways_photo(big)
    limit = 4 * 1024 * 1024
    assert big.stat().st_size > limit
    with serving(trust_site, MAX_CONTENT_LENGTH=limit) as url, chromium() as browser:
        ctx, page, errors = open_with_photo(browser, "phone", url, big)
        assert not page.locator("#client-error").is_visible()  # no refusal: it will be reduced
        assert "reduced to 2048 px" in page.locator("#client-note").inner_text()
        hold_submits(page)
        page.click("#search-button")
        wait_held(page)
        size = page.evaluate("document.getElementById('image-input').files[0].size")
        assert 0 < size < limit - 65536
        assert page.evaluate("document.getElementById('image-input').files[0].type") == "image/jpeg"
        assert page.locator("#client-note").inner_text() == "Large photo reduced to 2048 px before searching."
        assert "Searching…" in page.locator("#search-status").inner_text()
        with page.expect_navigation():
            send_held(page)
        page.wait_for_selector("#results .card")
        # the photo searched was the upright one (EXIF orientation applied before it was reduced)
        w, h = page.evaluate("[document.querySelector('.query-photo').naturalWidth,"
                             " document.querySelector('.query-photo').naturalHeight]")
        assert w > h, (w, h)
        assert page.locator("#results .card").first.get_attribute("data-sku") == "S3"
        assert not errors, errors
        ctx.close()


def test_a_photo_that_cannot_be_reduced_gets_the_limit_message(trust_site, tmp_path):  # noqa: F811
    """A file that says it is a photo but no browser can draw: the limit is said, nothing is sent."""
    fake = tmp_path / "huge.heic"
    fake.write_bytes(b"\0\0\0\x18ftypheic" + bytes(300_000))
    with serving(trust_site, MAX_CONTENT_LENGTH=200_000) as url, chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        posts: list[str] = []
        page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
        page.goto(url + "/")
        # as a phone gives it: an image type the preview cannot show is still offered to search
        page.evaluate("""(bytes) => {
            const f = new File([new Uint8Array(bytes)], "huge.heic", {type: "image/heic"});
            const dt = new DataTransfer(); dt.items.add(f);
            document.getElementById('image-input').files = dt.files; }""", list(fake.read_bytes()))
        page.click("#search-button")
        page.wait_for_selector("#client-error:not([hidden])")
        assert "the limit is 0.2 MB" in page.locator("#client-error").inner_text()
        assert page.locator("#search-button").is_enabled() and not posts


def test_a_heic_photo_the_browser_cannot_show_is_still_searched(shop, tmp_path):
    """Chromium draws no HEIC (an iPhone's photo format): no preview, but no refusal either; the
    server decodes it and the product is found."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    photo = tmp_path / "IMG_0001.heic"
    jitter(make_image(3), seed=4, amount=6).save(photo, format="HEIF", quality=95)
    with chromium() as browser:
        page = browser.new_page(viewport=DESKTOP)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(shop + "/")
        page.set_input_files("#image-input", str(photo))
        page.wait_for_selector("#client-note:not([hidden])")
        assert "cannot show a preview" in page.locator("#client-note").inner_text()
        assert not page.locator("#client-error").is_visible() and not page.locator("#preview").is_visible()
        with page.expect_navigation():
            page.click("#search-button")
        page.wait_for_selector("#results .card")
        assert page.locator("#results .card").first.get_attribute("data-sku") == "S3"
        assert not errors, errors
