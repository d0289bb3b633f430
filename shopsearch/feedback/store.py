"""FeedbackStore: writes the feedback log (searches, what they showed, what shoppers did) and
reads it back for analysts and training. It shares the catalogue's database and engine."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Iterable

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from shopsearch.catalogue.models import Product
from shopsearch.errors import (DuplicateFeedbackError, FeedbackError, ProductNotFoundError, SkuNotShownError,
                               UnknownRequestError)
from shopsearch.feedback import tables as t
from shopsearch.feedback.records import (EVENTS, VERDICTS, ConfirmedPair, LoggedEvent, LoggedHit, LoggedSearch,
                                         SearchLogEntry, is_request_id)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _utc(ts: datetime) -> datetime:
    """A bound in UTC (naive means UTC): SQLite compares the stored text, so the zone must agree."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC): make every timestamp comparable."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


class FeedbackStore:
    """The feedback log over an engine whose schema is at the head revision (0003 or later)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- writing ----------------------------------------------------------------
    def record_search(self, entry: SearchLogEntry, now: datetime | None = None) -> None:
        """One small transaction: the search row and the products it showed."""
        vec = np.ascontiguousarray(entry.vector, dtype="<f4").ravel()
        with self.engine.begin() as conn:
            search_id = conn.execute(insert(t.searches).values(
                request_id=entry.request_id, created_at=_utc(now or _utcnow()), build_id=entry.build_id,
                model_name=entry.model_name, model_fingerprint=entry.model_fingerprint, kind=entry.kind,
                source=entry.source, dim=int(vec.size), query_vector=vec.tobytes(), options=entry.options,
                match=entry.match, confidence=entry.confidence, photo=entry.photo)).inserted_primary_key[0]
            if entry.hits:
                conn.execute(insert(t.hits), [
                    {"search_id": search_id, "region": h.region, "rank": h.rank, "sku": h.sku,
                     "image_id": h.image_id, "score": h.score, "calibrated": h.calibrated, "category": h.category}
                    for h in entry.hits])

    def record_event(self, request_id: str, sku: str, event: str, now: datetime | None = None) -> LoggedEvent:
        """Record a shopper's interaction with a logged search. Refused (FeedbackError, nothing
        stored): a malformed or unknown request id, an event not in EVENTS, a SKU the catalogue
        does not have or that this search did not show, and the same event on the same product
        of the same search a second time. A verdict ("confirm" / "reject") replaces the other one
        on that product of that search: one verdict each, the latest. Feedback on one search is
        recorded one request at a time (its row is locked first), so verdicts sent at the same
        moment end as they would one after the other; the database's unique index (migration
        0008) holds one verdict per product of a search whoever writes."""
        if event not in EVENTS:
            raise FeedbackError(f"event must be one of {', '.join(EVENTS)}, not {str(event)[:40]!r}")
        if not isinstance(request_id, str) or not is_request_id(request_id):
            raise FeedbackError("request_id must be the 32 hex digits a search returned")
        if not isinstance(sku, str) or not sku or len(sku) > 200 or "\x00" in sku:  # PostgreSQL refuses NUL
            raise FeedbackError("sku must be a product SKU (1 to 200 characters)")
        with self.engine.begin() as conn:
            search_id = self._lock_search(conn, request_id)
            if search_id is None:
                raise UnknownRequestError(f"no logged search has request id {request_id} (unknown, or older than "
                                          f"the log's retention)")
            shown = conn.execute(select(t.hits.c.id).where(t.hits.c.search_id == search_id, t.hits.c.sku == sku)
                                 .limit(1)).first()
            if shown is None:
                self._unshown(conn, sku, request_id)
            seen = conn.execute(select(t.events.c.id).where(t.events.c.search_id == search_id, t.events.c.sku == sku,
                                                            t.events.c.event == event)).first()
            if seen is not None:
                raise DuplicateFeedbackError(f"{event} on {sku!r} was already recorded for request {request_id}")
            if event in VERDICTS:  # the shopper changed their mind: the earlier verdict goes
                conn.execute(delete(t.events).where(t.events.c.search_id == search_id, t.events.c.sku == sku,
                                                    t.events.c.event.in_(VERDICTS)))
            ts = _utc(now or _utcnow())
            try:
                conn.execute(insert(t.events).values(search_id=search_id, sku=sku, event=event, created_at=ts))
            except IntegrityError:  # written past the lock (another tool): the database's constraints hold
                raise DuplicateFeedbackError(f"{event} on {sku!r} was already recorded for request "
                                             f"{request_id}") from None
        return LoggedEvent(sku, event, ts)

    @staticmethod
    def _lock_search(conn: Connection, request_id: str) -> int | None:
        """The search's id, its row locked until the transaction ends (None: no such search).
        SQLite locks the whole database for writing (BEGIN IMMEDIATE: pysqlite would otherwise
        open the transaction only at the first write, after the checks); PostgreSQL the row (FOR NO
        KEY UPDATE: feedback on it waits, rows that merely reference it do not)."""
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        q = select(t.searches.c.id).where(t.searches.c.request_id == request_id).with_for_update(key_share=True)
        return conn.execute(q).scalar()

    @staticmethod
    def _unshown(conn: Connection, sku: str, request_id: str) -> None:
        exists = conn.execute(select(Product.id).where(Product.sku == sku)).first()
        if exists is None:
            raise ProductNotFoundError(f"no product with SKU {sku!r}")
        raise SkuNotShownError(f"product {sku!r} was not among the results of request {request_id}; feedback is "
                               f"about the products a search showed")

    def prune(self, days: int, now: datetime | None = None) -> int:
        """Delete searches older than `days` days, with their products and feedback; returns how many."""
        if days < 1:
            raise FeedbackError(f"the retention must be at least 1 day, not {days}")
        cutoff = _utc(now or _utcnow()) - timedelta(days=days)
        old = select(t.searches.c.id).where(t.searches.c.created_at < cutoff).scalar_subquery()
        with self.engine.begin() as conn:
            # children first: SQLite only cascades with foreign keys on, and other tools may connect without
            conn.execute(delete(t.events).where(t.events.c.search_id.in_(old)))
            conn.execute(delete(t.hits).where(t.hits.c.search_id.in_(old)))
            return conn.execute(delete(t.searches).where(t.searches.c.created_at < cutoff)).rowcount

    # -- reading ----------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Rows per table: searches, hits, events."""
        with self.engine.connect() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
                    for name, table in (("searches", t.searches), ("hits", t.hits), ("events", t.events))}

    def search(self, request_id: str) -> LoggedSearch:
        """One logged search, with its products and feedback; UnknownRequestError when absent."""
        if is_request_id(request_id):
            found = self._searches(t.searches.c.request_id == request_id)
            if found:
                return found[0][0]
        raise UnknownRequestError(f"no logged search has request id {request_id[:40]!r}")

    def has_search(self, request_id: str) -> bool:
        """Whether the log holds a search with this request id (a cheap check: no hits read)."""
        if not is_request_id(request_id):
            return False
        with self.engine.connect() as conn:
            q = select(t.searches.c.id).where(t.searches.c.request_id == request_id).limit(1)
            return conn.execute(q).first() is not None

    def vector(self, request_id: str) -> np.ndarray:
        """The query vector a logged search was made with (float32, as searched)."""
        with self.engine.connect() as conn:
            raw = conn.execute(select(t.searches.c.query_vector).where(t.searches.c.request_id == request_id)).scalar()
        if raw is None:
            raise UnknownRequestError(f"no logged search has request id {request_id[:40]!r}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def searches(self, since: datetime | None = None) -> list[LoggedSearch]:
        """Every logged search since `since` (all when None), oldest first."""
        return [s for s, _ in self._searches(None if since is None else t.searches.c.created_at >= _utc(since))]

    def confirmed_pairs(self, since: datetime | None = None, model_fingerprint: str | None = None,
                        kinds: Iterable[str] = ("image",)) -> list[ConfirmedPair]:
        """(query vector, product) pairs whose product the shopper confirmed ("this is it", not
        taken back by a later "not this"), from image searches by default. Only products of the
        main list count: a found object's products were searched with the object's vector,
        which is not stored."""
        cond = t.searches.c.kind.in_(tuple(kinds))
        if since is not None:
            cond = cond & (t.searches.c.created_at >= _utc(since))
        if model_fingerprint is not None:
            cond = cond & (t.searches.c.model_fingerprint == model_fingerprint)
        pairs = []
        for s, vec in self._searches(cond):
            main = {h.sku: h for h in s.hits if h.region == 0}
            for sku in sorted(s.confirmed() & main.keys()):
                pairs.append(ConfirmedPair(s.request_id, s.created_at, s.build_id, s.model_fingerprint, s.kind, sku,
                                           main[sku].rank, main[sku].category, vec))
        return pairs

    def query_vectors(self, model_fingerprint: str, kinds: Iterable[str] = ("image",), limit: int = 5000
                      ) -> np.ndarray:
        """The latest `limit` query vectors logged for searches with this model (no feedback
        needed): an unlabelled sample of what shoppers photograph (shopsearch.centring)."""
        cond = t.searches.c.kind.in_(tuple(kinds)) & (t.searches.c.model_fingerprint == model_fingerprint)
        q = select(t.searches.c.query_vector).where(cond).order_by(t.searches.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [np.frombuffer(r, dtype="<f4") for (r,) in conn.execute(q)]
        dims = {len(r) for r in rows}
        return np.stack(rows).astype(np.float32) if rows and len(dims) == 1 else np.zeros((0, 0), np.float32)

    def fingerprints(self, since: datetime | None = None) -> dict[str, int]:
        """model fingerprint -> searches logged with it."""
        q = select(t.searches.c.model_fingerprint, func.count()).group_by(t.searches.c.model_fingerprint)
        if since is not None:
            q = q.where(t.searches.c.created_at >= _utc(since))
        with self.engine.connect() as conn:
            return {fp: int(n) for fp, n in conn.execute(q)}

    def _searches(self, cond) -> list[tuple[LoggedSearch, np.ndarray]]:
        q = select(t.searches).order_by(t.searches.c.id)
        if cond is not None:
            q = q.where(cond)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            ids = select(t.searches.c.id) if cond is None else select(t.searches.c.id).where(cond)
            shown: dict[int, list[LoggedHit]] = defaultdict(list)
            for h in conn.execute(select(t.hits).where(t.hits.c.search_id.in_(ids))
                                  .order_by(t.hits.c.search_id, t.hits.c.region, t.hits.c.rank)):
                shown[h.search_id].append(LoggedHit(h.rank, h.sku, int(h.image_id), h.score, h.calibrated,
                                                    h.category, h.region))
            done: dict[int, list[LoggedEvent]] = defaultdict(list)
            for e in conn.execute(select(t.events).where(t.events.c.search_id.in_(ids)).order_by(t.events.c.id)):
                done[e.search_id].append(LoggedEvent(e.sku, e.event, _aware(e.created_at)))
        return [(LoggedSearch(r.request_id, _aware(r.created_at), r.build_id, r.model_name, r.model_fingerprint,
                              r.kind, r.source, dict(r.options or {}), r.match, r.confidence,
                              tuple(shown[r.id]), tuple(done[r.id])),
                 np.frombuffer(r.query_vector, dtype="<f4").astype(np.float32))
                for r in rows]
