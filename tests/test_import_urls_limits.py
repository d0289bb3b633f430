"""Image URL downloads, probe findings: a name lookup that hangs is cut off at the download's
deadline, a gzip body of several members is decoded whole (a bomb still stops at the cap), one
import downloads a bounded number of bytes in all, and a URL that failed is stored, logged and
reported with its password masked. Servers are loopback HTTP servers (tests/conftest.py)."""
from __future__ import annotations

import gzip
import io
import json
import logging
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from shopsearch.catalogue.downloads import ImageDownloader
from shopsearch.config import DownloadSettings
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from shopsearch.config import Settings
from shopsearch.errors import ConfigError
from tests.conftest import ImageHandler, LoopbackServer, make_image

SECRET = "s3cr@t"  # percent-encoded in the URLs ("s3cr%40t")
LEAK = "s3cr"  # any trace of it, raw or encoded


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, "JPEG")
    return buf.getvalue()


def _gzipped(*members: bytes) -> bytes:
    return b"".join(gzip.compress(m) for m in members)


class Shop:
    """/p<i>.jpg images, gzip bodies of several members under /gz/..., 404 otherwise; `requests`
    keeps each path asked for."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        shop = self
        half = len(_jpeg(3)) // 2
        encoded = {
            "two.jpg": _gzipped(_jpeg(3)[:half], _jpeg(3)[half:]),
            "padded.jpg": _gzipped(_jpeg(3)[:half], _jpeg(3)[half:]) + b"\0" * 16,
            "bomb.jpg": _gzipped(*[b"\xff\xd8" + b"\0" * (400 << 10)] * 4),  # 1.6 MB from 4 small members
            "cut.jpg": _gzipped(_jpeg(3)[:half]) + gzip.compress(_jpeg(3)[half:])[:-12],
        }

        class Handler(ImageHandler):
            def do_GET(self) -> None:
                shop.requests.append(self.path)
                name = self.path.lstrip("/")
                if name.startswith("p") and name.endswith(".jpg") and name[1:-4].isdigit():
                    return self.send_image(_jpeg(int(name[1:-4])))
                body = encoded.get(name.removeprefix("gz/"))
                if body is None:
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self.http = LoopbackServer(Handler)
        self.base = f"http://127.0.0.1:{self.http.port}"


@pytest.fixture
def shop():
    s = Shop()
    yield s
    s.http.close()


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _fetch_one(dl: ImageDownloader, url: str):
    return dl.fetch_all([url], progress=False)[url]


def _import(store, tmp_path: Path, rows: list[str], dl: ImageDownloader):
    feed = tmp_path / "feed.csv"
    feed.write_text("\n".join(["sku,title,images", *rows]) + "\n", encoding="utf-8")
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(feed, "csv", problems), problems, workers=1, progress=False,
                            downloader=dl)


# -- 1. the name lookup counts against the download's deadline ---------------------------------
def test_a_name_lookup_that_hangs_fails_at_the_deadline(tmp_path, monkeypatch, no_proxy):
    real = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host == "hangs.example":
            time.sleep(5)  # a resolver that never answers in time
        if host == "nowhere.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    dl = ImageDownloader(tmp_path / "dl", DownloadSettings(timeout_s=1.0))
    t0 = time.monotonic()
    res = _fetch_one(dl, "http://hangs.example/x.jpg")
    took = time.monotonic() - t0
    assert res.path is None and res.error == "no answer within 1 s", res.error  # a timeout's reason
    assert took < 1.0 + 0.6, took
    # a lookup that fails is still that failure, in words
    gone = _fetch_one(dl, "http://nowhere.example/x.jpg")
    assert gone.error.startswith("cannot connect: ") and "Name or service not known" in gone.error, gone.error


# -- 2. gzip bodies of several members ---------------------------------------------------------
def test_every_gzip_member_is_decoded_and_a_bomb_of_members_still_stops(tmp_path, shop, no_proxy):
    dl = ImageDownloader(tmp_path / "dl", DownloadSettings(max_bytes=1 << 20))
    for name in ("two.jpg", "padded.jpg"):  # trailing zero padding is ignored, as gzip(1) does
        res = _fetch_one(dl, f"{shop.base}/gz/{name}")
        assert res.error is None and res.path.read_bytes() == _jpeg(3), (name, res.error)
    t0 = time.monotonic()
    bomb = _fetch_one(dl, f"{shop.base}/gz/bomb.jpg")
    assert bomb.path is None and bomb.error == "over the 1,048,576-byte limit" and time.monotonic() - t0 < 2
    cut = _fetch_one(dl, f"{shop.base}/gz/cut.jpg")  # the second member ends early
    assert cut.path is None and cut.error == "the compressed body is truncated", cut.error


# -- 3. a cap on the bytes one import downloads ------------------------------------------------
def test_an_import_stops_downloading_at_its_byte_cap(tmp_path, sqlite_catalogue, shop, no_proxy):
    cap = len(_jpeg(1)) + 400  # the first answer (headers and all) fits; the second does not
    dl = ImageDownloader(tmp_path / "dl", DownloadSettings(concurrency=1, max_total_bytes=cap))
    rows = [f"A,Apple,{shop.base}/p1.jpg", f"B,Pear,{shop.base}/p2.jpg", f"C,Plum,{shop.base}/p3.jpg"]
    r = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert shop.requests == ["/p1.jpg", "/p2.jpg"]  # B stopped mid-way; C never asked for
    assert (r.images_downloaded, r.images_ok, r.images_failed) == (1, 1, 2)
    why = {p.sku: p.reason for p in r.problems}
    assert set(why) == {"B", "C"}
    for reason in why.values():
        assert reason == (f"download failed: not downloaded: this import reached its limit of {cap:,} bytes "
                          "downloaded in all (SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES); import again to fetch the rest")
    assert not any((tmp_path / "dl").rglob("*.part*"))
    # the cap is per import: each next one fetches what is left (one image's worth), not what is there
    shop.requests[:] = []
    r = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert shop.requests == ["/p2.jpg", "/p3.jpg"] and (r.images_ok, r.images_failed) == (2, 1)
    shop.requests[:] = []
    r = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert shop.requests == ["/p3.jpg"] and (r.images_ok, r.images_failed, r.images_downloaded) == (3, 0, 1)


def test_the_cap_is_a_setting():
    assert Settings.from_env({}).downloads.max_total_bytes == 4 << 30
    assert Settings.from_env({"SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES": "1000"}).downloads.max_total_bytes == 1000
    with pytest.raises(ConfigError, match="SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES"):
        Settings.from_env({"SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES": "lots"})


# -- 4. a failed URL's password is stored, logged and reported masked ---------------------------
def _db_text(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return "\n".join(db.iterdump())


def test_a_failed_url_is_stored_and_logged_with_its_password_masked(tmp_path, sqlite_catalogue, shop, caplog,
                                                                    no_proxy):
    creds = f"user:{SECRET.replace('@', '%40')}"
    host = shop.base.removeprefix("http://")
    rows = [f"A,Gone,http://{creds}@{host}/nope.jpg",
            # two URLs that differ only in their password: one image once masked, no clash
            f"B,Twice,http://{creds}@{host}/nope.jpg|http://user:other@{host}/nope.jpg"]
    dl = ImageDownloader(tmp_path / "dl")
    # a handler on the shopsearch logger itself: a CLI run earlier in this process may have
    # stopped its records from propagating to caplog's root handler (shopsearch.logs.configure)
    logger = logging.getLogger("shopsearch")
    saved_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    try:
        r = _import(sqlite_catalogue, tmp_path, rows, dl)
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(saved_level)
    assert r.images_failed == 3 and r.products_created == 2
    masked = f"http://user:***@{host}/nope.jpg"
    for sku in ("A", "B"):
        [image] = sqlite_catalogue.get_product(sku).images
        assert (image.path, image.status, image.error) == (masked, "invalid", "download failed: HTTP 404 Not Found")
    text = _db_text(tmp_path / "catalogue.db")
    assert masked in text and LEAK not in text and "other@" not in text
    logged = caplog.text + "".join(json.dumps(rec.__dict__, default=str) for rec in caplog.records)
    assert "import problem" in logged and LEAK not in logged
    assert LEAK not in json.dumps(r.to_dict())
    # the next import of the same rows finds them as stored: nothing changes
    again = _import(sqlite_catalogue, tmp_path, rows, dl)
    assert (again.products_unchanged, again.products_updated, again.images_removed) == (2, 0, 0)


def _cli(data: Path, feed: Path, *args: str, **env: str):
    """`shopsearch catalogue import` with DEBUG logs (JSON lines on stderr, in the output)."""
    from indexer.cli import cli

    logger = logging.getLogger("shopsearch")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        return CliRunner().invoke(cli, ["--data-dir", str(data), "--log-level", "DEBUG", "catalogue", "import",
                                        str(feed), *args], env={"SHOPSEARCH_DATABASE_URL": "", **env})
    finally:  # the CLI configured the logger tree for its run only
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


@pytest.mark.parametrize("as_json", [False, True])
def test_the_cli_shows_no_password_of_a_failed_url(tmp_path, shop, as_json, no_proxy):
    host = shop.base.removeprefix("http://")
    feed = tmp_path / "feed.csv"
    feed.write_text(f"sku,title,images\nA,Apple,{shop.base}/p1.jpg\n"
                    f"B,Gone,http://user:{SECRET.replace('@', '%40')}@{host}/nope.jpg\n")
    data = tmp_path / "var"
    res = _cli(data, feed, *(["--json"] if as_json else []))
    assert res.exit_code == 0, (res.output, res.exception)
    masked = f"http://user:***@{host}/nope.jpg"
    assert LEAK not in res.output and masked in res.output, res.output  # report and log lines alike
    if as_json:
        [problem] = json.loads(res.stdout)["problems"]
        assert (problem["where"], problem["reason"]) == (masked, "download failed: HTTP 404 Not Found")
    assert LEAK not in _db_text(data / "catalogue.db")


def test_the_cli_passes_the_cap_down(tmp_path, shop, no_proxy):
    feed = tmp_path / "feed.csv"
    feed.write_text(f"sku,title,images\nA,Apple,{shop.base}/p1.jpg\n")
    res = _cli(tmp_path / "var", feed, "--json", SHOPSEARCH_DOWNLOAD_MAX_TOTAL_BYTES="100")
    assert res.exit_code == 1  # the one image named could not be had
    [problem] = json.loads(res.stdout)["problems"]
    assert "this import reached its limit of 100 bytes downloaded in all" in problem["reason"]
