"""The web edge of the feedback log: each search is logged once its results are ready, and
shoppers' clicks and verdicts (page forms, the card links, POST /api/v1/feedback) are
recorded against its request id. Never stored: IP addresses, cookies, user identifiers; the
photo only when upload retention is on (its file name)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from flask import Blueprint, current_app, g, redirect, request, url_for
from sqlalchemy.exc import SQLAlchemyError

from shopsearch.errors import (DatabaseUnavailableError, DuplicateFeedbackError, FeedbackDisabledError, FeedbackError,
                               ShopSearchError)
from shopsearch.feedback import LoggedEvent, SearchLogEntry, new_request_id
from shopsearch.feedback.records import is_request_id
from shopsearch.results import SearchResult
from webapp.service import ServiceHolder

log = logging.getLogger("shopsearch.web")
bp = Blueprint("feedback", __name__)


def holder() -> ServiceHolder:
    return current_app.extensions["shopsearch"]


def logging_on() -> bool:
    return bool(holder().settings.feedback_log)


def log_search(result: SearchResult, fingerprint: str, kind: str, source: str, options: dict[str, Any],
               regions: Sequence[SearchResult] = ()) -> str | None:
    """Queue the search for the log and return its request id (None when logging is off).
    `fingerprint`: the model of the service that searched (not whichever is loaded by now).
    The write happens on the log's own thread, after the response is on its way: a slow or
    vanished database costs the search nothing (a warning in the log, and feedback on that
    request id is then a 404)."""
    if not logging_on() or result.query_vector is None:
        return None
    rid = new_request_id()
    entry = SearchLogEntry.from_result(rid, result, fingerprint, kind=kind, source=source, options=options,
                                       regions=regions, photo=g.get("retained_photo"))
    return rid if holder().feedback_writer.submit(entry) else None


def record(request_id: str, sku: str, event: str) -> LoggedEvent:
    """Record one interaction; FeedbackError subclasses (4xx) when refused, nothing stored.
    Searches this process has queued are written first, so feedback never overtakes its search."""
    if not logging_on():
        raise FeedbackDisabledError("the feedback log is switched off on this shop (SHOPSEARCH_FEEDBACK_LOG=off)")
    holder().flush_feedback(2.0)
    try:
        return holder().feedback.record_event(request_id, sku, event)
    except SQLAlchemyError as e:
        log.warning("feedback not recorded", extra={"error": " ".join(str(e).split())[:300]})
        raise DatabaseUnavailableError("the feedback log cannot be written just now; please try again") from None


def logged_request(rid: str | None) -> str | None:
    """`rid` when it names a search in the log (the product page's "Back to results" link), else
    None: malformed, unknown (or pruned), logging off, or the log unreadable just now."""
    if not isinstance(rid, str) or not is_request_id(rid) or not logging_on():
        return None
    try:
        return rid if holder().feedback.has_search(rid) else None
    except (ShopSearchError, SQLAlchemyError) as e:  # a page without the link, not an error page
        log.warning("results link not checked", extra={"error": " ".join(str(e).split())[:300]})
        return None


# -- the pages' side: card links and "this is it" / "not this" (pages.logged_results shows them) --
@bp.get("/results/<rid>/click/<path:sku>")
def click(rid: str, sku: str):
    """A result card's link: records the click, then goes to the product page, which links back
    to these results (`results`: the request id, only a well-formed one; the product page shows
    the link only for a search in the log). A click that cannot be recorded (unknown request,
    logging off, clicked before) still navigates."""
    try:
        record(rid, sku, "click")
    except FeedbackError:
        pass
    except ShopSearchError as e:  # the database, not the click: still navigate
        log.warning("click not logged", extra={"error": " ".join(str(e).split())[:300]})
    back = {"results": rid} if is_request_id(rid) else {}
    return redirect(url_for("pages.product", sku=sku, **back), 303)


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
