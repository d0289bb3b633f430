"""`shopsearch serve`'s nginx front for real: CORS on the errors nginx answers itself, a taken
port refused in one line, and the server stopping when nginx dies (webapp/front.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shopsearch.errors import PortInUseError
from tests.conftest import fetch, raw_http as raw
from tests.conftest import stop_server
from webapp import front
from webapp.cors import parse_origins

REPO = Path(__file__).resolve().parents[1]
needs_nginx = pytest.mark.skipif(front.nginx_binary() is None, reason="nginx not installed (make test installs it)")

SHOP = "https://shop.example"
IDN_SHOP = "https://xn--bcher-kva.example"  # how a browser writes https://bücher.example in Origin
#: as an operator may write them: a default port, an IDN host
CONFIGURED = "https://shop.example:443, https://bücher.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def serve_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "SHOPSEARCH_DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path / "home")}
    for var in ("SHOPSEARCH_DATABASE_URL", "SHOPSEARCH_FRONT", "SHOPSEARCH_CORS_ORIGINS", "XDG_RUNTIME_DIR",
                "SHOPSEARCH_CLIENT_MAX_CONNECTIONS", "SHOPSEARCH_CLIENT_SEARCH_RATE"):
        env.pop(var, None)
    return env


SERVE = [sys.executable, "-c", "from indexer.cli import main; main()", "serve"]


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_own_api_errors_carry_cors_for_allowed_origins_only():
    """413 (an upload over the limit), 502 (the app down), 400 (a header over nginx's buffers,
    refused before any location): a listed origin may read them, written as the operator did
    (default port, IDN host) or not; another origin, no origin and the pages get none."""
    port = free_port()
    nginx = front.NginxFront(f"127.0.0.1:{port}", 1024 * 1024, cors_origins=parse_origins(CONFIGURED))
    nginx.check()
    nginx.start()  # nothing listens on its upstream socket: the app is down
    try:
        big = b"\0" * (2 * 1024 * 1024)
        for origin in (SHOP, IDN_SHOP, "https://evil.example", None):
            headers = {"Origin": origin} if origin else {}
            answers = {"413": fetch(port, "POST", "/api/v1/search", big, headers),
                       "502": fetch(port, "GET", "/api/v1/categories", None, headers),
                       "502 /api": fetch(port, "GET", "/api", None, headers)}
            for name, (status, hdrs, body) in answers.items():
                assert str(status) == name[:3] and body.startswith(b'{"error"'), (name, status, body)
                assert hdrs.get_all("Access-Control-Allow-Origin") == ([origin] if origin in (SHOP, IDN_SHOP) else None)
                assert hdrs.get_all("Vary") == ["Origin"]  # shared caches must key on the origin
            # a header over nginx's buffers, after Origin: refused before any location, readable all the same
            request_origin = f"Origin: {origin}\r\n".encode() if origin else b""
            got, hdrs, body = raw(port, b"GET /api/v1/search HTTP/1.1\r\nHost: a\r\n" + request_origin
                                  + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n")
            assert got == 400 and b"header_too_large" in body, (got, body)
            assert hdrs.get("access-control-allow-origin") == ([origin] if origin in (SHOP, IDN_SHOP) else None)
            got, hdrs, body = raw(port, b"POST /api/v1/search HTTP/1.1\r\nHost: a\r\n" + request_origin
                                  + b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n")
            assert got == 501 and b"not_implemented" in body, (got, body)
            assert hdrs.get("access-control-allow-origin") == ([origin] if origin in (SHOP, IDN_SHOP) else None)
            # a request line over them (414) is refused before nginx reads any header: no Origin to grant
            got, hdrs, body = raw(port, f"GET /api/v1/search?q={'a' * 9000} HTTP/1.1\r\nHost: a\r\n".encode()
                                  + request_origin + b"\r\n")
            assert got == 414 and b"uri_too_long" in body and "access-control-allow-origin" not in hdrs
            # the pages stay same-origin, nginx's own pages included
            status, hdrs, _ = fetch(port, "POST", "/search", big, headers)
            assert status == 413 and hdrs.get("Access-Control-Allow-Origin") is None and hdrs.get("Vary") is None
    finally:
        nginx.stop()


def test_the_nginx_map_allows_the_normalised_origins_only(tmp_path):
    """What `serve --print-nginx-config` gives a system nginx: the origins as browsers send them."""
    def origin_map(origins: str) -> str:
        text = front.NginxConfig("127.0.0.1:8000", "unix:/x.sock", tmp_path, 1024,
                                 cors_origins=parse_origins(origins)).render()
        return text.split("map $http_origin $shopsearch_cors_origin {", 1)[1].split("}", 1)[0]

    listed = origin_map(CONFIGURED + ", HTTP://LocalHost:80")
    assert f'"{SHOP}" $http_origin;' in listed and f'"{IDN_SHOP}" $http_origin;' in listed
    assert '"http://localhost" $http_origin;' in listed and ":443" not in listed and "bücher" not in listed
    assert 'default "";' in listed and "*" not in listed
    assert "*" in origin_map("*") and "$http_origin" not in origin_map("*")  # `*` only when asked for
    assert "$http_origin" not in origin_map("")  # none by default


@needs_nginx
@pytest.mark.timeout(60)
def test_serve_adds_one_cors_grant_and_stops_when_nginx_dies(tmp_path):
    """Through nginx and gunicorn: the app's answers carry its one Access-Control-Allow-Origin
    (nginx adds none of its own), nginx's 413 carries one too, /api is the API's JSON 404, a header
    holding a control character is no HTML 400 from gunicorn, a burst of searches over the limit set
    in the environment a JSON 429; then nginx's master is killed: `serve` stops gunicorn and exits 1
    in one line, freeing the port."""
    port = free_port()
    proc = subprocess.Popen([*SERVE, "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "1", "--preload",
                             "--max-upload-mb", "1", "--cors-origins", CONFIGURED],
                            cwd=REPO, env={**serve_env(tmp_path), "SHOPSEARCH_CLIENT_SEARCH_RATE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                status, hdrs, body = fetch(port, "GET", "/api/v1/healthz", None, {"Origin": IDN_SHOP})
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert status == 200 and hdrs.get_all("Access-Control-Allow-Origin") == [IDN_SHOP]
        assert hdrs.get_all("Vary") == ["Origin"]
        status, hdrs, _ = fetch(port, "GET", "/api/v1/categories", None, {"Origin": SHOP})
        assert status == 200 and hdrs.get_all("Access-Control-Allow-Origin") == [SHOP]
        status, hdrs, _ = fetch(port, "POST", "/api/v1/search", b"\0" * (2 * 1024 * 1024), {"Origin": SHOP})
        assert status == 413 and hdrs.get_all("Access-Control-Allow-Origin") == [SHOP]
        status, hdrs, body = fetch(port, "GET", "/api", None, {"Origin": SHOP})
        assert (status, hdrs.get_content_type()) == (404, "application/json") and b'"not_found"' in body
        assert hdrs.get_all("Access-Control-Allow-Origin") == [SHOP]
        status, hdrs, _ = fetch(port, "GET", "/api/v1/categories", None, {"Origin": "https://evil.example"})
        assert status == 200 and hdrs.get("Access-Control-Allow-Origin") is None
        # the attacker probe's header: a control character in a value gunicorn would answer with its HTML 400
        got, hdrs, body = raw(port, b"GET /api/v1/categories HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n"
                                    b"Connection: close\r\n\r\n")
        assert got == 200 and hdrs["content-type"] == ["application/json"] and b"categories" in body, (got, body)
        got, hdrs, body = raw(port, b"GET /api/v1/categories HTTP/1.1\r\nHost: a\r\nOrigin: a\x01b\r\n"
                                    b"Connection: close\r\n\r\n")
        assert got == 400 and b'"bad_request"' in body, (got, body)
        # 1 search/s, bursts of 2 (SHOPSEARCH_CLIENT_SEARCH_RATE): nginx's 429, readable by the storefront
        answers = [fetch(port, "POST", "/api/v1/search", b"", {"Origin": SHOP}) for _ in range(6)]
        status, hdrs, body = next((a for a in answers if a[0] == 429), answers[-1])
        assert status == 429 and b'"too_many_requests"' in body and hdrs["Retry-After"] == "1", [a[0] for a in answers]
        assert hdrs.get_all("Access-Control-Allow-Origin") == [SHOP]
        assert fetch(port, "GET", "/api/v1/healthz")[0] == 200

        os.kill(_nginx_master(proc.pid), signal.SIGKILL)  # its workers are left holding the port
        out = proc.communicate(timeout=20)[0].decode()
    finally:
        if proc.poll() is None:
            out = stop_server(proc)
    assert proc.returncode == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"Error: nginx, the front on 127.0.0.1:{port}, exited") and "[front_failed]" in last
    assert "Traceback" not in out
    with pytest.raises(OSError):  # nothing listens any more: not even nginx's orphaned workers
        fetch(port, "GET", "/api/v1/healthz")


def _nginx_master(parent: int) -> int:
    """The nginx process `serve` (pid `parent`, gunicorn's master) started."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        name, ppid = stat[stat.index("(") + 1:stat.rindex(")")], int(stat[stat.rindex(")") + 2:].split()[1])
        if entry.name.isdigit() and ppid == parent and name == "nginx":
            return int(entry.name)
    raise AssertionError("no nginx under serve")


@needs_nginx
@pytest.mark.timeout(60)
def test_serve_refuses_a_taken_port_in_one_line(tmp_path):
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        t0 = time.monotonic()
        r = subprocess.run([*SERVE, "--bind", f"127.0.0.1:{port}"], cwd=REPO, env=serve_env(tmp_path),
                           capture_output=True, text=True, timeout=40)
        took = time.monotonic() - t0
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"Error: port {port} is in use: another process listens on "
                                             f"127.0.0.1:{port}; stop it or serve on another --bind [port_in_use]"]
    assert took < 15


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_that_cannot_bind_at_start_stops_serve(tmp_path):
    """The port taken between serve's check and nginx's start (the check is skipped here): nginx
    retries for 2.5 s and would leave gunicorn behind it unreachable; serve ends in one line."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        t0 = time.monotonic()
        with pytest.raises(PortInUseError, match=f"port {port} is in use"):
            nginx = front.NginxFront(f"127.0.0.1:{port}", 1024 * 1024)
            try:
                nginx.start()
            finally:
                nginx.stop()
        assert time.monotonic() - t0 < 2 and nginx.proc.poll() is not None
        script = "import webapp.front as f; f._listen_problem = lambda listen: None\n" \
                 "from indexer.cli import main; main()"
        r = subprocess.run([sys.executable, "-c", script, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                           cwd=REPO, env=serve_env(tmp_path), capture_output=True, text=True, timeout=40)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"Error: port {port} is in use")
    assert "Booting worker" not in r.stderr  # nothing forked


@needs_nginx
def test_the_socket_folder_is_not_open_to_every_local_account():
    """gunicorn's socket would let any local account bypass nginx (its limits, its /metrics rule):
    its folder is this user's alone, or root's and nginx workers' group (nobody) when root."""
    import grp
    import stat

    nginx = front.NginxFront("127.0.0.1:0", 1 << 20)
    try:
        st = nginx.prefix.stat()
        assert stat.S_IMODE(st.st_mode) & 0o007 == 0  # nothing for others
        if os.geteuid() == 0:
            assert stat.S_IMODE(st.st_mode) == 0o750 and grp.getgrgid(st.st_gid).gr_name in ("nogroup", "nobody")
        else:
            assert stat.S_IMODE(st.st_mode) == 0o700
    finally:
        nginx.stop()
