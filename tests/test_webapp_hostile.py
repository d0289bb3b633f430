"""What an adversarial probe of the web app found (issue 19, low findings), each pinned down:
chunked bodies over the limit, too many form fields, ids past 64 bits, prices past float,
server paths in error messages, and the Host header in openapi.json."""
from __future__ import annotations

import io
import json
import shutil

import pytest

from shopsearch.index import IndexStore
from tests.test_webapp import app_for, make_site, photo


@pytest.fixture(scope="module")
def small_site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("hostile"), n=3)


@pytest.fixture
def client(small_site):
    app = app_for(small_site, MAX_UPLOAD_MB=1)
    yield app.test_client()
    app.extensions["shopsearch"].close()


def chunked_post(client, body: bytes, content_type: str):
    """A Transfer-Encoding: chunked request as gunicorn hands it over (no Content-Length,
    the server terminates the stream)."""
    return client.post("/api/v1/search", input_stream=io.BytesIO(body),
                       headers={"Transfer-Encoding": "chunked", "Content-Type": content_type},
                       environ_overrides={"wsgi.input_terminated": True})


def test_chunked_upload_over_the_limit_is_413(client):
    big = photo(1) + b"\0" * (2 * 1024 * 1024)  # a real photo first: a cut-off copy would still decode
    r = chunked_post(client, big, "application/octet-stream")
    assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"
    part = (b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + big + b"\r\n--XX--\r\n")
    r = chunked_post(client, part, "multipart/form-data; boundary=XX")
    assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"
    r = chunked_post(client, photo(1), "application/octet-stream")  # under the limit: searched
    assert r.status_code == 200 and r.json["results"][0]["sku"] == "P1"


def test_many_tiny_form_fields_get_the_right_message(client):
    body = b"".join(b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(5000))
    body += b"--XX--\r\n"
    assert len(body) < 1024 * 1024
    r = client.post("/api/v1/search", data=body, headers={"Content-Type": "multipart/form-data; boundary=XX"})
    assert r.status_code == 413 and r.json["error"]["code"] == "form_too_large"
    assert "too many fields" in r.json["error"]["message"] and "MB" not in r.json["error"]["message"]


@pytest.mark.parametrize("image_id", ["9223372036854775808", "99999999999999999999999", "9223372036854775807"])
def test_image_ids_past_64_bits_are_404(client, image_id):
    r = client.get(f"/images/{image_id}/320")
    assert r.status_code == 404


def test_image_id_past_32_bits_on_both_databases(tmp_path, db_url):
    app = app_for(make_site(tmp_path, n=1, database_url=db_url))
    c = app.test_client()
    assert c.get("/images/9223372036854775807/320").status_code == 404
    assert c.get("/images/2147483648/320").status_code == 404
    app.extensions["shopsearch"].close()


@pytest.mark.parametrize("price", ["1e999999999", "1e13", "Infinity", "-Infinity", "NaN", "sNaN", "-1"])
def test_prices_past_any_float_are_400(client, price):
    r = client.post(f"/api/v1/search?min_price={price}", data=photo(1), content_type="application/octet-stream")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter"
    json.loads(r.get_data(as_text=True), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    r = client.get(f"/api/v1/search/text?q=apple&max_price={price}")
    assert r.status_code == 400
    r = client.post(f"/api/v1/search?max_price=1e12", data=photo(1), content_type="application/octet-stream")
    assert r.status_code == 200 and r.json["filters"]["max_price"] == 1e12


def test_error_messages_show_no_server_paths(tmp_path):
    settings = make_site(tmp_path, n=2)
    store = IndexStore(settings.index_dir)
    f = store.build_dir(store.current_id()) / "index.faiss"
    f.write_bytes(f.read_bytes()[:-5] + b"brokn")  # corrupt, and no previous build to fall back to
    app = app_for(settings)
    c = app.test_client()
    for r in (c.post("/api/v1/search", data=photo(1), content_type="application/octet-stream"),
              c.get("/api/v1/products/P1/similar"), c.get("/readyz"), c.post("/search", data={})):
        body = r.get_data(as_text=True)
        assert r.status_code >= 500 and str(tmp_path) not in body and "index.faiss" not in body, body
    shutil.rmtree(settings.index_dir)
    app = app_for(settings)
    r = app.test_client().post("/api/v1/search", data=photo(1), content_type="application/octet-stream")
    assert r.status_code == 503 and r.json["error"]["code"] == "index_not_found"
    assert str(tmp_path) not in r.get_data(as_text=True)


def test_openapi_does_not_echo_the_host_header(client):
    r = client.get("/api/v1/openapi.json", headers={"Host": "evil.example:666"})
    assert "evil" not in r.get_data(as_text=True)
    assert r.json["servers"] == [{"url": "/api/v1"}]


def test_nul_in_a_sku_is_not_found(tmp_path, db_url):
    """Found by the fuzz run: PostgreSQL refuses a NUL in a query parameter (was a 500)."""
    app = app_for(make_site(tmp_path, n=1, database_url=db_url))
    c = app.test_client()
    for path in ("/api/v1/products/a%00b", "/api/v1/products/a%00b/similar", "/products/a%00b"):
        assert c.get(path).status_code == 404, path
    app.extensions["shopsearch"].close()


def test_a_broken_catalogue_image_does_not_show_its_path(tmp_path):
    settings = make_site(tmp_path, n=2)
    app = app_for(settings)
    c = app.test_client()
    image_id = c.get("/api/v1/products/P1").json["images"][0]["id"]
    for f in (tmp_path / "images").glob("img_0001.png"):
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # same file, now undecodable
    r = c.get(f"/images/{image_id}/320")
    assert r.status_code == 404 and "cannot be decoded" in r.get_data(as_text=True)
    assert str(tmp_path) not in r.get_data(as_text=True)
