"""The nginx front's per-client-address limits (429, never on health checks, 0: off) and the
request headers it forwards to gunicorn (only those the app reads, none holding a control
character): deploy/nginx/nginx.conf.in, webapp/front.py."""
from __future__ import annotations

import http.client
import http.server
import ipaddress
import json
import os
import re
import socket
import socketserver
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from tests.conftest import fetch, raw_http
from webapp import front
from webapp.cors import parse_origins

REPO = Path(__file__).resolve().parents[1]
needs_nginx = pytest.mark.skipif(front.nginx_binary() is None, reason="nginx not installed (make test installs it)")
SHOP = "https://shop.example"
HEALTH = ("/healthz", "/readyz", "/api/v1/healthz", "/api/v1/readyz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _App(socketserver.ThreadingUnixStreamServer):
    """A stand-in for gunicorn on nginx's socket: 200 to anything, with the headers it got."""

    daemon_threads = True

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self.server_address, 0o777)  # nginx's workers may run as nobody

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            got = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()},
                               "body": len(got)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"


@contextmanager
def nginx_with_app(**kwargs):
    """nginx on a free loopback port with the stand-in app behind it; yields the port."""
    port = free_port()
    nginx = front.NginxFront(f"127.0.0.1:{port}", 1024 * 1024, **kwargs)
    with ExitStack() as stack:
        stack.callback(nginx.stop)
        nginx.check()
        nginx.start()
        app = _App(str(nginx.socket), _App.Handler)
        threading.Thread(target=app.serve_forever, daemon=True).start()
        stack.callback(app.server_close)
        stack.callback(app.shutdown)
        yield port


def too_many(status: int, hdrs: http.client.HTTPMessage, body: bytes) -> None:
    """nginx's 429 under /api/: the app's JSON error shape, exactly, and when to try again."""
    assert (status, hdrs.get_content_type()) == (429, "application/json"), (status, body)
    doc = json.loads(body)
    assert list(doc) == ["error"] and sorted(doc["error"]) == ["code", "message"]
    assert doc["error"]["code"] == "too_many_requests" and hdrs["Retry-After"] == "1"


def too_many_page(status: int, hdrs: http.client.HTTPMessage, body: bytes) -> None:
    assert (status, hdrs.get_content_type()) == (429, "text/html") and b"Too many requests" in body, (status, body)
    assert b"Back to search" in body and hdrs["Retry-After"] == "1"
    assert hdrs.get("Access-Control-Allow-Origin") is None and hdrs.get("Vary") is None


def test_the_limits_are_rendered_and_zero_turns_each_off(tmp_path):
    def render(**kwargs) -> str:
        return front.NginxConfig("127.0.0.1:8000", "unix:/x.sock", tmp_path, 1024, **kwargs).render()

    default = render()
    assert "limit_conn shopsearch_conn 32;" in default and "rate=10r/s;" in default
    assert "limit_req zone=shopsearch_search burst=20 nodelay;" in default
    assert "limit_conn_status 429;" in default and "limit_req_status 429;" in default
    off = render(client_connections=0, client_search_rate=0)
    assert not re.search(r"^\s*limit_(conn|req)(_zone)? ", off, re.M), off
    only_searches = render(client_connections=0, client_search_rate=3)
    assert "limit_conn shopsearch_conn" not in only_searches and "burst=6 nodelay" in only_searches
    with pytest.raises(ValueError):
        render(client_connections=-1)


def test_serve_takes_the_limits_from_options_and_the_environment(tmp_path):
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "serve", "--print-nginx-config",
                                 "--client-max-connections", "5"],
                           env={"SHOPSEARCH_CLIENT_SEARCH_RATE": "0", "SHOPSEARCH_DATABASE_URL": ""})
    assert r.exit_code == 0, r.output
    assert "limit_conn shopsearch_conn 5;" in r.output and "limit_req zone=" not in r.output
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "serve", "--print-nginx-config"],
                           env={"SHOPSEARCH_CLIENT_MAX_CONNECTIONS": "0", "SHOPSEARCH_CLIENT_SEARCH_RATE": "4",
                                "SHOPSEARCH_DATABASE_URL": ""})
    assert r.exit_code == 0, r.output
    assert "limit_conn shopsearch_conn" not in r.output and "burst=8 nodelay;" in r.output
    r = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "serve", "--client-search-rate", "-1"],
                           env={"SHOPSEARCH_DATABASE_URL": ""})
    assert r.exit_code == 2 and "Traceback" not in r.output


@needs_nginx
@pytest.mark.timeout(60)
def test_a_burst_of_photo_searches_gets_429_in_the_json_shape():
    """2 searches/s, bursts of 4: the sixth search in a row is refused (JSON under /api/, with CORS
    for an allowed origin, a page for the shopper's form); other requests and addresses go on."""
    with nginx_with_app(client_search_rate=2, cors_origins=parse_origins(SHOP)) as port:
        answers = [fetch(port, "POST", "/api/v1/search", b"x", {"Origin": SHOP}) for _ in range(12)]
        statuses = [a[0] for a in answers]
        assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
        status, hdrs, body = answers[statuses.index(429)]
        too_many(status, hdrs, body)
        assert hdrs.get_all("Access-Control-Allow-Origin") == [SHOP] and hdrs.get_all("Vary") == ["Origin"]
        assert hdrs["Access-Control-Expose-Headers"] == "Retry-After"  # the storefront may read when to retry
        status, hdrs, body = fetch(port, "POST", "/api/v1/search", b"x", {"Origin": "https://evil.example"})
        too_many(status, hdrs, body)
        assert hdrs.get("Access-Control-Allow-Origin") is None and hdrs.get("Access-Control-Expose-Headers") is None
        too_many_page(*fetch(port, "POST", "/search", b"x", {"Origin": SHOP}))
        for path in (*HEALTH, "/api/v1/categories", "/search", "/"):  # not searches: not counted
            assert fetch(port, "GET", path)[0] == 200, path
        # another address has its own budget
        assert fetch(port, "POST", "/api/v1/search", b"x", source="127.0.0.2")[0] == 200


def test_trusted_proxies_are_rendered_only_when_given(tmp_path):
    def render(**kwargs) -> str:
        return front.NginxConfig("127.0.0.1:8000", "unix:/x.sock", tmp_path, 1024, **kwargs).render()

    default = render()
    assert not re.search(r"^\s*(set_real_ip_from|real_ip_header|real_ip_recursive) ", default, re.M), default
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in default
    trusted = render(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1")))
    assert "set_real_ip_from 10.0.0.0/8;" in trusted and "set_real_ip_from ::1/128;" in trusted
    assert "real_ip_header X-Forwarded-For;" in trusted and "real_ip_recursive on;" in trusted
    assert "proxy_set_header X-Forwarded-For $shopsearch_forwarded_for;" in trusted


def test_serve_takes_trusted_proxies_from_the_option_and_the_environment_and_refuses_a_bad_one(tmp_path):
    def serve(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "serve", "--print-nginx-config", *args],
                                  env={"SHOPSEARCH_DATABASE_URL": "", **(env or {})})

    r = serve("--trusted-proxies", " 192.0.2.7, 10.1.2.3/8,")
    assert r.exit_code == 0, r.output
    assert "set_real_ip_from 192.0.2.7/32;" in r.output and "set_real_ip_from 10.0.0.0/8;" in r.output
    r = serve(env={"SHOPSEARCH_TRUSTED_PROXIES": "2001:db8::/32"})
    assert r.exit_code == 0 and "set_real_ip_from 2001:db8::/32;" in r.output, r.output
    assert "set_real_ip_from" not in serve().output
    for bad in ("proxy.example", "10.0.0.0/33", "10.0.0.1; include /etc/passwd", "10.0.0.1\n}"):
        r = serve("--trusted-proxies", f"127.0.0.1,{bad}")
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert "--trusted-proxies" in r.output and "is not an IP address or CIDR network" in r.output, r.output
        assert "set_real_ip_from" not in r.output


@needs_nginx
@pytest.mark.timeout(60)
def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_search_budget():
    """A storefront's server (127.0.0.1, trusted) searching for its shoppers: each shopper named in
    X-Forwarded-For has its own budget; the app gets the chain with the storefront appended once. An
    untrusted sender (127.0.0.2) cannot escape its limit by naming other clients."""
    with nginx_with_app(client_search_rate=2, trusted_proxies=(ipaddress.ip_network("127.0.0.1"),)) as port:
        def search(shopper: str, source: str = "127.0.0.1") -> int:
            return fetch(port, "POST", "/api/v1/search", b"x", {"X-Forwarded-For": shopper}, source=source)[0]

        statuses = [search("203.0.113.7") for _ in range(12)]
        assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
        status, _, body = fetch(port, "POST", "/api/v1/search", b"x", {"X-Forwarded-For": "203.0.113.8"})
        assert status == 200 and json.loads(body)["headers"]["x-forwarded-for"] == "203.0.113.8, 127.0.0.1"
        assert [search("203.0.113.9") for _ in range(5)] == [200] * 5
        forged = [search(f"198.51.100.{i}", source="127.0.0.2") for i in range(12)]
        assert forged[:5] == [200] * 5 and 429 in forged, forged


@needs_nginx
@pytest.mark.timeout(60)
def test_without_trusted_proxies_a_forged_forwarded_for_does_not_escape_the_limit():
    with nginx_with_app(client_search_rate=2) as port:
        answers = [fetch(port, "POST", "/api/v1/search", b"x", {"X-Forwarded-For": f"198.51.100.{i}"})
                   for i in range(12)]
        statuses = [a[0] for a in answers]
        assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
        too_many(*answers[statuses.index(429)])
        assert json.loads(answers[0][2])["headers"]["x-forwarded-for"] == "198.51.100.0, 127.0.0.1"


def _hold(port: int, n: int) -> list[socket.socket]:
    """n uploads under way (headers sent, the body not yet): each counts as a request in progress."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        held.append(s)
    return held


@needs_nginx
@pytest.mark.timeout(60)
def test_requests_under_way_are_limited_per_address_but_never_health_checks():
    with nginx_with_app(client_connections=2) as port:
        held = _hold(port, 2)
        try:
            deadline = time.monotonic() + 10
            while (answer := fetch(port, "GET", "/api/v1/categories"))[0] != 429:
                assert answer[0] == 200 and time.monotonic() < deadline, answer
                time.sleep(0.05)
            too_many(*answer)
            too_many(*fetch(port, "GET", "/api"))  # the API without its slash: JSON as well
            too_many_page(*fetch(port, "GET", "/"))
            for path in HEALTH:
                assert fetch(port, "GET", path)[0] == 200, path
            assert fetch(port, "GET", "/api/v1/categories", source="127.0.0.2")[0] == 200
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10
        while fetch(port, "GET", "/api/v1/categories")[0] != 200:
            assert time.monotonic() < deadline, "still refused once the uploads ended"
            time.sleep(0.05)


@needs_nginx
@pytest.mark.timeout(60)
def test_zero_turns_the_limits_off():
    with nginx_with_app(client_connections=0, client_search_rate=0) as port:
        held = _hold(port, 3)
        try:
            time.sleep(0.3)
            assert [fetch(port, "POST", "/api/v1/search", b"x")[0] for _ in range(30)] == [200] * 30
        finally:
            for s in held:
                s.close()


def _raw(port: int, path: str, header: bytes) -> tuple[int, str, bytes]:
    status, headers, body = raw_http(port, f"GET {path} HTTP/1.1\r\nHost: a\r\n".encode() + header
                                     + b"\r\nConnection: close\r\n\r\n")
    return status, headers.get("content-type", [""])[0], body


@needs_nginx
@pytest.mark.timeout(60)
def test_gunicorn_gets_only_the_headers_the_app_reads_and_none_with_a_control_character():
    """gunicorn answers a header value holding a control character with its own HTML 400, and nginx
    cannot see every header: it forwards the headers the app reads, refusing a request whose
    forwarded headers hold one (JSON under /api, a page elsewhere); the others never reach gunicorn."""
    with nginx_with_app() as port:
        sent = {"Content-Type": "image/jpeg", "Origin": SHOP, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type", "If-None-Match": '"e1"',
                "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT", "Range": "bytes=0-1", "If-Range": '"e1"',
                "Accept": "application/json", "Accept-Language": "de", "User-Agent": "probe/1", "Referer": "http://a/",
                "X-Forwarded-For": "10.1.2.3", "X-Forwarded-Host": "evil.example", "Cookie": "c=1",
                "Authorization": "Basic eDp5", "X-A": "b"}
        status, _, body = fetch(port, "POST", "/api/v1/search", b"abc", sent)
        got = json.loads(body)
        assert status == 200 and got["body"] == 3 and got["headers"]["content-length"] == "3"
        forwarded = {k.lower(): v for k, v in sent.items() if k not in ("X-Forwarded-For", "X-Forwarded-Host", "Cookie",
                                                                       "Authorization", "X-A")}
        assert {k: got["headers"].get(k) for k in forwarded} == forwarded
        assert got["headers"]["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
        assert got["headers"]["x-forwarded-host"] == "127.0.0.1:%d" % port
        assert not {"cookie", "authorization", "x-a"} & set(got["headers"])
        # the probe's request: a control character in a header the app does not read is never passed on
        status, ctype, body = _raw(port, "/api/v1/categories", b"X-A: a\x01b")
        assert (status, ctype) == (200, "application/json") and "x-a" not in json.loads(body)["headers"]
        for header in (b"Origin: https://a\x01b", b"User-Agent: a\x7fb", b"Accept: a\x0bb", b"X-Forwarded-For: a\x1fb",
                       b"Content-Type: image/\x08jpeg"):
            for api in ("/api/v1/categories", "/api"):
                status, ctype, body = _raw(port, api, header)
                assert (status, ctype) == (400, "application/json"), (header, body)
                assert json.loads(body)["error"]["code"] == "bad_request"
            status, ctype, body = _raw(port, "/search", header)
            assert (status, ctype) == (400, "text/html") and b"Back to search" in body, (header, body)
        # a tab and bytes above ASCII are allowed in a value (gunicorn takes them too)
        status, _, body = _raw(port, "/api/v1/categories", b"User-Agent: a\tb\xe9c")
        assert status == 200 and json.loads(body)["headers"]["user-agent"].startswith("a\tb")


#: request headers the app reads by name (webapp/): each must be among those nginx forwards
_READS = re.compile(r"""request\.headers(?:\.get\(|\[)\s*["']([A-Za-z0-9-]+)["']""")


def test_every_header_the_app_reads_is_forwarded(tmp_path):
    text = front.NginxConfig("127.0.0.1:8000", "unix:/x.sock", tmp_path, 1024).render()
    forwarded = {name.lower() for name in re.findall(r"^\s*proxy_set_header ([A-Za-z-]+) \S", text, re.M)}
    read = {name.lower() for path in (REPO / "webapp").rglob("*.py") for name in _READS.findall(path.read_text())}
    assert read and read <= forwarded | {"content-length"}, read - forwarded
    # and each forwarded header is checked for control characters (the map over their variables)
    checked = text.split("$shopsearch_bad_header {", 1)[0].rsplit("map ", 1)[1]
    for name in forwarded - {"connection", "x-forwarded-proto"}:
        variable = {"content-type": "$content_type", "x-forwarded-host": "$http_host"}.get(
            name, "$http_" + name.replace("-", "_"))
        assert variable in checked, name
