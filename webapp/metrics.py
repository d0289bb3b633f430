"""Prometheus metrics at /metrics: requests per route and status, search stage timings, and
what index is served.

Under gunicorn `shopsearch serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before
anything imports prometheus_client, so every worker writes its samples there and a scrape,
whichever worker answers it, sums them (counters and histograms), or takes the largest
value among live workers (index gauges). Without it (Flask's debug server, tests) the
figures are this process's own."""
from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client import multiprocess, values

from shopsearch.results import SearchResult

bp = Blueprint("metrics", __name__)

#: prometheus_client chose its mode at import (from PROMETHEUS_MULTIPROC_DIR, which `serve` sets
#: before importing it): ask it rather than the environment
MULTIPROCESS = values.ValueClass is not values.MutexValue

REQUESTS = Counter("shopsearch_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("shopsearch_http_request_duration_seconds", "Time to answer an HTTP request",
                    ["method", "route", "status"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
STAGES = Histogram("shopsearch_search_stage_seconds", "Time per search stage (decode, embed, search, database)",
                   ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
MODEL_THREADS = Counter("shopsearch_search_model_threads", "Photo searches by the intra-op threads their model "
                        "was given (all the cores when alone on the server)", ["threads"])
INDEX_INFO = Gauge("shopsearch_index_info", "The index build served (1), by build id, model and type",
                   ["build_id", "model", "index_type"], multiprocess_mode="livemax")
VECTORS = Gauge("shopsearch_index_vectors", "Vectors in the index served", multiprocess_mode="livemax")
DEGRADED = Gauge("shopsearch_index_degraded", "1 while an older build is served because the current one is broken",
                 multiprocess_mode="livemax")

#: (build id, model, index type) this process last reported
_reported: dict[str, tuple[str, str, str] | None] = {"labels": None}


def observe_decode(seconds: float) -> None:
    STAGES.labels("decode").observe(seconds)


def observe_model_threads(n: int) -> None:
    MODEL_THREADS.labels(str(n)).inc()


def observe_search(res: SearchResult) -> None:
    """A search's stage timings (SearchResult.timings_ms) into the stage histogram."""
    for stage in ("embed", "search", "database"):
        if res.timings_ms.get(stage):  # a page re-run with the posted-back vector embeds nothing
            STAGES.labels(stage).observe(res.timings_ms[stage] / 1000)


def _start() -> None:
    g.metrics_t0 = time.perf_counter()


#: the methods a series is kept for; any other is counted as "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"})


def _finish(resp: Response) -> Response:
    t0 = g.pop("metrics_t0", None)
    if t0 is not None:
        # the route's rule, not the path: SKUs and image ids would make one series per product
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        # a fixed set of methods, too: any word passes nginx as a method, and each would be a series
        method = request.method if request.method in _METHODS else "other"
        labels = (method, route, str(resp.status_code))
        REQUESTS.labels(*labels).inc()
        LATENCY.labels(*labels).observe(time.perf_counter() - t0)
    _report_index()
    return resp


def _report_index() -> None:
    holder = current_app.extensions["shopsearch"]
    svc = holder.current()
    labels = (svc.manifest.build_id, svc.manifest.model_name, svc.manifest.index_type) if svc else None
    if labels != _reported["labels"]:
        if _reported["labels"] is not None:
            INDEX_INFO.labels(*_reported["labels"]).set(0)
        if labels is not None:
            INDEX_INFO.labels(*labels).set(1)
        VECTORS.set(len(svc.index) if svc else 0)
        _reported["labels"] = labels
    DEGRADED.set(1 if holder.degraded else 0)


@bp.get("/metrics")
def metrics() -> Response:
    _report_index()
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.register_blueprint(bp)


def worker_exited(pid: int) -> None:
    """Gunicorn child_exit hook: drop a dead worker's live gauges (its counters stay summed)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)
