"""A real browser (Debian's headless Chromium, driven by Playwright) against the real app:
a Grocery Store shopper photo of a banana is uploaded on the upload page, Banana comes
first, its product page opens with recommendations. Screenshots go to the test's tmp dir."""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from indexer.build import IndexBuilder
from shopsearch.catalogue.importers import import_catalogue, read_source
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.index import IndexStore
from tests.conftest import GROCERY, needs_grocery

pytestmark = [pytest.mark.browser, pytest.mark.dataset, needs_grocery, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: classes that get a few shopper photos as reference images besides their iconic image
WITH_REFERENCES = ("Banana", "Granny-Smith", "Lemon", "Cucumber", "Oatghurt", "Red-Bell-Pepper")
PHOTO = GROCERY / "dataset" / "test" / "Fruit" / "Banana" / "Banana_004.jpg"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _playwright():
    """The sync Playwright API, or skip (locally) / fail (in CI) when the browser set-up is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = "chromium is not installed (make browser / scripts/ensure-browser.sh)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run the browser test")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def grocery_site(tmp_path_factory) -> Settings:
    """The 81 iconic products, plus 4 shopper photos each for a handful of classes."""
    root = tmp_path_factory.mktemp("grocery")
    settings = Settings(data_dir=root / "data")
    problems: list = []
    records = []
    for r in read_source(GROCERY, "grocerystore", problems, "train"):
        keep = [i for i in r.images if i.role == "catalogue"]
        if r.sku in WITH_REFERENCES:
            keep += [i for i in r.images if i.role == "reference"][:4]
        records.append(dataclasses.replace(r, images=tuple(keep)))
    cat = CatalogueStore.open(settings.db_url)
    import_catalogue(cat, records, problems, workers=1, progress=False)
    emb = load_embedder("efficientnet-lite0", "cpu")
    IndexBuilder(emb, cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(progress=False, workers=1)
    cat.close()
    return settings


@pytest.fixture(scope="module")
def base_url(grocery_site):
    from werkzeug.serving import make_server

    from webapp import create_app

    app = create_app({"SETTINGS": grocery_site})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    app.extensions["shopsearch"].close()


def test_shopper_finds_banana_and_recommendations(base_url, tmp_path):
    sync_playwright = _playwright()
    t0 = time.perf_counter()
    shots: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            for label, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
                ctx = browser.new_context(viewport=viewport, is_mobile=label == "phone", has_touch=label == "phone",
                                          device_scale_factor=2 if label == "phone" else 1)
                page = ctx.new_page()
                errors: list[str] = []
                foreign: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: m.type == "error" and errors.append(m.text))
                page.on("request", lambda r: r.url.startswith((base_url, "data:", "blob:")) or foreign.append(r.url))

                page.goto(base_url + "/")
                assert page.locator("#dropzone").is_visible()
                assert not page.locator("#preview").is_visible()  # nothing chosen yet: no empty preview box
                page.set_input_files("#image-input", str(PHOTO))
                page.wait_for_selector("#preview:not([hidden])")  # the preview script ran
                page.click("#search-button")
                page.wait_for_selector("#results .card")
                cards = page.locator("#results .card")
                assert cards.first.get_attribute("data-sku") == "Banana", page.locator("#results").inner_text()
                assert cards.count() >= 6
                assert "match" in cards.first.inner_text()
                page.wait_for_load_state("networkidle")
                assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
                shots.append(tmp_path / f"results-{label}.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                cards.first.locator("a").click()
                page.wait_for_selector("#similar .card")
                assert page.locator("h1").inner_text() == "Banana"
                similar = [c.get_attribute("data-sku") for c in page.locator("#similar .card").all()]
                assert len(similar) >= 4 and "Banana" not in similar and len(set(similar)) == len(similar)
                page.wait_for_load_state("networkidle")
                shots.append(tmp_path / f"product-{label}.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
                assert not errors, errors
                assert not foreign, f"requests left the app: {foreign}"
                ctx.close()
        finally:
            browser.close()
    for s in shots:
        assert s.stat().st_size > 10_000
        print(f"screenshot: {s}")
    print(f"browser flow took {time.perf_counter() - t0:.1f}s")


def test_drag_and_drop_sets_the_file(base_url):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            data = list(PHOTO.read_bytes())
            # a drop event carrying the photo, as a desktop browser delivers it
            page.evaluate("""(bytes) => {
                const file = new File([new Uint8Array(bytes)], "banana.jpg", {type: "image/jpeg"});
                const dt = new DataTransfer(); dt.items.add(file);
                const zone = document.getElementById("dropzone");
                zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""", data)
            assert page.evaluate("document.getElementById('image-input').files.length") == 1
            page.wait_for_selector("#preview:not([hidden])")
            page.click("#search-button")
            page.wait_for_selector("#results .card")
            assert page.locator("#results .card").first.get_attribute("data-sku") == "Banana"
            # submitting with no photo shows a message instead of a request
            page.goto(base_url + "/")
            page.click("#search-button")
            assert "Choose or take a photo" in page.locator("#client-error").inner_text()
        finally:
            browser.close()
