"""The HTTP edge: ShopSearchError subclasses, HTTP errors and crashes become JSON under
/api/ and friendly pages elsewhere. Never a traceback."""
from __future__ import annotations

import logging
import re
from pathlib import PurePath
from typing import Any, Callable

from flask import Flask, Response, current_app, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shopsearch.errors import ShopSearchError

log = logging.getLogger("shopsearch.web")


class BadParameterError(ShopSearchError):
    """A query or form parameter is malformed (k, prices, ...)."""

    code = "invalid_parameter"
    http_status = 400


class MissingImageError(ShopSearchError):
    code = "missing_image"
    http_status = 400


class ServerBusyError(ShopSearchError):
    """Every search slot of the worker is taken and its queue full, or a slot did not free within the
    gate's wait (webapp/search_gate.py)."""

    code = "busy"
    http_status = 503
    retry_after_s = 2


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _max_mb() -> str:
    return f"{current_app.config['MAX_CONTENT_LENGTH'] / (1024 * 1024):g} MB"


#: an absolute file path inside a message (two levels at least, so "/api/v1"-like routes in
#: HTTP errors are not touched: those do not go through public_message)
#: a server path in a message; the API's own routes (/api/v1/...) are no secret
_ABS_PATH = re.compile(r"(?<![\w:/.])/(?!api/)(?:[^\s/'\"]+/)+[^\s/'\":,;)]*")


def public_message(e: ShopSearchError) -> str:
    """What an anonymous client may read: no server paths; a 500's detail stays in the log."""
    if e.http_status == 500:
        return "Something went wrong on our side. Please try again."
    return _ABS_PATH.sub(lambda m: PurePath(m.group()).name or "(path)", str(e))


def _drain_body() -> None:
    """Read what is left of the request's body before answering an error raised ahead of it (a busy
    gate, a bad parameter): a worker that answers and closes with an upload still unread resets
    the connection, which the proxy in front reports as a 502 instead of this answer."""
    try:
        stream = request.stream
        while stream.read(1 << 16):
            pass
    except Exception:  # noqa: BLE001 - a body over the limit or a client gone: nothing left to save
        pass


def error_response(status: int, code: str, message: str) -> Response | tuple:
    if _is_api():
        resp = jsonify({"error": {"code": code, "message": message}})
        resp.status_code = status
        return resp
    # Upload failures go back to the upload form with the message, so the shopper can retry.
    template = "index.html" if request.endpoint == "pages.search" and status in (400, 413, 415) else "error.html"
    ctx = current_app.extensions["shopsearch_form_context"]() if template == "index.html" else {}
    return render_template(template, error=message, status=status, code=code, **ctx), status


def register_error_handlers(app: Flask, form_context: Callable[[], dict[str, Any]]) -> None:
    """JSON errors for the API, pages for the rest; `form_context` (the pages' upload form
    context) lets a failed upload re-show the form with its message."""
    app.extensions["shopsearch_form_context"] = form_context

    @app.errorhandler(ShopSearchError)
    def _domain(e: ShopSearchError):
        _drain_body()
        if isinstance(e, ServerBusyError):  # overload, not a failure: logged where it happened
            resp = make_response(error_response(e.http_status, e.code, str(e)))
            resp.headers["Retry-After"] = str(e.retry_after_s)
            return resp
        if e.http_status >= 500:
            log.error("request failed", extra={"path": request.path, "code": e.code, "error": str(e)})
        return error_response(e.http_status, e.code, public_message(e))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e: RequestEntityTooLarge):
        length, limit = request.content_length, current_app.config["MAX_CONTENT_LENGTH"]
        if length is not None and limit is not None and length <= limit:  # werkzeug's form limits, not the size
            cfg = current_app.config
            return error_response(413, "form_too_large",
                                  f"The form has too many fields (at most {cfg['MAX_FORM_PARTS']}) or a text field "
                                  f"over {cfg['MAX_FORM_MEMORY_SIZE'] // 1000} KB.")
        return error_response(413, "payload_too_large", f"The upload is larger than the {_max_mb()} limit.")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        code = (e.name or "error").lower().replace(" ", "_").replace("'", "")
        message = e.description or e.name
        if e.code == 404:
            message = "There is nothing at this address." if not _is_api() else f"no route {request.path}"
        resp = error_response(e.code or 500, code, message)
        if e.code == 405 and isinstance(resp, Response):
            resp.headers["Allow"] = ", ".join(e.valid_methods or ())
        return resp

    @app.errorhandler(Exception)
    def _crash(e: Exception):
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return error_response(500, "internal_error", "Something went wrong on our side. Please try again.")
