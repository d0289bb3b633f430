"""Image URL downloads against hostile or broken servers (shopsearch.catalogue.downloads and
download_http): one total deadline, nothing kept that is not an image, a failed refresh keeps the
earlier picture, non-ASCII URLs, credentials never shown, redirect loops, encoded bodies.
Every server is a local HTTP server in a thread."""
from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import pytest

from shopsearch.catalogue.download_http import request_url
from shopsearch.catalogue.downloads import ImageDownloader
from shopsearch.config import DownloadSettings
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from tests.conftest import make_image

SECRET = "s3cr@t"  # an "@" in it: masking must not show its tail


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, "JPEG")
    return buf.getvalue()


class Cdn:
    """Routes by path (a proxy's absolute request line by its path); `requests` keeps each
    (request line target, headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.mode = "image"  # what /flaky.jpg answers
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                cdn.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = self.path.split("://", 1)[1].split("/", 1)[1] if "://" in self.path else self.path[1:]
                route = cdn.route(unquote(path.split("?", 1)[0]))
                try:
                    route(self)
                except OSError:  # the client gave up (deadline, size cap)
                    pass

            def send(self, body: bytes, status: int = 200, ctype: str = "image/jpeg", **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.host = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def route(self, path: str) -> Callable[[BaseHTTPRequestHandler], None]:
        if path.startswith("hop/"):  # a slow redirect chain: each hop answers after 0.4 s
            n = int(path[4:])
            return lambda h: (time.sleep(0.4), _redirect(h, f"/hop/{n + 1}") if n < 8 else h.send(_jpeg(1)))
        return {
            "p1.jpg": lambda h: h.send(_jpeg(1)),
            "drip-body.jpg": lambda h: _drip(h, head=b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"),
            "drip-head.jpg": lambda h: _drip(h, head=b"HTTP/1.1 200 OK\r\nX-Pad: "),
            "flaky.jpg": self._flaky,
            "loop.jpg": lambda h: _redirect(h, "/loop.jpg"),
            "private.jpg": lambda h: h.send(_jpeg(2)) if h.headers.get("Authorization") == "Basic " + base64.b64encode(
                f"user:{SECRET}".encode()).decode() else h.send(b"who are you", 401, "text/plain"),
            "private-moved.jpg": lambda h: _redirect(h, "/p1.jpg"),
            "gz.jpg": lambda h: h.send(gzip.compress(_jpeg(3)), Content_Encoding="gzip"),
            "bomb.jpg": lambda h: h.send(gzip.compress(b"\xff\xd8" + b"\0" * (8 << 20)), Content_Encoding="gzip"),
            "br.jpg": lambda h: h.send(b"\x0b\x02\x80", Content_Encoding="br"),
            "bilder/käse.jpg": lambda h: h.send(_jpeg(4)),
        }.get(path, lambda h: h.send_error(404))

    def _flaky(self, h: BaseHTTPRequestHandler) -> None:
        if self.mode == "image":
            return h.send(_jpeg(5))
        if self.mode == "other-image":
            return h.send(_jpeg(6))
        if self.mode == "html":
            return h.send(b"<html><body>Maintenance</body></html>", ctype="text/html")
        if self.mode == "503":
            return h.send(b"busy", 503, "text/plain")
        body = _jpeg(5)
        if self.mode == "short":  # announces the whole picture, sends half and closes
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:len(body) // 2])
            return None
        assert self.mode == "cut"  # no length announced: half a JPEG is the whole body
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body[:len(body) // 2])
        h.close_connection = True
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _redirect(h: BaseHTTPRequestHandler, to: str) -> None:
    h.send_response(302)
    h.send_header("Location", to)
    h.send_header("Content-Length", "0")
    h.end_headers()


def _drip(h: BaseHTTPRequestHandler, head: bytes) -> None:
    """`head` one byte every 50 ms, then the body likewise: 10 s at most, a client that waits for ever."""
    h.close_connection = True
    data = head + b"x" * 200
    for i in range(len(data)):
        h.wfile.write(data[i:i + 1])
        h.wfile.flush()
        time.sleep(0.05)


@pytest.fixture
def cdn():
    s = Cdn()
    yield s
    s.close()


def _import(store, tmp_path: Path, rows: list[str], dl: ImageDownloader, **kw):
    feed = tmp_path / "feed.csv"
    feed.write_text("\n".join(["sku,title,images", *rows]) + "\n", encoding="utf-8")
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(feed, "csv", problems), problems, workers=1, progress=False,
                            downloader=dl, **kw)


def _fetch_one(dl: ImageDownloader, url: str):
    return dl.fetch_all([url], progress=False)[url]


# -- 1. one total deadline per download --------------------------------------------------
@pytest.mark.parametrize("path", ["drip-body.jpg", "drip-head.jpg", "hop/0"])
def test_a_slow_server_is_cut_off_at_the_total_deadline(tmp_path, cdn, path):
    """A byte every 50 ms (in the body, or in the headers), or redirects 0.4 s apart, never let a
    download outlive timeout_s: every read, header and hop counts against one deadline."""
    dl = ImageDownloader(tmp_path / "dl", DownloadSettings(timeout_s=1.5))
    t0 = time.monotonic()
    res = _fetch_one(dl, f"{cdn.base}/{path}")
    took = time.monotonic() - t0
    assert res.path is None and res.error == "took over 1.5 s in all (the server sent too slowly)"
    assert took < 1.5 + 0.8, took
    assert not any((tmp_path / "dl").rglob("*.*part*"))


# -- 2 and 3. nothing that is not a whole image takes the final name -----------------------
@pytest.mark.parametrize("mode, cause", [("html", "not a usable image: not an image format"),
                                         ("503", "HTTP 503"),
                                         ("short", "bytes short of the length announced"),
                                         ("cut", "not a usable image: cannot read image: Truncated")])
def test_a_failed_refresh_keeps_the_previous_picture(tmp_path, catalogue, cdn, mode, cause):
    dl = ImageDownloader(tmp_path / "dl")
    rows = [f"F,Flaky,{cdn.base}/flaky.jpg"]
    _import(catalogue, tmp_path, rows, dl)
    before, file = catalogue.get_product("F").images, dl.local_path(f"{cdn.base}/flaky.jpg")
    good = file.read_bytes()
    cdn.mode = mode
    r = _import(catalogue, tmp_path, rows, dl, refresh_downloads=True)
    assert file.read_bytes() == good and catalogue.get_product("F").images == before
    assert (r.images_failed, r.images_ok, r.images_downloaded) == (0, 1, 0)
    [p] = r.problems
    assert (p.where, p.sku, p.kind) == (f"{cdn.base}/flaky.jpg", "F", "download")
    assert cause in p.reason and p.reason.endswith("; the previous image was kept"), p.reason
    assert [f.name for f in file.parent.iterdir()] == [file.name]  # no staged file left
    cdn.mode = "other-image"  # and a refresh that works still replaces the picture
    r = _import(catalogue, tmp_path, rows, dl, refresh_downloads=True)
    assert r.images_downloaded == 1 and catalogue.get_product("F").images[0].sha256 != before[0].sha256


@pytest.mark.parametrize("mode", ["html", "short", "cut"])
def test_a_first_download_that_is_no_whole_image_is_not_kept_and_is_tried_again(tmp_path, sqlite_catalogue,
                                                                              cdn, mode):
    dl = ImageDownloader(tmp_path / "dl")
    rows = [f"F,Flaky,{cdn.base}/flaky.jpg"]
    cdn.mode = mode
    r = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert r.images_failed == 1 and r.problems[0].reason.startswith("download failed: ")
    assert not dl.local_path(f"{cdn.base}/flaky.jpg").exists()
    cdn.mode, cdn.requests[:] = "image", []
    r = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert [t for t, _ in cdn.requests] == ["/flaky.jpg"]
    assert (r.images_ok, r.images_downloaded, r.images_failed) == (1, 1, 0)
    assert sqlite_catalogue.get_product("F").images[0].status == "ok"


# -- 4. non-ASCII URLs -------------------------------------------------------------------
def test_request_url_encodes_what_is_not_ascii_and_keeps_escapes():
    assert request_url("http://Bücher.example:8080/a b/käse.jpg?name=süß&x=%41%2F#top") == (
        "http://xn--bcher-kva.example:8080/a%20b/k%C3%A4se.jpg?name=s%C3%BC%C3%9F&x=%41%2F", None)
    assert request_url(f"https://user:{SECRET.replace('@', '%40')}@[::1]/x.jpg") == (
        "https://[::1]/x.jpg", "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode())


def test_a_non_ascii_path_and_query_are_sent_percent_encoded(tmp_path, sqlite_catalogue, cdn):
    dl = ImageDownloader(tmp_path / "dl")
    url = f"{cdn.base}/bilder/käse.jpg?name=süß&x=%41"
    r = _import(sqlite_catalogue, tmp_path, [f"K,Käse,{url}"], dl)
    assert (r.images_ok, r.images_failed) == (1, 0), r.problems
    assert cdn.requests[0][0] == "/bilder/k%C3%A4se.jpg?name=s%C3%BC%C3%9F&x=%41"
    assert sqlite_catalogue.get_product("K").images[0].path == str(dl.local_path(url))  # keyed as given


def test_an_idn_host_is_sent_idna_encoded(tmp_path, cdn, monkeypatch):
    # through the environment's proxy (the local server), so that no name needs resolving
    monkeypatch.setenv("http_proxy", cdn.base)
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    dl = ImageDownloader(tmp_path / "dl")
    res = _fetch_one(dl, "http://bücher.example/p1.jpg")
    assert res.error is None and res.downloaded and res.path == dl.local_path("http://bücher.example/p1.jpg")
    assert cdn.requests[0][0] == "http://xn--bcher-kva.example/p1.jpg"


# -- 5. credentials, redirect loops, encoded bodies ----------------------------------------
def test_credentials_are_sent_once_and_never_shown(tmp_path, sqlite_catalogue, cdn):
    dl = ImageDownloader(tmp_path / "dl")
    creds = f"user:{SECRET.replace('@', '%40')}"
    r = _import(sqlite_catalogue, tmp_path, [f"A,Auth,http://{creds}@{cdn.host}/private.jpg",
                                             f"B,Gone,http://user:{SECRET}@{cdn.host}/nope.jpg",
                                             f"C,Moved,http://{creds}@{cdn.host}/private-moved.jpg",
                                             f"D,No host,http://user:{SECRET}@/x.jpg"], dl)
    assert sqlite_catalogue.get_product("A").images[0].status == "ok"  # Basic auth from the URL
    assert sqlite_catalogue.get_product("C").images[0].status == "ok"
    moved = [h for t, h in cdn.requests if t == "/p1.jpg"]
    assert moved and "authorization" not in moved[0]  # not passed on to where a redirect points
    why = {p.sku: p for p in r.problems}
    assert why["B"].where == f"http://user:***@{cdn.host}/nope.jpg" and "HTTP 404" in why["B"].reason
    assert "names no host" in why["D"].reason and "user:***@" in why["D"].reason
    shown = json.dumps(r.to_dict())
    assert "s3cr" not in shown and "@t@" not in shown and "%40t" not in shown


def test_a_redirect_loop_is_one_line(tmp_path, cdn):
    res = _fetch_one(ImageDownloader(tmp_path / "dl"), f"{cdn.base}/loop.jpg")
    assert res.error == "too many redirects (over 10, or a loop)"


def test_encoded_bodies_are_decoded_within_the_size_cap_or_refused(tmp_path, cdn):
    dl = ImageDownloader(tmp_path / "dl", DownloadSettings(max_bytes=1 << 20))
    res = _fetch_one(dl, f"{cdn.base}/gz.jpg")
    assert res.error is None and res.path.read_bytes() == _jpeg(3)  # stored decoded
    assert cdn.requests[0][1]["accept-encoding"] == "identity"
    t0 = time.monotonic()
    bomb = _fetch_one(dl, f"{cdn.base}/bomb.jpg")  # 8 MB of zeros in a few KB: stops at the cap
    assert bomb.path is None and bomb.error == "over the 1,048,576-byte limit" and time.monotonic() - t0 < 2
    br = _fetch_one(dl, f"{cdn.base}/br.jpg")
    assert br.path is None and "'br' encoding, which is not decoded" in br.error


def test_the_cli_says_a_failed_refresh_kept_the_previous_picture(tmp_path, cdn):
    from click.testing import CliRunner

    from indexer.cli import cli

    feed = tmp_path / "feed.csv"
    feed.write_text(f"sku,title,images\nF,Flaky,{cdn.base}/flaky.jpg\n", encoding="utf-8")
    args, env = ["--data-dir", str(tmp_path / "var"), "catalogue", "import", str(feed)], {"SHOPSEARCH_DATABASE_URL": ""}
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    cdn.mode = "503"
    res = CliRunner().invoke(cli, [*args, "--refresh-downloads"], env=env)
    assert res.exit_code == 0, res.output
    line = next(s for s in res.output.splitlines() if "flaky.jpg" in s)
    assert line.strip().startswith(f"{cdn.base}/flaky.jpg (sku F): ") and line.endswith("the previous image was kept"), line
