"""The feedback log (issue 17, point 1) on SQLite and PostgreSQL: the migration, searches
logged through the web app, each feedback event, each refused one (4xx, nothing stored),
logging switched off, a database gone away, and pruning."""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from shopsearch.catalogue import db as dbmod
from shopsearch.feedback import EVENTS, FeedbackStore, LoggedHit, SearchLogEntry, new_request_id
from tests.test_webapp import api_search, app_for, make_site, page_search, photo

TABLES = {"search_log", "search_log_hits", "feedback_events"}


@pytest.fixture
def fb_site(tmp_path, db_url):
    """6 generated products indexed with the FakeEmbedder, the catalogue on SQLite or PostgreSQL."""
    return make_site(tmp_path, n=6, database_url=db_url)


@pytest.fixture
def app(fb_site):
    a = app_for(fb_site)
    yield a
    a.extensions["shopsearch"].close()


def _store(app) -> FeedbackStore:
    """The log, once what the app queued is written (searches are logged on a background thread)."""
    assert app.extensions["shopsearch"].flush_feedback()
    return app.extensions["shopsearch"].feedback


def test_migration_up_and_down(db_url):
    engine = dbmod.connect(db_url)
    try:
        assert dbmod.upgrade(engine) == dbmod.head_revision()
        assert TABLES <= set(inspect(engine).get_table_names())
        dbmod.downgrade(engine, "0002")
        assert not TABLES & set(inspect(engine).get_table_names())
        assert "products" in inspect(engine).get_table_names()  # the catalogue is untouched
        assert dbmod.upgrade(engine) == dbmod.head_revision()
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_api_search_is_logged_with_what_it_showed(app):
    c = app.test_client()
    r = api_search(c, photo(2), k="4", crop="0,0,1,1")
    body = r.get_json()
    rid = body["request_id"]
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", rid)
    logged = _store(app).search(rid)
    svc = app.extensions["shopsearch"].get()
    assert logged.build_id == body["build_id"] and logged.model_fingerprint == svc.embedder.fingerprint
    assert (logged.kind, logged.source, logged.match) == ("image", "api", body["match"])
    assert logged.options["k"] == 4 and logged.options["crop"] == body["crop"]
    assert [(h.rank, h.sku, round(h.score, 6)) for h in logged.hits] == \
        [(i + 1, x["sku"], x["score"]) for i, x in enumerate(body["results"])]
    assert logged.hits[0].sku == "P2"
    # the stored vector is the query's: searching with it again gives the same products
    again = svc.search_vector(_store(app).vector(rid), k=4)
    assert [h.sku for h in again.hits] == [x["sku"] for x in body["results"]]
    assert logged.events == () and _store(app).counts()["searches"] == 1


def test_objects_and_page_searches_are_logged(app):
    c = app.test_client()
    body = api_search(c, photo(1), objects="auto").get_json()
    logged = _store(app).search(body["request_id"])
    assert logged.options["objects"] and {h.region for h in logged.hits} >= {0}
    assert sum(1 for h in logged.hits if h.region > 0) == sum(len(r["results"]) for r in body["regions"])
    html = page_search(c, photo(3)).get_data(as_text=True)
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    page = _store(app).search(rid)
    assert (page.kind, page.source, page.hits[0].sku) == ("image", "page", "P3")
    assert _store(app).counts()["searches"] == 2


def test_text_searches_are_logged_without_their_words(fb_site):
    from tests.conftest import FakeEmbedder, make_image

    class TextFake(FakeEmbedder):
        has_text = True

        def encode_texts(self, texts):
            return self.encode_images([make_image(int(t.split()[-1])) for t in texts])

    app = app_for(fb_site, embedder=TextFake())
    c = app.test_client()
    rid = c.get("/api/v1/search/text", query_string={"q": "photo of product 3"}).get_json()["request_id"]
    html = c.get("/search/text", query_string={"q": "photo of product 4"}).get_data(as_text=True)
    (page_rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    api, page = _store(app).search(rid), _store(app).search(page_rid)
    assert (api.kind, api.source, api.hits[0].sku) == ("text", "api", "P3")
    assert (page.kind, page.source, page.hits[0].sku) == ("text", "page", "P4")
    assert "photo of product" not in repr(api.options) + repr(page.options)
    assert _store(app).confirmed_pairs(kinds=("text",)) == []  # nothing confirmed yet; image pairs by default
    app.extensions["shopsearch"].close()


def test_page_click_and_verdicts_work_without_javascript(app):
    c = app.test_client()
    html = page_search(c, photo(4)).get_data(as_text=True)
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    assert f'href="/results/{rid}/click/P4"' in html and 'value="confirm"' in html and 'value="reject"' in html
    assert 'id="feedback-thanks"' not in c.get(f"/results/{rid}").get_data(as_text=True)  # no answer yet
    r = c.get(f"/results/{rid}/click/P4")
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/products/P4?results={rid}")
    assert c.get(f"/results/{rid}/click/P4").status_code == 303  # a second click still navigates
    r = c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "confirm"})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/results/{rid}")
    shown = c.get(f"/results/{rid}").get_data(as_text=True)
    card = shown[shown.index('data-sku="P4"'):]
    card = card[: card.index("</article>")]
    assert 'value="confirm" class="fb confirm" aria-pressed="true"' in card and 'aria-label="This is it: ' in card
    assert 'id="feedback-thanks"' in shown
    assert c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "confirm"}).status_code == 303  # twice
    c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "reject"})  # changed their mind
    logged = _store(app).search(rid)
    assert [(e.sku, e.event) for e in logged.events] == [("P4", "click"), ("P4", "reject")]  # one verdict
    assert logged.verdicts() == {"P4": "reject"} and logged.confirmed() == set()
    assert c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "purchase"}).status_code == 400


def test_a_verdict_form_posted_from_another_site_is_refused(app):
    c = app.test_client()
    html = page_search(c, photo(4)).get_data(as_text=True)
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    for origin in ("http://evil.example", "null", "http://localhost.evil.example", "http://[::1", "http://[zz]"):
        r = c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "reject"}, headers={"Origin": origin})
        assert r.status_code == 403 and "sent from another website" in r.get_data(as_text=True), origin
    # the shop's own page (the test client's host is localhost), and a client that names no page
    own = c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": "confirm"}, headers={"Origin": "http://localhost"})
    assert own.status_code == 303
    assert c.post(f"/results/{rid}/feedback", data={"sku": "P3", "event": "reject"}).status_code == 303
    assert _store(app).search(rid).verdicts() == {"P4": "confirm", "P3": "reject"}
    # the JSON API is meant for other sites' code: no Origin check there
    r = c.post("/api/v1/feedback", json={"request_id": rid, "sku": "P4", "event": "add_to_cart"},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 201


def test_each_api_event_is_recorded(app):
    c = app.test_client()
    rid = api_search(c, photo(0)).get_json()["request_id"]
    for event in EVENTS:
        r = c.post("/api/v1/feedback", json={"request_id": rid, "sku": "P0", "event": event})
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["recorded"]["event"] == event
    # "reject" replaced the "confirm" before it: one verdict on a product of a search
    assert [e.event for e in _store(app).search(rid).events] == [e for e in EVENTS if e != "confirm"]
    assert _store(app).counts()["events"] == len(EVENTS) - 1


def test_bad_feedback_is_4xx_and_stores_nothing(app):
    c = app.test_client()
    rid = api_search(c, photo(0), k="2").get_json()["request_id"]
    shown = {h.sku for h in _store(app).search(rid).hits}
    unshown = next(f"P{i}" for i in range(6) if f"P{i}" not in shown)
    c.post("/api/v1/feedback", json={"request_id": rid, "sku": "P0", "event": "click"})
    before = _store(app).counts()
    cases = [
        ({"request_id": new_request_id(), "sku": "P0", "event": "click"}, 404, "unknown_request"),
        ({"request_id": "not-an-id", "sku": "P0", "event": "click"}, 400, "invalid_feedback"),
        ({"request_id": rid, "sku": "NO-SUCH-SKU", "event": "click"}, 404, "product_not_found"),
        ({"request_id": rid, "sku": unshown, "event": "click"}, 422, "sku_not_shown"),
        ({"request_id": rid, "sku": "P0", "event": "like"}, 400, "invalid_feedback"),
        ({"request_id": rid, "sku": "P0", "event": "click"}, 409, "duplicate_feedback"),  # replayed
        ({"request_id": rid, "sku": "P0\x00", "event": "click"}, 400, "invalid_feedback"),
        ({"request_id": rid, "sku": 7, "event": "click"}, 400, "invalid_parameter"),
        ({"request_id": rid, "event": "click"}, 400, "invalid_parameter"),
        (["not", "an", "object"], 400, "invalid_parameter"),
    ]
    for body, status, code in cases:
        r = c.post("/api/v1/feedback", json=body)
        assert (r.status_code, r.get_json()["error"]["code"]) == (status, code), body
        assert r.get_json()["error"]["message"]
    r = c.post("/api/v1/feedback", data="request_id=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400
    assert _store(app).counts() == before


BACK = "Back to results"


def test_a_product_reached_from_results_links_back_to_them(app):
    """Shopper probe: a product page opened from a results card offers "Back to results" (the
    page rebuilt from the log), not only the browser's Back, which after a photo's POST may ask
    to send the form again. Only a search in the log gets the link; nothing else is reflected."""
    c = app.test_client()
    html = page_search(c, photo(4)).get_data(as_text=True)
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    r = c.get(f"/results/{rid}/click/P4")
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/products/P4?results={rid}")
    page = c.get(r.headers["Location"]).get_data(as_text=True)
    assert f'<a id="back-to-results" href="/results/{rid}">' in page and BACK in page
    assert c.get(f"/results/{rid}").status_code == 200  # where it leads
    plain = c.get("/products/P4")
    assert plain.status_code == 200 and BACK not in plain.get_data(as_text=True)
    for forged in (new_request_id(), rid.upper(), rid + "0", rid[:-1], "<script>alert(1)</script>", "../admin",
                   f"{rid}/click/P1", "", " " + rid):
        shown = c.get("/products/P4", query_string={"results": forged})
        assert shown.get_data() == plain.get_data(), forged  # unknown or malformed: the page as without it
    for bad in ("not-a-request-id", "A" * 32, new_request_id()[:31] + "g"):  # the click still navigates, no id
        r = c.get(f"/results/{bad}/click/P4")
        assert r.status_code == 303 and r.headers["Location"].endswith("/products/P4"), bad
    assert c.get("/products/P4?results=" + rid + "&results=" + new_request_id()).get_data(as_text=True).count(BACK) == 1


def test_more_like_this_keeps_the_back_link(app):
    """A "more like this" card on a product page reached from results led to a page without
    "Back to results": its link now carries the (checked) request id, and only then."""
    c = app.test_client()
    html = page_search(c, photo(4)).get_data(as_text=True)
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    _store(app)
    page = c.get("/products/P4", query_string={"results": rid}).get_data(as_text=True)
    similar = page.split('id="similar"')[1]
    links = re.findall(r'class="card-link" href="([^"]+)"', similar)
    assert links and all(re.fullmatch(rf"/products/[^?]+\?results={rid}", h) for h in links), links
    target = c.get(links[0]).get_data(as_text=True)
    assert f'<a id="back-to-results" href="/results/{rid}">' in target and BACK in target
    plain = c.get("/products/P4").get_data(as_text=True)
    plain_links = re.findall(r'class="card-link" href="([^"]+)"', plain.split('id="similar"')[1])
    assert plain_links and all(re.fullmatch(r"/products/[^?]+", h) for h in plain_links), plain_links
    forged = c.get("/products/P4", query_string={"results": new_request_id()}).get_data(as_text=True)
    assert forged == plain  # an id not in the log: the links as without it


def test_no_back_link_when_logging_is_off(fb_site, app):
    rid = api_search(app.test_client(), photo(2)).get_json()["request_id"]
    assert _store(app).search(rid)  # logged while logging was on
    off = app_for(replace(fb_site, feedback_log=False))
    try:
        page = off.test_client().get("/products/P2", query_string={"results": rid}).get_data(as_text=True)
        assert BACK not in page  # /results/<rid> would say the results are not kept
    finally:
        off.extensions["shopsearch"].close()


def test_logging_off_stores_nothing_and_search_still_works(fb_site):
    app = app_for(replace(fb_site, feedback_log=False))
    c = app.test_client()
    r = api_search(c, photo(1))
    assert r.status_code == 200 and r.get_json()["request_id"] is None and r.get_json()["results"]
    html = page_search(c, photo(1)).get_data(as_text=True)
    assert "data-request-id" not in html and 'href="/products/P1"' in html
    r = c.post("/api/v1/feedback", json={"request_id": new_request_id(), "sku": "P1", "event": "click"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "feedback_disabled"
    assert c.get(f"/results/{new_request_id()}").status_code == 404
    assert FeedbackStore(app.extensions["shopsearch"].catalogue.engine).counts() == \
        {"searches": 0, "hits": 0, "events": 0}
    app.extensions["shopsearch"].close()


def test_a_database_gone_away_does_not_fail_the_search(app, monkeypatch, caplog):
    def gone(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(_store(app), "record_search", gone)
    c = app.test_client()
    with caplog.at_level(logging.WARNING, logger="shopsearch.feedback"):
        r = api_search(c, photo(5))
        assert app.extensions["shopsearch"].flush_feedback()
    assert r.status_code == 200 and r.get_json()["results"][0]["sku"] == "P5"
    assert any(rec.getMessage() == "search not logged" for rec in caplog.records)
    monkeypatch.undo()
    r = c.post("/api/v1/feedback", json={"request_id": r.get_json()["request_id"], "sku": "P5", "event": "click"})
    assert r.status_code == 404 and _store(app).counts()["searches"] == 0
    rid = api_search(c, photo(5)).get_json()["request_id"]
    assert _store(app).counts()["searches"] == 1  # the writer lives on
    monkeypatch.setattr(_store(app), "record_event", gone)
    r = c.post("/api/v1/feedback", json={"request_id": rid, "sku": "P5", "event": "click"})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "database_unavailable"
    assert c.get(f"/results/{rid}/click/P5").status_code == 303  # the shopper still reaches the product


def test_a_full_log_queue_drops_the_entry_not_the_search(app):
    writer = app.extensions["shopsearch"].feedback_writer
    writer.max_pending = 0
    r = api_search(app.test_client(), photo(1))
    assert r.status_code == 200 and r.get_json()["request_id"] is None and writer.dropped == 1


def test_retained_photo_is_named_in_the_log(fb_site, tmp_path):
    app = app_for(fb_site, RETAIN_UPLOADS=str(tmp_path / "kept"))
    rid = api_search(app.test_client(), photo(2)).get_json()["request_id"]
    (kept,) = (tmp_path / "kept").iterdir()
    from sqlalchemy import select

    from shopsearch.feedback import tables

    assert _store(app).search(rid).hits
    with app.extensions["shopsearch"].catalogue.engine.connect() as conn:
        assert conn.execute(select(tables.searches.c.photo)).scalar() == kept.name
    app.extensions["shopsearch"].close()


def _entry(build: str = "b1", skus=("A", "B", "C"), fingerprint: str = "fp", match: str | None = "strong",
           categories=None, vector=None) -> SearchLogEntry:
    categories = categories or ["Fruit/Apple"] * len(skus)
    vec = np.ones(4, np.float32) / 2 if vector is None else vector
    return SearchLogEntry(new_request_id(), build, "m", fingerprint, "image", "api", vec,
                          tuple(LoggedHit(i + 1, s, i, 1.0 - i / 10, None, categories[i]) for i, s in enumerate(skus)),
                          {}, match, None)


def test_prune_removes_old_searches_only(catalogue):
    store = FeedbackStore(catalogue.engine)
    now = datetime(2026, 11, 29, 12, tzinfo=timezone.utc)
    old, recent = _entry(), _entry()
    store.record_search(old, now=now - timedelta(days=31))
    store.record_search(recent, now=now - timedelta(days=29))
    store.record_event(old.request_id, "A", "click", now=now - timedelta(days=31))
    store.record_event(recent.request_id, "B", "confirm", now=now - timedelta(days=29))
    assert store.prune(30, now=now) == 1
    assert store.counts() == {"searches": 1, "hits": 3, "events": 1}
    assert [e.event for e in store.search(recent.request_id).events] == ["confirm"]
    with pytest.raises(Exception, match="no logged search"):
        store.search(old.request_id)
    assert store.prune(30, now=now) == 0


def test_confirmed_pairs_for_the_adapter(catalogue):
    store = FeedbackStore(catalogue.engine)
    a, b, other = _entry(), _entry(), _entry(fingerprint="other")
    for e in (a, b, other):
        store.record_search(e)
    store.record_event(a.request_id, "B", "confirm")
    store.record_event(b.request_id, "A", "confirm")
    store.record_event(b.request_id, "A", "reject")  # taken back
    store.record_event(other.request_id, "C", "confirm")
    pairs = store.confirmed_pairs(model_fingerprint="fp")
    assert [(p.request_id, p.sku, p.rank) for p in pairs] == [(a.request_id, "B", 2)]
    assert pairs[0].vector.dtype == np.float32 and np.allclose(pairs[0].vector, 0.5)
    assert len(store.confirmed_pairs()) == 2 and store.fingerprints() == {"fp": 2, "other": 1}
    assert store.confirmed_pairs(since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
