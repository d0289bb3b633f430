"""Security probe fix: a results page's posted-back query vectors (`qv`, each found object's
`region`) are signed by the server, so a client cannot have a made-up vector searched and logged
as a shopper's photo (and then confirm what it showed, to train the adapter); a page's re-run
(filters, "Show more") is logged as kind "refine", linked to its photo search, which adapter
training and centring skip; "this is it" and "not this" on one product of one search exclude
each other. Runs on SQLite and PostgreSQL (the feedback log's store)."""
from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from shopsearch.errors import ConfigError
from tests.test_feedback import _store, app, fb_site  # noqa: F401 - fixtures
from tests.test_webapp import app_for, page_search, photo
from tests.test_webapp_pages_state import forms, post_form
from webapp.signing import EXPIRED, KEY_FILE, ExpiredQueryError, Signer, load_key


def _rid(html: str) -> str:
    (rid,) = set(re.findall(r'data-request-id="([0-9a-f]{32})"', html))
    return rid


def _random_qv(dim: int = 48, seed: int = 0) -> str:
    vec = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    return base64.urlsafe_b64encode(vec.tobytes()).decode()


def _searches(app) -> int:
    return _store(app).counts()["searches"]


def test_a_forged_query_vector_is_refused_and_nothing_is_logged(app):
    c = app.test_client()
    genuine = page_search(c, photo(2)).get_data(as_text=True)
    qv = forms(genuine)["filter-form"]
    token = dict(qv)["qv"]
    signed, tag = token.rsplit("~", 1)
    before = _searches(app)
    forged = [
        _random_qv(),  # no signature at all: the probe's request
        f"{_random_qv()}~~{signed.rsplit('~', 1)[1]}~{tag}",  # another vector under a genuine page's tag
        f"{signed}~{'A' * len(tag)}",  # the genuine vector, a made-up tag
        f"{signed}~",  # the tag cut off
        f"{signed[:-1]}{'0' if signed[-1] != '0' else '1'}~{tag}",  # the issue time moved
        token.replace("~", "~0", 1),  # a request id slipped in
    ]
    for bad in forged:
        r = post_form(c, qv, qv=bad)
        html = r.get_data(as_text=True)
        assert r.status_code == 400, bad
        assert "These results have expired" in html and "upload the photo again" in html and "Traceback" not in html
    assert _searches(app) == before  # nothing logged: no row for training or centring to read


def test_a_forged_region_is_refused_before_anything_is_searched_or_logged(app):
    c = app.test_client()
    genuine = page_search(c, photo(1), objects="auto").get_data(as_text=True)
    fields = forms(genuine)["filter-form"]
    regions = [v for n, v in fields if n == "region"]
    assert regions and all(v.count("~") == 2 for v in regions)  # each object's vector is signed too
    box, flat, _vec = regions[0].rsplit("~", 2)[0].split("|")
    before = _searches(app)
    for bad in (f"{box}|{flat}|{_random_qv()}", f"{box}|{flat}|{_random_qv()}~{regions[0].split('~', 1)[1]}",
                f"0,0,1,1|{flat}|{_vec}~{regions[0].split('~', 1)[1]}"):  # a genuine vector on another box
        r = post_form(c, [(n, v) for n, v in fields if n != "region"] + [("region", bad)])
        assert r.status_code == 400 and "These results have expired" in r.get_data(as_text=True)
    assert _searches(app) == before


def test_a_genuine_filter_form_reruns_linked_to_its_photo_search_and_trains_nothing(app):
    c = app.test_client()
    first = page_search(c, photo(3)).get_data(as_text=True)
    rid = _rid(first)
    refined = post_form(c, forms(first)["filter-form"], min_price="2", max_price="9", k="2")
    html = refined.get_data(as_text=True)
    assert refined.status_code == 200 and 'data-sku="P3"' in html
    # "Show more" from the refined page: a re-run of a re-run still names the photo search
    more = post_form(c, forms(html)["more-form"])
    assert more.status_code == 200 and 'data-sku="P3"' in more.get_data(as_text=True)
    store = _store(app)
    refine_ids = [_rid(html), _rid(more.get_data(as_text=True))]
    photo_search = store.search(rid)
    assert (photo_search.kind, photo_search.options["new_photo"]) == ("image", True)
    for r in refine_ids:
        logged = store.search(r)
        assert (logged.kind, logged.source, logged.options["refines"]) == ("refine", "page", rid)
    # feedback works on the refined page, and on the photo search's own page
    assert c.post(f"/results/{refine_ids[0]}/feedback", data={"sku": "P3", "event": "confirm"}).status_code == 303
    assert c.post(f"/results/{rid}/feedback", data={"sku": "P3", "event": "confirm"}).status_code == 303
    assert store.search(refine_ids[0]).verdicts() == {"P3": "confirm"}
    # what trains the adapter and fits centring sees one shopper photo, not three
    fingerprint = app.extensions["shopsearch"].get().embedder.fingerprint
    assert [p.request_id for p in store.confirmed_pairs(model_fingerprint=fingerprint)] == [rid]
    assert store.query_vectors(fingerprint).shape == (1, 48)
    assert store.counts()["searches"] == 3  # all three kept for the pages and analysts


def test_confirm_then_reject_leaves_one_verdict_on_the_page_and_the_api(app):
    c = app.test_client()
    rid = _rid(page_search(c, photo(4)).get_data(as_text=True))
    for event in ("confirm", "reject", "confirm", "reject"):
        assert c.post(f"/results/{rid}/feedback", data={"sku": "P4", "event": event}).status_code == 303
        logged = _store(app).search(rid)
        assert [e.event for e in logged.events] == [event] and logged.verdicts() == {"P4": event}
    assert _store(app).confirmed_pairs() == []  # the last word was "not this"
    api = "/api/v1/feedback"
    assert c.post(api, json={"request_id": rid, "sku": "P4", "event": "confirm"}).status_code == 201
    assert c.post(api, json={"request_id": rid, "sku": "P4", "event": "confirm"}).status_code == 409  # same again
    assert c.post(api, json={"request_id": rid, "sku": "P4", "event": "click"}).status_code == 201
    assert c.post(api, json={"request_id": rid, "sku": "P4", "event": "reject"}).status_code == 201
    logged = _store(app).search(rid)
    assert sorted(e.event for e in logged.events) == ["click", "reject"] and logged.confirmed() == set()


def test_workers_of_one_data_dir_share_the_key_and_it_is_private(fb_site):
    """gunicorn's workers each create the app: a page one rendered must post back to another."""
    one, two = app_for(fb_site), app_for(fb_site)
    try:
        html = page_search(one.test_client(), photo(5)).get_data(as_text=True)
        r = post_form(two.test_client(), forms(html)["filter-form"], k="3")
        assert r.status_code == 200 and 'data-sku="P5"' in r.get_data(as_text=True)
        key = fb_site.data_dir / KEY_FILE
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(key.read_bytes().strip()) == 64
        # a configured key (SHOPSEARCH_SECRET_KEY) is used instead: the other key's pages are refused
        three = app_for(fb_site, SECRET_KEY="an operator's key of some length")
        try:
            again = post_form(three.test_client(), forms(html)["filter-form"], k="3")
            assert again.status_code == 400 and "These results have expired" in again.get_data(as_text=True)
        finally:
            three.extensions["shopsearch"].close()
    finally:
        one.extensions["shopsearch"].close()
        two.extensions["shopsearch"].close()


def test_a_signature_covers_its_kind_exact_text_and_age():
    s = Signer(b"k" * 32, max_age_s=3600)
    token = s.seal("qv", "AAAA~", now=1_000_000)
    assert s.open("qv", token, now=1_000_000 + 3599) == "AAAA~"
    assert len(token) - len("AAAA~") < 40  # small: the hex time and a 128-bit tag
    for kind, text, now in (("region", token, 1_000_000),  # a qv is no region
                            ("qv", token, 1_000_000 + 3601),  # too old
                            ("qv", token, 1_000_000 - 3600),  # from the future
                            ("qv", "AAAB" + token[4:], 1_000_000),
                            ("qv", None, 1_000_000), ("qv", "", 1_000_000), ("qv", "~~", 1_000_000)):
        with pytest.raises(ExpiredQueryError, match="expired"):
            s.open(kind, text, now=now)
    assert Signer(b"j" * 32).seal("qv", "AAAA~", now=1_000_000) != token
    with pytest.raises(ConfigError, match="SHOPSEARCH_SECRET_KEY"):
        load_key({"SECRET_KEY": "short"}, Path("/nonexistent"))
    assert EXPIRED.startswith("These results have expired")
