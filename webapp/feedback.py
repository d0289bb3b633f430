"""The web edge of the feedback log: each search is logged once its results are ready, and
shoppers' clicks and verdicts (page forms, the card links, POST /api/v1/feedback) are
recorded against its request id. Never stored: IP addresses, cookies, user identifiers; the
photo only when upload retention is on (its file name)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from flask import Blueprint, current_app, g, redirect, request, url_for
from sqlalchemy.exc import SQLAlchemyError

from shopsearch.errors import DuplicateFeedbackError, FeedbackDisabledError, FeedbackError, ShopSearchError
from shopsearch.feedback import FeedbackStore, LoggedEvent, SearchLogEntry, new_request_id
from shopsearch.results import SearchResult
from webapp.service import ServiceHolder

log = logging.getLogger("shopsearch.web")
bp = Blueprint("feedback", __name__)


def holder() -> ServiceHolder:
    return current_app.extensions["shopsearch"]


def logging_on() -> bool:
    return bool(holder().settings.feedback_log)


def log_search(result: SearchResult, kind: str, source: str, options: dict[str, Any],
               regions: Sequence[SearchResult] = ()) -> str | None:
    """Write the search to the log (one small transaction) and return its request id; None
    when logging is off or the write failed: a database that has gone away must not fail a
    search, so the failure is a warning and the shopper still gets the results."""
    if not logging_on() or result.query_vector is None:
        return None
    rid = new_request_id()
    try:
        fingerprint = holder().get().embedder.fingerprint
        entry = SearchLogEntry.from_result(rid, result, fingerprint, kind=kind, source=source, options=options,
                                           regions=regions, photo=g.get("retained_photo"))
        holder().feedback.record_search(entry)
    except (SQLAlchemyError, ShopSearchError, OSError) as e:
        log.warning("search not logged", extra={"error": " ".join(str(e).split())[:300]})
        return None
    return rid


def record(request_id: str, sku: str, event: str) -> LoggedEvent:
    """Record one interaction; FeedbackError subclasses (4xx) when refused, nothing stored."""
    if not logging_on():
        raise FeedbackDisabledError("the feedback log is switched off on this shop (SHOPSEARCH_FEEDBACK_LOG=off)")
    return holder().feedback.record_event(request_id, sku, event)


def store() -> FeedbackStore:
    return holder().feedback


# -- the pages' side: card links, "this is it" / "not this", the logged results page ------
@bp.get("/results/<rid>/click/<path:sku>")
def click(rid: str, sku: str):
    """A result card's link: records the click, then goes to the product page. A click that
    cannot be recorded (unknown request, logging off, clicked before) still navigates."""
    try:
        record(rid, sku, "click")
    except FeedbackError:
        pass
    except (SQLAlchemyError, ShopSearchError) as e:
        log.warning("click not logged", extra={"error": " ".join(str(e).split())[:300]})
    return redirect(url_for("pages.product", sku=sku), 303)


@bp.post("/results/<rid>/feedback")
def verdict(rid: str):
    """The "this is it" / "not this" buttons without JavaScript: record, then back to the
    results (re-shown from the log, the photo never having been stored)."""
    sku, event = request.form.get("sku", ""), request.form.get("event", "")
    if event not in ("confirm", "reject"):
        raise FeedbackError("event must be confirm or reject")
    try:
        record(rid, sku, event)
    except DuplicateFeedbackError:
        pass  # pressing the same button twice is no error for a shopper
    return redirect(url_for("pages.logged_results", rid=rid), 303)
