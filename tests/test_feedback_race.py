"""Attacker/shopper probe fix: "this is it" / "not this" sent at the same moment for one product
of one search (a double tap, two tabs, a script) end as they would one after the other: exactly
one verdict stands, and each request gets the answer it would get in some sequential order
(recorded, or a 409 "already recorded" for the verdict that stands). The store locks the search
while it checks and writes; migration 0008's unique index holds one verdict per product of a
search whoever writes. Runs on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from shopsearch.catalogue import db as dbmod
from shopsearch.errors import DuplicateFeedbackError
from shopsearch.feedback import FeedbackStore
from shopsearch.feedback import tables as t
from tests.test_feedback import _entry, _store, app, fb_site  # noqa: F401 - fixtures
from tests.test_webapp import api_search, photo

THREADS = 12
EVENTS = ["confirm" if i % 2 else "reject" for i in range(THREADS)]


def _at_once(n: int, fn) -> list:
    """Run fn(i) on n threads released together; each one's return value or exception."""
    gate = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the outcome is what the test looks at
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return out


def _verdicts(store: FeedbackStore, rid: str) -> list[tuple[str, str]]:
    return [(e.sku, e.event) for e in store.search(rid).events if e.event in ("confirm", "reject")]


def _as_if_one_after_another(recorded: Counter, stands: list[tuple[str, str]]) -> None:
    """One after the other, a verdict is recorded when it differs from the one standing (else a
    409): the recorded ones alternate, so both kinds are recorded at least once (both were sent),
    their counts differ by one at most, and the last one recorded is the one that stands."""
    assert len(stands) == 1, stands
    assert recorded["confirm"] >= 1 and recorded["reject"] >= 1, recorded
    assert abs(recorded["confirm"] - recorded["reject"]) <= 1, recorded
    if recorded["confirm"] != recorded["reject"]:
        assert stands[0][1] == recorded.most_common(1)[0][0], (recorded, stands)


def test_conflicting_verdicts_at_once_leave_one(catalogue):
    store = FeedbackStore(catalogue.engine)
    for _ in range(4):  # a race may be won by luck once: several rounds
        entry = _entry()
        store.record_search(entry)
        out = _at_once(THREADS, lambda i: store.record_event(entry.request_id, "A", EVENTS[i]))
        assert all(not isinstance(o, Exception) or isinstance(o, DuplicateFeedbackError) for o in out), out
        stands = _verdicts(store, entry.request_id)
        _as_if_one_after_another(Counter(o.event for o in out if not isinstance(o, Exception)), stands)
        # and one after the other, as before: the same again is refused, the other one replaces it
        other = "reject" if stands[0][1] == "confirm" else "confirm"
        with pytest.raises(DuplicateFeedbackError):
            store.record_event(entry.request_id, "A", stands[0][1])
        store.record_event(entry.request_id, "A", other)
        assert _verdicts(store, entry.request_id) == [("A", other)]


def test_verdicts_on_different_products_at_once_each_keep_one(catalogue):
    store = FeedbackStore(catalogue.engine)
    entry = _entry()
    store.record_search(entry)
    jobs = [(sku, ev) for sku in ("A", "B", "C") for ev in ("confirm", "reject", "confirm", "reject")]
    out = _at_once(len(jobs), lambda i: store.record_event(entry.request_id, *jobs[i]))
    assert all(not isinstance(o, Exception) or isinstance(o, DuplicateFeedbackError) for o in out), out
    assert sorted(sku for sku, _ in _verdicts(store, entry.request_id)) == ["A", "B", "C"]


def test_the_database_itself_refuses_a_second_verdict_on_a_product(catalogue):
    """Whoever writes the log (another tool, an older worker): one verdict per product of a search."""
    store = FeedbackStore(catalogue.engine)
    entry = _entry()
    store.record_search(entry)
    store.record_event(entry.request_id, "A", "confirm")
    store.record_event(entry.request_id, "B", "confirm")  # another product has its own
    store.record_event(entry.request_id, "A", "click")  # other events are no verdict
    ts = store.search(entry.request_id).events[0].created_at
    with catalogue.engine.connect() as conn:
        sid = conn.execute(select(t.searches.c.id).where(t.searches.c.request_id == entry.request_id)).scalar()
    with pytest.raises(IntegrityError), catalogue.engine.begin() as conn:
        conn.execute(insert(t.events).values(search_id=sid, sku="A", event="reject", created_at=ts))


def test_upgrade_settles_verdicts_a_race_left_behind(db_url):
    engine = dbmod.connect(db_url)
    try:
        dbmod.upgrade(engine, "0007")
        store = FeedbackStore(engine)
        entry = _entry()
        store.record_search(entry)
        rows = [("A", "confirm"), ("A", "click"), ("A", "reject"), ("B", "reject"), ("B", "confirm")]
        with engine.begin() as conn:
            sid = conn.execute(select(t.searches.c.id)).scalar()
            for sku, event in rows:
                conn.execute(text("INSERT INTO feedback_events (search_id, sku, event, created_at) "
                                  "VALUES (:s, :k, :e, CURRENT_TIMESTAMP)"), {"s": sid, "k": sku, "e": event})
        assert dbmod.upgrade(engine) == dbmod.head_revision()
        events = [(e.sku, e.event) for e in store.search(entry.request_id).events]
        assert events == [("A", "click"), ("A", "reject"), ("B", "confirm")]  # the latest verdict stays
        dbmod.downgrade(engine, "0007")
        assert dbmod.upgrade(engine) == dbmod.head_revision()
    finally:
        engine.dispose()


def test_api_verdicts_posted_at_once_end_as_one_after_another(app):
    c = app.test_client()
    rid = api_search(c, photo(0)).get_json()["request_id"]
    _store(app)

    def post(i: int):
        r = app.test_client().post("/api/v1/feedback", json={"request_id": rid, "sku": "P0", "event": EVENTS[i]})
        return EVENTS[i], r.status_code, (r.get_json().get("error") or {}).get("code")

    out = _at_once(THREADS, post)
    assert {(status, code) for _, status, code in out} <= {(201, None), (409, "duplicate_feedback")}, out
    _as_if_one_after_another(Counter(ev for ev, status, _ in out if status == 201), _verdicts(_store(app), rid))
