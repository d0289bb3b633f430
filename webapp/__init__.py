"""The shoppers' web app: upload pages and the /api/v1 JSON API.

    create_app()                      # config from SHOPSEARCH_* env
    create_app({"SETTINGS": s})       # explicit settings (tests, `shopsearch serve`)
    create_app(cfg, ServiceOverrides(search_service=svc))   # a prebuilt SearchService (tests)
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

from flask import Flask, g, request
from werkzeug.exceptions import Forbidden

from shopsearch.config import Settings, available_cpus, threads_pinned
from shopsearch.errors import ShopSearchError
from shopsearch.query_threads import QueryThreads
from webapp import cors
from webapp.config import load_config
from webapp.search_gate import SearchGate
from webapp.service import ServiceHolder, ServiceOverrides
from webapp.signing import Signer, load_key
from webapp.thumbs import ThumbCache
from webapp.uploads import InMemoryRequest, close_request_images

log = logging.getLogger("shopsearch.web")

#: a strict policy: no external CDN, no inline script
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def create_app(test_config: Mapping[str, Any] | None = None, services: ServiceOverrides | None = None) -> Flask:
    """Application factory: defaults, then SHOPSEARCH_* env vars, then `test_config`.
    `services` (tests) supplies a prebuilt SearchService, or an embedder/router to pair with
    the on-disk index, instead of those the settings name."""
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    # "//" in a path is a 404, not a redirect whose absolute Location echoes the Host header
    app.url_map.merge_slashes = False
    load_config(app, test_config)
    cfg = app.config
    holder = ServiceHolder(cfg["SETTINGS"], model=cfg["MODEL"], reload_check_s=float(cfg["RELOAD_CHECK_S"]),
                           overrides=services, migrate=bool(cfg["MIGRATE"]),
                           query_threads=_query_threads(cfg["QUERY_THREADS"], cfg["SETTINGS"]))
    app.extensions["shopsearch"] = holder
    app.extensions["shopsearch_thumbs"] = ThumbCache(cfg["THUMB_DIR"], cfg["IMAGE_ROOTS"])
    app.extensions["shopsearch_signer"] = Signer(load_key(cfg, cfg["SETTINGS"].data_dir),
                                                 float(cfg["PAGE_QUERY_MAX_AGE_S"]))
    app.extensions["shopsearch_gate"] = SearchGate(int(cfg["SEARCH_SLOTS"]), float(cfg["SEARCH_WAIT_S"]),
                                                   cfg["SEARCH_MAX_WAITING"])

    from webapp import api, feedback, health, images, pages  # noqa: PLC0415 - blueprints import current_app helpers
    from webapp.errors import register_error_handlers  # noqa: PLC0415

    app.register_blueprint(pages.bp)
    app.register_blueprint(feedback.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(health.bp, url_prefix="/api/v1")
    app.register_blueprint(health.bp, name="health_root")  # /healthz, /readyz: where probes usually look
    register_error_handlers(app, pages.index_context)
    if cfg["METRICS"]:
        from webapp import metrics  # noqa: PLC0415

        metrics.init_app(app)
    app.teardown_request(close_request_images)
    app.before_request(_start_timer)
    app.before_request(_refuse_cross_site_forms)
    cors.init_app(app)
    app.after_request(_finish)

    if cfg["EAGER_LOAD"]:
        try:
            holder.get()  # model + index once per process, before any fork when preloading
        except ShopSearchError as e:
            log.warning("serving without an index for now", extra={"error": str(e), "code": e.code})
    return app


def _query_threads(value: Any, settings: Settings) -> QueryThreads | None:
    """The server's QueryThreads as given, else one for this process alone where the settings ask
    for adaptive threads (None: "off", the default fixed threads, or threads the operator fixed)."""
    if isinstance(value, QueryThreads):
        return value
    if value == "off" or settings.query_threads != "adaptive" or settings.torch_threads or threads_pinned():
        return None
    return QueryThreads(available_cpus())


def _start_timer() -> None:
    g.t0 = time.perf_counter()


def _refuse_cross_site_forms() -> None:
    """A page form posted from another site (the "this is it" / "not this" verdicts, a search) is
    refused: browsers name the page a form came from in `Origin`, and ours are same-origin. The
    JSON API is for other sites' code too, and a client without Origin (curl, scripts) is no
    browser a page could drive."""
    if request.method != "POST" or request.path.startswith("/api/"):
        return
    origin = request.headers.get("Origin")
    if origin is None:
        return
    # the Host this app was asked for, or the one a proxy in front was asked for
    ours = {request.host.lower(), request.headers.get("X-Forwarded-Host", "").split(",")[0].strip().lower()} - {""}
    try:
        theirs = urlsplit(origin).netloc.lower()
    except ValueError:  # "http://[::1" and the like: no origin of ours
        theirs = None
    if theirs not in ours:  # "null" (a sandboxed or privacy-hidden page) too
        log.info("cross-site form refused", extra={"path": request.path, "origin": origin[:200]})
        raise Forbidden("This form was sent from another website, so it was not accepted. "
                        "Please use the form on this page.")


def _finish(resp):
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    if "t0" in g:
        ms = (time.perf_counter() - g.t0) * 1000
        resp.headers["Server-Timing"] = f"app;dur={ms:.1f}"
        log.debug("request", extra={"method": request.method, "path": request.path, "status": resp.status_code,
                                    "ms": round(ms, 1)})
    return resp
