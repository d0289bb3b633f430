"""Result cards' URLs from templates (webapp.card_urls) are exactly url_for's, and a search
answer built with them is the same JSON as one built with url_for per card (issue 18)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from flask import url_for

from shopsearch.results import ProductHit, SearchResult
from webapp.card_urls import CardUrls, card_urls
from webapp.params import result_dict
from tests.test_webapp import app_for, site  # noqa: F401 - the module-scoped site fixture

SKUS = ["P1", "a b", "x/y/z", "é€/ü", "50%", "q?x=1#f", "+&=;", "~tilde~", "..", "-._", "a//b", "'quote'",
        "[brackets]", "back\\slash", "tab\tnew\nline", "987654321987654", "~shopsearch-mark~"]


@pytest.fixture
def app(site):  # noqa: F811
    a = app_for(site)
    yield a
    a.extensions["shopsearch"].close()


def _url_for_card(h: ProductHit) -> dict:
    """A card as webapp.params built it before the templates: url_for for each URL."""
    d = h.to_dict()
    d["matched_image"].pop("path", None)
    d["matched_image"].update(thumbnail_url=url_for("images.image", image_id=h.image_id, size=320),
                              image_url=url_for("images.image", image_id=h.image_id, size=1280))
    d["url"] = url_for("pages.product", sku=h.sku)
    d["api_url"] = url_for("api.product", sku=h.sku)
    return d


@pytest.mark.parametrize("root", ["", "/shop", "/a b/é"])
def test_templates_match_url_for(app, root):
    with app.test_request_context("/", base_url=f"http://localhost{root}"):
        assert url_for("pages.product", sku="P1") == f"{root}/products/P1"  # the root is in play
        urls = card_urls()
        assert urls is card_urls()  # made once per script root
        for sku in SKUS:
            assert urls.product(sku) == url_for("pages.product", sku=sku)
            assert urls.api_product(sku) == url_for("api.product", sku=sku)
        for i in (0, 1, 7, 123456, 987654321987654, 2**63 - 1):
            assert urls.image_320(i) == url_for("images.image", image_id=i, size=320)
            assert urls.image_1280(i) == url_for("images.image", image_id=i, size=1280)


def test_each_script_root_gets_its_own_templates(app):
    with app.test_request_context("/", base_url="http://localhost/one"):
        one = card_urls().product("P1")
    with app.test_request_context("/", base_url="http://localhost/two"):
        two = card_urls().product("P1")
    assert (one, two) == ("/one/products/P1", "/two/products/P1")


def test_search_answer_is_the_same_json_as_with_url_for(app):
    hits = tuple(ProductHit(sku, f"Title {n}", 0.9 - n / 100, 1000 + n, f"/srv/img{n}.jpg", "Acme", Decimal("1.50"),
                            "EUR", "Fruit/Apple", "merchant", 2, calibrated=0.5)
                 for n, sku in enumerate(SKUS))
    res = SearchResult(hits, "m", "b1", {"embed": 1.0}, confidence=0.5, match="weak", calibration={"status": "x"})
    with app.test_request_context("/", base_url="http://localhost/shop"):
        got = result_dict(res, None, 10)
        expected = res.to_dict()
        expected["results"] = [_url_for_card(h) for h in hits]
        expected["count"], expected["k"] = len(hits), 10
        assert app.json.dumps(got) == app.json.dumps(expected)


def test_a_route_that_quotes_otherwise_falls_back_to_url_for(app, monkeypatch):
    import webapp.card_urls as mod

    monkeypatch.setattr(mod, "_path_segment", lambda v: str(v))  # "wrong" quoting: the check must catch it
    with app.test_request_context("/"):
        urls = CardUrls.build()
        assert urls.product("a b?") == url_for("pages.product", sku="a b?") == "/products/a%20b%3F"


def test_api_search_answer_unchanged(app):
    """The served answer: every card's URLs as url_for makes them, under a script root too."""
    from tests.conftest import make_image
    import io

    buf = io.BytesIO()
    make_image(3).save(buf, "PNG")
    client = app.test_client()
    r = client.post("/api/v1/search?k=5", data=buf.getvalue(), content_type="application/octet-stream",
                    base_url="http://localhost/shop")
    assert r.status_code == 200
    with app.test_request_context("/", base_url="http://localhost/shop"):
        for card in r.get_json()["results"]:
            assert card["url"] == url_for("pages.product", sku=card["sku"])
            assert card["api_url"] == url_for("api.product", sku=card["sku"])
            assert card["matched_image"]["thumbnail_url"] == url_for("images.image", image_id=card["matched_image"]["id"],
                                                                     size=320)
