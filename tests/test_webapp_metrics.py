"""/metrics: request counts and latencies per route and status, search stage timings, the
index served; under gunicorn with several workers, one scrape sums every worker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shopsearch.index import IndexStore
from tests.test_slow_clients import free_port, get, indexed_data_dir
from tests.test_webapp import api_search, app_for, make_site, photo
from tests.conftest import stop_server

REPO = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(page: dict, name: str, **labels) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_stages_and_the_index(tmp_path):
    settings = make_site(tmp_path, n=3)
    app = app_for(settings)
    c = app.test_client()
    before = samples(c.get("/metrics").get_data(as_text=True))
    assert api_search(c, photo(1)).status_code == 200
    assert c.get("/api/v1/products/nope").status_code == 404
    assert c.get("/no/such/page").status_code == 404
    for word in ("ZXQ1", "ZXQ2"):  # made-up methods (nginx passes any word): one "other" series, not one each
        assert c.open("/healthz", method=word).status_code == 405
    r = c.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    after = samples(r.get_data(as_text=True))

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    search = dict(method="POST", route="/api/v1/search", status="200")
    assert delta("shopsearch_http_requests_total", **search) == 1
    assert delta("shopsearch_http_request_duration_seconds_count", **search) == 1
    assert delta("shopsearch_http_request_duration_seconds_bucket", le="+Inf", **search) == 1
    assert delta("shopsearch_http_requests_total", method="GET", route="/api/v1/products/<path:sku>",
                 status="404") == 1
    assert delta("shopsearch_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("shopsearch_http_requests_total", method="other", route="unmatched", status="405") == 2
    assert "ZXQ" not in r.get_data(as_text=True)
    for stage in ("decode", "embed", "search", "database"):
        assert delta("shopsearch_search_stage_seconds_count", stage=stage) == 1, stage
    build = IndexStore(settings.index_dir).current_id()
    assert value(after, "shopsearch_index_info", build_id=build, model="fake", index_type="flat") == 1
    assert value(after, "shopsearch_index_vectors") == 6
    assert value(after, "shopsearch_index_degraded") == 0
    app.extensions["shopsearch"].close()


def test_metrics_can_be_switched_off(tmp_path):
    app = app_for(make_site(tmp_path, n=1), METRICS=False)
    assert app.test_client().get("/metrics").status_code == 404


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_scrape_sums_every_gunicorn_worker(tmp_path):
    data_dir = indexed_data_dir(tmp_path)
    port = free_port()
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(data_dir)}
    for var in ("SHOPSEARCH_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-c", "from indexer.cli import main; main()", "serve",
                             "--bind", f"127.0.0.1:{port}", "--workers", "3", "--threads", "2", "--preload",
                             "--front", "none"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        answered, deadline = 0, time.monotonic() + 60
        while answered == 0:
            try:
                answered += get(port, "/readyz", 5)[0] == 200
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        for _ in range(29):  # new connections: spread over the workers
            answered += get(port, "/readyz", 5)[0] == 200
        page = samples(get(port, "/metrics", 5)[1].decode())
        assert value(page, "shopsearch_http_requests_total", method="GET", route="/readyz", status="200") == answered
        assert value(page, "shopsearch_index_vectors") == 4
    finally:
        out = stop_server(proc)
    assert proc.returncode == 0, out
