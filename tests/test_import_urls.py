"""Catalogue images named by URL (shopsearch.catalogue.downloads): downloaded once, imported like
files, each failure reported with its URL and reason; served from a local HTTP server on loopback."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.catalogue.downloads import ImageDownloader
from shopsearch.config import DownloadSettings
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.readers import RowProblem, read_source
from tests.conftest import ImageHandler, LoopbackServer, make_image


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, "JPEG")
    return buf.getvalue()


class Shop:
    """A CDN on loopback: /p<i>.jpg images, /changing.jpg (another picture each time), /slow.jpg,
    /huge.jpg, /text.jpg (not an image), /to-ftp.jpg (a redirect out of http); the rest 404."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.version = 0
        shop = self

        class Handler(ImageHandler):
            def do_GET(self) -> None:
                shop.requests.append(self.path)
                name = self.path.lstrip("/")
                if name.startswith("p") and name.endswith(".jpg") and name[1:-4].isdigit():
                    return self.send_image(_jpeg(int(name[1:-4])))
                if name == "changing.jpg":
                    return self.send_image(_jpeg(10 + shop.version))
                if name == "slow.jpg":
                    time.sleep(3)
                    return self.send_image(_jpeg(1))
                if name == "huge.jpg":
                    return self.send_image(b"\xff\xd8" + b"\0" * (3 << 20))
                if name == "text.jpg":
                    return self.send_image(b"<html>not a picture</html>")
                if name == "to-ftp.jpg":
                    self.send_response(302)
                    self.send_header("Location", "ftp://127.0.0.1/x.jpg")
                    self.end_headers()
                    return None
                self.send_error(404)
                return None

        self.http = LoopbackServer(Handler)
        self.base = f"http://127.0.0.1:{self.http.port}"

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def shop():
    s = Shop()
    yield s
    s.close()


def _import(store, manifest: Path, downloader: ImageDownloader | None, **kw):
    problems: list[RowProblem] = []
    return import_catalogue(store, read_source(manifest, "csv", problems), problems, workers=1, progress=False,
                            downloader=downloader, **kw)


def _manifest(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "feed.csv"
    p.write_text("\n".join(["sku,title,images", *rows]) + "\n")
    return p


def test_urls_downloaded_once_and_imported_like_files(tmp_path, catalogue, shop):
    dl = ImageDownloader(tmp_path / "downloads")
    feed = _manifest(tmp_path, [f"A,Apple,{shop.base}/p1.jpg", f"B,Pear,{shop.base}/p2.jpg|{shop.base}/p3.jpg"])
    r = _import(catalogue, feed, dl)
    assert (r.products_created, r.images_added, r.images_failed, r.images_downloaded) == (2, 3, 0, 3)
    b = catalogue.get_product("B")
    assert [i.status for i in b.images] == ["ok", "ok"]
    assert all(Path(i.path).is_relative_to(tmp_path / "downloads") and Path(i.path).is_file() for i in b.images)
    assert b.images[0].path == str(dl.local_path(f"{shop.base}/p2.jpg"))
    # a re-import of the same feed downloads nothing and reads nothing
    shop.requests.clear()
    r2 = _import(catalogue, feed, dl)
    assert shop.requests == [] and r2.images_downloaded == 0
    assert (r2.products_unchanged, r2.images_added, r2.images_decoded) == (2, 0, 0)
    # a row naming another URL replaces that product's image
    feed = _manifest(tmp_path, [f"A,Apple,{shop.base}/p4.jpg", f"B,Pear,{shop.base}/p2.jpg|{shop.base}/p3.jpg"])
    r3 = _import(catalogue, feed, dl)
    assert shop.requests == ["/p4.jpg"] and r3.images_replaced == ["A"] and r3.images_downloaded == 1
    assert catalogue.get_product("A").images[0].path == str(dl.local_path(f"{shop.base}/p4.jpg"))


def test_refresh_fetches_pictures_replaced_behind_the_same_url(tmp_path, catalogue, shop):
    dl = ImageDownloader(tmp_path / "downloads")
    feed = _manifest(tmp_path, [f"C,Changing,{shop.base}/changing.jpg"])
    _import(catalogue, feed, dl)
    first = catalogue.get_product("C").images[0].sha256
    shop.version = 1
    _import(catalogue, feed, dl)
    assert catalogue.get_product("C").images[0].sha256 == first  # not fetched again by default
    r = _import(catalogue, feed, dl, refresh_downloads=True)
    assert r.images_downloaded == 1 and catalogue.get_product("C").images[0].sha256 != first


def test_each_failure_is_reported_with_its_url_and_nothing_else_is_lost(tmp_path, catalogue, shop):
    dl = ImageDownloader(tmp_path / "downloads", DownloadSettings(timeout_s=1.0, max_bytes=1 << 20))
    base = shop.base
    feed = _manifest(tmp_path, [f"OK,Fine,{base}/p1.jpg", f"GONE,Gone,{base}/nope.jpg", f"SLOW,Slow,{base}/slow.jpg",
                                f"HUGE,Huge,{base}/huge.jpg", f"TEXT,Text,{base}/text.jpg",
                                f"FTP,Ftp,{base}/to-ftp.jpg", "DOWN,Down,http://127.0.0.1:9/x.jpg",
                                "NOHOST,No host,http:///x.jpg"])
    r = _import(catalogue, feed, dl)
    why = {p.sku: (p.where, p.reason) for p in r.problems}
    assert r.products_created == 7 and r.images_added == 1 and r.images_failed == 6
    assert why["GONE"] == (f"{base}/nope.jpg", "download failed: HTTP 404 Not Found")
    assert why["SLOW"][1] == "download failed: no answer within 1 s"
    assert "over the 1,048,576-byte limit" in why["HUGE"][1]
    assert why["TEXT"][0] == f"{base}/text.jpg" and "not an image" in why["TEXT"][1]  # named by its URL
    assert "not an http(s) address" in why["FTP"][1]
    assert why["DOWN"][1].startswith("download failed: cannot connect")
    assert "names no host" in why["NOHOST"][1] and "NOHOST" not in {p.sku for p in catalogue.products()}
    gone = catalogue.get_product("GONE").images[0]
    assert (gone.path, gone.status) == (f"{base}/nope.jpg", "invalid")
    # no half file is left under any name; only the downloads that decode as images are there
    files = sorted(p.name for p in (tmp_path / "downloads").rglob("*") if p.is_file())
    assert files == [dl.local_path(f"{base}/p1.jpg").name]
    # the next import tries the failed ones again
    shop.requests.clear()
    _import(catalogue, feed, dl)
    assert "/nope.jpg" in shop.requests and "/p1.jpg" not in shop.requests


def test_without_a_downloader_a_url_is_an_unusable_image(tmp_path, catalogue, shop):
    r = _import(catalogue, _manifest(tmp_path, [f"A,Apple,{shop.base}/p1.jpg"]), None)
    assert r.images_failed == 1 and "not downloaded" in r.problems[0].reason and shop.requests == []


def test_cli_import_of_a_feed(tmp_path, shop):
    feed = _manifest(tmp_path, [f"A,Apple,{shop.base}/p1.jpg", f"B,Pear,{shop.base}/nope.jpg"])
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "catalogue", "import", str(feed), "--json"],
                             env={"SHOPSEARCH_DATABASE_URL": ""})
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["images_downloaded"] == 1 and report["images_failed"] == 1
    assert (tmp_path / "var" / "downloads").is_dir()
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "catalogue", "import", str(feed)],
                             env={"SHOPSEARCH_DATABASE_URL": ""})
    assert res.exit_code == 0 and "downloaded" not in res.stdout.split("\n")[-2], res.output
    assert f"{shop.base}/nope.jpg (sku B): download failed: HTTP 404" in res.output
