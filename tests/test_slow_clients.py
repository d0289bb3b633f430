"""`shopsearch serve` (nginx in front of gunicorn by default) keeps answering while slow
clients hold connections open: the attack is bounded (50 loopback connections, 8 s) and
stops by itself."""
from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.build import IndexBuilder
from indexer.cli import cli
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.embedders import load_embedder
from shopsearch.index import IndexStore
from tests.conftest import make_image, raw_http, sha, stop_server
from webapp import front
from webapp.front import NginxConfig

REPO = Path(__file__).resolve().parents[1]
needs_nginx = pytest.mark.skipif(front.nginx_binary() is None, reason="nginx not installed (make test installs it)")

SLOW_CLIENTS = 50
#: shorter than nginx's client_header_timeout (10 s): every slow connection stays pending all along
ATTACK_S = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_until_healthy(proc: subprocess.Popen, port: int, deadline: float) -> None:
    """Until the `shopsearch serve` subprocess answers /healthz (fails if it exits or the deadline passes)."""
    while True:
        try:
            if get(port, "/api/v1/healthz", 5)[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.3)


def indexed_data_dir(tmp_path: Path) -> Path:
    settings = Settings(data_dir=tmp_path / "data")
    cat = CatalogueStore.open(settings.db_url)
    for i in range(4):
        p = tmp_path / f"p{i}.png"
        make_image(i).save(p)
        cat.upsert_product(ProductRecord(sku=f"S{i}", title=f"Thing {i}", category_path=("Things",),
                                         images=(ImageRecord(str(p), sha256=sha(p)),)))
    IndexBuilder(load_embedder("colorhist", "cpu"), cat, IndexStore(settings.index_dir),
                 settings.vector_cache_dir).build(progress=False, workers=1)
    cat.close()
    return settings.data_dir


class SlowClients:
    """Half send their headers at 1 byte/s, half declare a 5 MB body and send it at 1 byte/s.
    A connection the server closes is opened again, so SLOW_CLIENTS are always pending."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.stop = threading.Event()
        self.socks: list[socket.socket | None] = [None] * n
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        if i % 2:
            s.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n")
        else:
            s.sendall(b"GET /api/v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        self.socks[i] = s
        self.opened += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            for i in range(self.n):
                try:
                    if self.socks[i] is None:
                        self._open(i)
                    else:
                        self.socks[i].send(b"a")
                except OSError:
                    self._close(i)
            self.stop.wait(1.0)
        for i in range(self.n):
            self._close(i)

    def _close(self, i: int) -> None:
        s, self.socks[i] = self.socks[i], None
        if s is not None:
            s.close()

    def __enter__(self) -> "SlowClients":
        for i in range(self.n):
            self._open(i)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_nginx_config_is_complete(tmp_path):
    text = NginxConfig("127.0.0.1:8000", "unix:/x/app.sock", tmp_path, 10 * 1024 * 1024).render()
    assert not re.findall(r"@[A-Z_]+@", text.split("\n@USER@", 1)[-1].split("user ", 1)[-1])  # all filled in
    assert "client_max_body_size 10485760;" in text and "proxy_request_buffering on;" in text
    assert "client_header_timeout" in text and "listen 127.0.0.1:8000" in text


class _Upstream(socketserver.ThreadingUnixStreamServer):
    """A stand-in for gunicorn on nginx's socket: /api/v1/slow answers after 3 s, anything else
    is the app's own JSON error (503, its own code), which nginx must pass through untouched."""

    daemon_threads = True

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self.server_address, 0o777)  # as gunicorn's socket (umask 0): nginx's workers may run as nobody

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/api/v1/slow":
                time.sleep(3)
            body = b'{"error": {"code": "index_unavailable", "message": "from the app"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"} if body else {})
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def _api_error(status: int, content_type: str, body: bytes) -> tuple[int, str]:
    """(status, code) of an error in the app's shape (webapp/errors.py: error_response), exactly."""
    assert content_type == "application/json", (status, content_type, body)
    doc = json.loads(body)
    assert list(doc) == ["error"] and sorted(doc["error"]) == ["code", "message"], doc
    return status, doc["error"]["code"]


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_own_errors_under_api_are_the_apps_json_and_pages_stay_html(tmp_path):
    """nginx answers some requests itself: a body over client_max_body_size (413), the app down
    (502) or too slow (504). Under /api/ a client gets the app's JSON error shape with that
    status; page paths get HTML; the app's own errors pass through as the app wrote them."""
    port = free_port()
    nginx = front.NginxFront(f"127.0.0.1:{port}", 1024 * 1024)
    # the read timeout (120 s) shortened, so that the slow upstream below is a 504 within the test
    nginx.conf_path.write_text(nginx.conf_path.read_text().replace("proxy_read_timeout 120s", "proxy_read_timeout 1s"))
    nginx.check()
    nginx.start()
    try:
        # the app is down: nothing listens on nginx's upstream socket
        for method, path in (("GET", "/api/v1/healthz"), ("POST", "/api/v1/search"), ("GET", "/api/v1/categories")):
            assert _api_error(*_request(port, method, path, b"x" if method == "POST" else None)) == \
                (502, "bad_gateway")
        status, ctype, body = _request(port, "GET", "/")
        assert status == 502 and ctype == "text/html" and b"<html>" in body
        big = b"\0" * (2 * 1024 * 1024)
        assert _api_error(*_request(port, "POST", "/api/v1/search", big)) == (413, "payload_too_large")
        status, ctype, body = _request(port, "POST", "/search", big)
        assert status == 413 and ctype == "text/html" and b"larger than the 1 MB limit" in body
        assert _request(port, "GET", "/_shopsearch/api_error/502")[0] == 404  # internal only

        app = _Upstream(str(nginx.socket), _Upstream.Handler)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        try:
            assert _api_error(*_request(port, "GET", "/api/v1/slow")) == (504, "gateway_timeout")
            status, ctype, body = _request(port, "GET", "/api/v1/readyz")  # the app's own error, untouched
            assert (status, ctype) == (503, "application/json") and json.loads(body)["error"]["message"] == "from the app"
        finally:
            app.shutdown()
            app.server_close()
    finally:
        nginx.stop()


def _raw(port: int, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes as they are: (status, Content-Type, body)."""
    status, headers, body = raw_http(port, request)
    return status, headers.get("content-type", [""])[0], body


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_errors_before_a_location_are_json_under_api_and_html_for_pages():
    """A URL or header over nginx's buffers, a request line it cannot parse or a method it refuses
    (TRACE) is refused before nginx picks a location, so no location's error_page applies: API
    clients still get the JSON error shape (not nginx's HTML), pages a short page of their own. A
    raw non-ASCII byte in the request line is refused by nginx too (gunicorn's refusal is HTML)."""
    port = free_port()
    nginx = front.NginxFront(f"127.0.0.1:{port}", 1024 * 1024)
    nginx.check()
    nginx.start()
    try:
        long_query = "q=" + "a" * 9000
        big_header = b"X-Big: " + b"b" * 9000 + b"\r\n"
        for api in ("/api/v1/search", "/api"):
            assert _api_error(*_raw(port, f"GET {api}?{long_query} HTTP/1.1\r\nHost: a\r\n\r\n".encode())) == \
                (414, "uri_too_long")
            assert _api_error(*_raw(port, f"GET {api} HTTP/1.1\r\nHost: a\r\n".encode() + big_header + b"\r\n")) == \
                (400, "header_too_large")
            assert _api_error(*_raw(port, f"GET {api}/\0x HTTP/1.1\r\nHost: a\r\n\r\n".encode())) == \
                (400, "bad_request")
        # a raw (not percent-encoded) UTF-8 byte in the request line, and a method nginx refuses itself
        assert _api_error(*_raw(port, b"GET /api/v1/search?k=\xd9\xa5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) \
            == (400, "bad_request")
        assert _api_error(*_raw(port, b"TRACE /api/v1/search HTTP/1.1\r\nHost: a\r\n\r\n")) == (405, "method_not_allowed")
        status, ctype, body = _raw(port, b"GET /search?k=\xd9\xa5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (status, ctype) == (400, "text/html") and b"Back to search" in body
        status, ctype, body = _raw(port, b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (status, ctype) == (405, "text/html") and b"Not allowed" in body
        assert _api_error(*_raw(port, b"POST /api/v1/search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n"
                                      b"Connection: close\r\n\r\n")) == (501, "not_implemented")
        assert _api_error(*_raw(port, b"GET /api/v1/search HTTP/2.0\r\nHost: a\r\n\r\n")) == (505, "http_version_not_supported")
        # percent-encoded, the same character goes on to the app (here: none, so nginx's 502)
        assert _api_error(*_raw(port, b"GET /api/v1/search?k=%D9%A5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")) \
            == (502, "bad_gateway")
        status, ctype, body = _raw(port, f"GET /?{long_query} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert (status, ctype) == (414, "text/html") and b"Address too long" in body
        status, ctype, body = _raw(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + big_header + b"\r\n")
        assert (status, ctype) == (400, "text/html") and b"Back to search" in body
        # /apiary is a page path, not the API
        status, ctype, _ = _raw(port, f"GET /apiary?{long_query} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert (status, ctype) == (414, "text/html")
        assert _request(port, "GET", "/_shopsearch/early/api/414")[0] == 404  # internal only
    finally:
        nginx.stop()


def test_public_bind_without_nginx_is_refused(monkeypatch):
    monkeypatch.setattr(front, "nginx_binary", lambda: None)
    result = CliRunner().invoke(cli, ["serve", "--bind", "0.0.0.0:8000"])
    assert result.exit_code != 0 and "slow clients" in result.output and "--front none" in result.output
    assert result.output.rstrip().endswith("[config_error]")


@needs_nginx
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_default_serve_survives_slow_clients(tmp_path):
    data_dir = indexed_data_dir(tmp_path)
    port = free_port()
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(data_dir)}
    for var in ("SHOPSEARCH_DATABASE_URL", "SHOPSEARCH_FRONT", "SHOPSEARCH_WORKERS", "SHOPSEARCH_THREADS"):
        env.pop(var, None)
    # the defaults: 1 gunicorn worker x 4 threads; nginx in front because it is installed
    proc = subprocess.Popen([sys.executable, "-c", "from indexer.cli import main; main()", "serve",
                             "--bind", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, port, time.monotonic() + 60)
        worst, probes, failures = 0.0, 0, []
        with SlowClients(port, SLOW_CLIENTS) as attack:
            end = time.monotonic() + ATTACK_S
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    status, _ = get(port, "/api/v1/healthz", timeout=5)
                    if status != 200:
                        failures.append(status)
                except OSError as e:
                    failures.append(repr(e))
                worst = max(worst, time.monotonic() - t0)
                probes += 1
                time.sleep(0.25)
            pending = sum(s is not None for s in attack.socks)
        print(f"/healthz worst {worst * 1000:.0f} ms over {probes} probes; {attack.opened} slow connections opened")
        assert attack.opened >= SLOW_CLIENTS and pending >= SLOW_CLIENTS * 0.8  # the attack was real
        assert not failures, failures
        assert probes >= 20 and worst < 1.0, f"/healthz took up to {worst:.2f} s under {SLOW_CLIENTS} slow clients"
        # nginx refuses an oversized upload itself, in the API's JSON error shape
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/v1/search", body=b"\0" * (11 * 1024 * 1024),
                     headers={"Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["code"] == "payload_too_large"
        conn.close()
    finally:
        out = stop_server(proc)
    assert proc.returncode == 0, out
    assert "behind nginx" in out
