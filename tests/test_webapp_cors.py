"""Cross-origin reads of the JSON API (webapp/cors.py): off by default, per listed origin or `*`,
preflights answered, the pages left same-origin, and a malformed origin refused at start."""
from __future__ import annotations

import io

import pytest

from shopsearch.errors import ConfigError
from tests.test_webapp import api_search, app, app_for, client, make_site, photo  # noqa: F401 - fixtures

SHOP = "https://shop.example"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("cors-site"), n=4)


@pytest.fixture
def cors_client(site):
    app = app_for(site, CORS_ORIGINS=f"{SHOP}, http://localhost:3000")
    yield app.test_client()
    app.extensions["shopsearch"].close()


def test_off_by_default_other_sites_cannot_read(client):
    r = api_search(client, photo(1), k=3)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    r = client.get("/api/v1/categories", headers={"Origin": SHOP})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    # every OPTIONS under /api/ is a 204 naming the route's methods (Flask's own was an empty HTML 200)
    r = client.options("/api/v1/search", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.data == b"" and "POST" in r.headers["Allow"]
    assert "Access-Control-Allow-Origin" not in r.headers and "Access-Control-Allow-Methods" not in r.headers


def test_a_listed_origin_reads_answers_and_errors(cors_client):
    r = cors_client.post("/api/v1/search", data={"image": (io.BytesIO(photo(2)), "p.jpg"), "k": "3"},
                         headers={"Origin": SHOP}, content_type="multipart/form-data")
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Retry-After" in r.headers["Access-Control-Expose-Headers"] and "Origin" in r.headers["Vary"]
    # an error is readable too: the storefront can show the message
    r = cors_client.get("/api/v1/products/NO-SUCH", headers={"Origin": "http://LOCALHOST:3000"})
    assert r.status_code == 404 and r.headers["Access-Control-Allow-Origin"] == "http://LOCALHOST:3000"
    assert r.get_json()["error"]["code"]
    # another origin, or none, gets no grant; the answer still varies by Origin for shared caches
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {}):
        r = cors_client.get("/api/v1/categories", headers=headers)
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        assert "Origin" in r.headers["Vary"]


def test_preflight_for_a_json_post(cors_client):
    r = cors_client.options("/api/v1/feedback", headers={
        "Origin": SHOP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Content-Type, X-Secret-Token"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert r.headers["Access-Control-Allow-Methods"] == "POST"
    assert r.headers["Access-Control-Allow-Headers"] == "content-type"  # only the headers the API reads
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    r = cors_client.options("/api/v1/feedback", headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and "Access-Control-Allow-Origin" not in r.headers
    # an unknown API path stays a JSON 404
    r = cors_client.options("/api/v1/nope", headers={"Origin": SHOP, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 404 and r.get_json()["error"]["code"]


def test_pages_stay_same_origin(cors_client):
    r = cors_client.get("/", headers={"Origin": SHOP})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    r = cors_client.post("/search", data={}, headers={"Origin": SHOP})
    assert r.status_code == 403  # a page form from another site, listed or not


def test_any_origin(site):
    app = app_for(site, CORS_ORIGINS="*")
    try:
        r = app.test_client().get("/api/v1/categories", headers={"Origin": "https://anyone.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "*" and "Origin" not in r.headers.get("Vary", "")
    finally:
        app.extensions["shopsearch"].close()


@pytest.mark.parametrize("bad", ["shop.example", "https://shop.example/path", "ftp://shop.example",
                                 "https://", "https://shop.example:99999", "https://u@shop.example"])
def test_a_malformed_origin_fails_at_start(site, bad):
    with pytest.raises(ConfigError, match="not an origin"):
        app_for(site, CORS_ORIGINS=bad)


def test_origins_are_normalised_as_browsers_send_them(site):
    """An origin written with its default port, in capitals or with an IDN host matches the Origin
    a browser sends (`https://shop.example`, `https://xn--bcher-kva.example`)."""
    app = app_for(site, CORS_ORIGINS="HTTPS://Shop.Example:443, http://x.example:80, https://bücher.example, "
                                     "http://localhost:3000")
    try:
        c = app.test_client()
        for sent in (SHOP, "http://x.example", "https://xn--bcher-kva.example", "http://localhost:3000"):
            r = c.get("/api/v1/categories", headers={"Origin": sent})
            assert r.headers.get("Access-Control-Allow-Origin") == sent, sent
        # a port that is not the default stays part of the origin
        for other in ("https://shop.example:8443", "http://x.example:8080", "http://localhost"):
            r = c.get("/api/v1/categories", headers={"Origin": other})
            assert "Access-Control-Allow-Origin" not in r.headers, other
    finally:
        app.extensions["shopsearch"].close()


def test_api_without_its_slash_is_the_apis_json_404(cors_client):
    for method in ("GET", "POST", "OPTIONS", "DELETE"):
        r = cors_client.open("/api", method=method, headers={"Origin": SHOP})
        assert (r.status_code, r.mimetype) == (404, "application/json"), method
        assert r.get_json() == {"error": {"code": "not_found", "message": "no route /api"}}
        assert r.headers["Access-Control-Allow-Origin"] == SHOP  # readable, as any API error
    r = cors_client.get("/apiary")
    assert r.status_code == 404 and r.mimetype == "text/html"  # a page path stays a page
