"""A bounded fuzz run of /api/v1: schemathesis reads the app's own openapi.json from a live
server on loopback and sends every operation generated requests, valid and invalid. No
request may get a 5xx. Bounded: a fixed number of examples per operation, no shrinking
past a few seconds, about a minute in all on a 2-core CI machine."""
from __future__ import annotations

import threading
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
# imported here, at collection: imported lazily inside the fixture, pytest's assertion rewriting of
# its modules once ran ast.parse deep in the stack and CPython 3.11.7 failed it ("AST constructor
# recursion depth mismatch"), an error of the interpreter, not of the API
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401
from werkzeug.serving import make_server

from tests.test_webapp import app_for, make_site


@pytest.fixture
def api_schema(tmp_path, db_url):
    """The app on SQLite and on PostgreSQL (a NUL in a SKU only broke the latter)."""
    settings_ = make_site(tmp_path, n=6, database_url=db_url)
    app = app_for(settings_, TESTING=False, MAX_UPLOAD_MB=1)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        yield schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        app.extensions["shopsearch"].close()


#: the document's operations; schemathesis leaves out the one serving the document itself
OPERATIONS = ["POST /search", "GET /search/text", "GET /products/{sku}", "GET /products/{sku}/similar",
              "GET /healthz", "GET /readyz", "GET /categories", "POST /feedback"]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors(api_schema, mode):
    """Every operation of the document (checked against the list above, so a new route is not
    silently left out), 30 generated requests each."""
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert sorted(op.label.replace("/api/v1", "") for op in operations) == sorted(OPERATIONS)
    failures: list[str] = []
    for op in operations:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case):
            response = case.call(timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query or ''} -> "
                                f"{response.status_code}: {response.text[:200]}")

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (no parameters, or only a free-form string)
            assert mode is GenerationMode.NEGATIVE, op.label
    assert not failures, "\n".join(failures[:20])
