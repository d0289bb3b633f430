"""Catalogue images: served by id only, confined to the image roots, thumbnails made once."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from tests.conftest import make_image, sha
from tests.test_webapp import app_for, make_site


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path, n=4)


def _image_id(settings, sku: str, role: str = "catalogue") -> int:
    cat = CatalogueStore.open(settings.db_url)
    try:
        return next(i.id for i in cat.get_product(sku).images if i.role == role)
    finally:
        cat.close()


def test_thumbnails_are_made_once_and_cached(site):
    c = app_for(site).test_client()
    image_id = _image_id(site, "P1")
    r = c.get(f"/images/{image_id}/160")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and "max-age" in r.headers["Cache-Control"]
    img = Image.open(io.BytesIO(r.data))
    assert img.format == "JPEG" and max(img.size) == 96  # never upscaled past the 96 px source
    digest = sha(Path(CatalogueStore.open(site.db_url).image(image_id).path))
    cached = site.data_dir / "thumbs" / digest[:2] / f"{digest}_160.jpg"
    assert cached.is_file() and not list(cached.parent.glob("*.tmp"))
    # the second request serves the cached file, it does not decode the original again
    marker = Image.new("RGB", (7, 5), "red")
    marker.save(cached, "JPEG")
    assert Image.open(io.BytesIO(c.get(f"/images/{image_id}/160").data)).size == (7, 5)
    # conditional requests: 304 with the ETag
    etag = c.get(f"/images/{image_id}/160").headers["ETag"]
    assert c.get(f"/images/{image_id}/160", headers={"If-None-Match": etag}).status_code == 304


def test_large_image_is_downscaled(site, tmp_path):
    big = tmp_path / "big.jpg"
    make_image(77, size=(2000, 1500)).save(big, quality=90)
    cat = CatalogueStore.open(site.db_url)
    cat.upsert_product(ProductRecord(sku="BIG", title="Big", images=(ImageRecord(str(big), sha256=sha(big)),)))
    cat.close()
    c = app_for(site).test_client()
    for size in (320, 1280):
        img = Image.open(io.BytesIO(c.get(f"/images/{_image_id(site, 'BIG')}/{size}").data))
        assert max(img.size) == size and img.size[0] > img.size[1]


@pytest.mark.parametrize("url", [
    "/images/999999/320",  # no such image id
    "/images/1/321",  # not an allowed size
    "/images/1/99999",
    "/images/-1/320",
    "/images/abc/320",
])
def test_unknown_images_are_404(site, url):
    r = app_for(site).test_client().get(url)
    assert r.status_code == 404 and "Traceback" not in r.get_data(as_text=True)


@pytest.mark.parametrize("url", [
    "/images/../../../../etc/passwd",
    "/images/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/images/1/..%2f..%2f..%2fetc%2fpasswd",
    "/images/..%252f..%252fetc%252fpasswd/320",
    "/images//etc/passwd",
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/__init__.py",
    "/static/..%2f..%2fshopsearch%2fconfig.py",
    "/api/v1/products/..%2f..%2fetc%2fpasswd",
])
def test_path_traversal_is_refused(site, url):
    r = app_for(site).test_client().get(url)
    body = r.get_data(as_text=True)
    assert r.status_code in (400, 404), (url, r.status_code)
    assert "root:" not in body and "import " not in body


def test_image_outside_the_roots_is_refused(site, tmp_path):
    """A catalogue entry whose file resolves outside IMAGE_ROOTS (here via a symlink) is never served."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    make_image(99).save(secret)
    link = tmp_path / "images" / "innocent.png"
    os.symlink(secret, link)
    cat = CatalogueStore.open(site.db_url)
    cat.upsert_product(ProductRecord(sku="SNEAKY", title="Sneaky", images=(ImageRecord(str(link), sha256=sha(secret)),)))
    cat.close()
    sneaky, fine = _image_id(site, "SNEAKY"), _image_id(site, "P0")
    confined = app_for(site, IMAGE_ROOTS=str(tmp_path / "images")).test_client()
    assert confined.get(f"/images/{sneaky}/320").status_code == 404
    assert confined.get(f"/images/{fine}/320").status_code == 200
    roots = os.pathsep.join([str(tmp_path / "images"), str(outside)])
    assert app_for(site, IMAGE_ROOTS=roots).test_client().get(f"/images/{sneaky}/320").status_code == 200


def test_missing_or_broken_catalogue_file_is_404(site, tmp_path):
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    gone = tmp_path / "images" / "gone.png"
    cat = CatalogueStore.open(site.db_url)
    cat.upsert_product(ProductRecord(sku="BROKEN", title="Broken", images=(ImageRecord(str(broken), sha256="b" * 64),)))
    cat.upsert_product(ProductRecord(sku="GONE", title="Gone", images=(ImageRecord(str(gone), sha256="c" * 64),)))
    cat.close()
    c = app_for(site).test_client()
    for sku in ("BROKEN", "GONE"):
        r = c.get(f"/images/{_image_id(site, sku)}/320")
        assert r.status_code == 404 and "Traceback" not in r.get_data(as_text=True)


def test_a_heic_photo_is_searched_like_a_jpeg(site):
    """An iPhone's HEIC upload (a browser on a desktop sends the file as it is) finds the same products."""
    app = app_for(site)
    try:
        c = app.test_client()
        answers = []
        for fmt in ("HEIF", "JPEG"):
            buf = io.BytesIO()
            make_image(2).save(buf, format=fmt, quality=95)
            r = c.post("/api/v1/search", data={"image": (io.BytesIO(buf.getvalue()), f"photo.{fmt.lower()}"), "k": "3"},
                       content_type="multipart/form-data")
            assert r.status_code == 200, r.get_data(as_text=True)
            answers.append([h["sku"] for h in r.get_json()["results"]])
        assert answers[0][0] == answers[1][0]
    finally:
        app.extensions["shopsearch"].close()
