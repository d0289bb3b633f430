"""Image URLs after the import, through the CLI: a URL's password shows in no command's output
(`catalogue problems`, `catalogue show`, `index build|update`), `index update` never takes a URL
for a file name (a failed download keeps its reason; a downloaded image's local copy is what it
checks), and `index update --force` says what it reused. The images come from a local HTTP server
on loopback that asks for the URL's credentials."""
from __future__ import annotations

import base64
import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from indexer.build_types import BuildReport
from indexer.cli import cli
from indexer.cli.index_cmds import _print_report
from shopsearch.catalogue.download_http import mask_url
from shopsearch.catalogue.downloads import ImageDownloader
from shopsearch.catalogue.stat_snapshot import SNAPSHOT_FILE
from tests.conftest import ImageHandler, LoopbackServer, make_image

SECRET = "s3cr@t"  # sent percent-encoded in the URLs; no output may hold any part of it
LEAK = "s3cr"  # what a leak shows, raw ("s3cr@t") or encoded ("s3cr%40t")
AUTH = "Basic " + base64.b64encode(f"shop:{SECRET}".encode()).decode()


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    make_image(i).save(buf, "JPEG")
    return buf.getvalue()


class Shop:
    """/p<i>.jpg images for the credentials shop:SECRET only (401 without); /later.jpg 404s
    until `later` is set. `requests` keeps each path asked for."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.later = False
        shop = self

        class Handler(ImageHandler):
            def do_GET(self) -> None:
                shop.requests.append(self.path)
                name = self.path.lstrip("/")
                if self.headers.get("Authorization") != AUTH:
                    return self.send_error(401)
                if name.startswith("p") and name.endswith(".jpg") and name[1:-4].isdigit():
                    return self.send_image(_jpeg(int(name[1:-4])))
                if name == "later.jpg" and shop.later:
                    return self.send_image(_jpeg(7))
                return self.send_error(404)

        self.http = LoopbackServer(Handler)
        #: every image URL carries the credentials, the password percent-encoded as a feed holds it
        self.base = f"http://shop:{SECRET.replace('@', '%40')}@127.0.0.1:{self.http.port}"

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def shop():
    s = Shop()
    yield s
    s.close()


def _run(data: Path, *args: str, ok: bool = True) -> Result:
    res = CliRunner().invoke(cli, ["--data-dir", str(data), *args], env={"SHOPSEARCH_DATABASE_URL": ""})
    if ok:
        assert res.exit_code == 0, (res.output, res.exception)
    assert LEAK not in res.output, f"password shown by {args}: {res.output}"
    return res


def _feed(tmp_path: Path, shop: Shop) -> Path:
    """A (downloads), B (downloads), C (404 until shop.later)."""
    feed = tmp_path / "feed.csv"
    feed.write_text(f"sku,title,images\nA,Apple,{shop.base}/p1.jpg\nB,Pear,{shop.base}/p2.jpg\n"
                    f"C,Plum,{shop.base}/later.jpg\n")
    return feed


@pytest.fixture
def indexed(tmp_path, shop):
    """The feed imported and indexed (colorhist): the data dir; each command's output checked for the password."""
    data = tmp_path / "var"
    _run(data, "catalogue", "import", str(_feed(tmp_path, shop)))
    build = _run(data, "index", "build", "--model", "colorhist", "--workers", "1")
    # the build's own rescan leaves the failed URL alone: it is no missing file
    assert "no such file" not in build.output and "failed image" not in build.output, build.output
    return data


def _problems(data: Path) -> list[dict]:
    return json.loads(_run(data, "catalogue", "problems", "--json").stdout)["images"]


def test_no_command_shows_the_password_of_an_image_url(indexed, shop):
    masked = shop.base.replace(SECRET.replace("@", "%40"), "***")
    text = _run(indexed, "catalogue", "problems").stdout
    assert text.split("\n")[0] == f"C\tinvalid\t{masked}/later.jpg\tdownload failed: HTTP 404 Not Found"
    [bad] = _problems(indexed)
    assert (bad["sku"], bad["path"], bad["status"]) == ("C", f"{masked}/later.jpg", "invalid")
    shown = json.loads(_run(indexed, "catalogue", "show", "C").stdout)
    assert shown["images"][0]["path"] == f"{masked}/later.jpg"
    for args in (("update",), ("update", "--json"), ("update", "--force"), ("update", "--force", "--json")):
        _run(indexed, "index", *args, "--workers", "1")  # _run fails on any trace of the password
    _run(indexed, "index", "status", "--deep")


def test_update_checks_downloaded_copies_and_keeps_the_download_problem(indexed, shop, tmp_path):
    update = json.loads(_run(indexed, "index", "update", "--workers", "1", "--json").stdout)
    assert update["failed"] == [] and (update["rescan"]["missing"], update["rescan"]["invalid"]) == (0, 0)
    [bad] = _problems(indexed)
    assert (bad["status"], bad["error"]) == ("invalid", "download failed: HTTP 404 Not Found")
    # nor does a failed download count as a file changed on disk
    status = json.loads(_run(indexed, "index", "status", "--deep", "--json").stdout)
    assert (status["up_to_date"], status["files_changed_on_disk"]) == (True, 0)

    # a downloaded image is checked by its local copy: deleting it is a missing file, named by its path
    copy = ImageDownloader(indexed / "downloads").local_path(f"{shop.base}/p1.jpg")
    copy.unlink()
    res = _run(indexed, "index", "update", "--workers", "1", "--json")
    update = json.loads(res.stdout)
    assert (update["rescan"]["missing"], update["removed"], update["vectors"]) == (1, 1, 1)
    assert [(f["path"], f["reason"]) for f in update["failed"]] == [(str(copy), f"no such file: {copy}")]
    assert {b["sku"]: (b["status"], b["error"]) for b in _problems(indexed)} == {
        "A": ("missing", f"no such file: {copy}"), "C": ("invalid", "download failed: HTTP 404 Not Found")}

    # the next import fetches the failed URL (with its credentials) and the deleted copy again
    shop.later, shop.requests[:] = True, []
    _run(indexed, "catalogue", "import", str(_feed(tmp_path, shop)))
    assert sorted(shop.requests) == ["/later.jpg", "/p1.jpg"] and _problems(indexed) == []
    update = json.loads(_run(indexed, "index", "update", "--workers", "1", "--json").stdout)
    assert (update["added"], update["embedded"], update["vectors"], update["failed"]) == (2, 1, 3, [])


def test_a_snapshot_taken_before_the_fix_does_not_make_a_url_a_file(indexed):
    """A stored stat snapshot that expects a file for the failed URL (as older code wrote it, valid
    for the catalogue's generation) still gets no stat of it into the catalogue."""
    path = indexed / "index" / SNAPSHOT_FILE
    with np.load(path) as z:
        snap = {k: z[k] for k in z.files}
    assert snap["missing"].sum() == 1  # the URL: no file expected
    snap["missing"][:] = False
    np.savez(path, **snap)
    update = json.loads(_run(indexed, "index", "update", "--workers", "1", "--json").stdout)
    assert (update["rescan"]["rehashed"], update["rescan"]["missing"], update["failed"]) == (0, 0, [])
    [bad] = _problems(indexed)
    assert (bad["status"], bad["error"]) == ("invalid", "download failed: HTTP 404 Not Found")


def test_force_update_says_it_reused_the_cached_vectors(indexed):
    res = _run(indexed, "index", "update", "--force", "--workers", "1")
    line = next(x for x in res.stdout.splitlines() if x.startswith("build "))
    assert "(rebuild): 2 vectors" in line and "embedded 0, reused 2, failed 0" in line, line
    assert "rebuilt from the vector cache (forced)" in line
    report = json.loads(_run(indexed, "index", "update", "--force", "--workers", "1", "--json").stdout)
    # the JSON says what the text says: every vector a compaction did not embed came from the cache
    assert (report["mode"], report["embedded"], report["reused"], report["vectors"]) == ("rebuild", 0, 2, 2)
    assert set(report) == {
        "build_id", "model", "fingerprint", "index_type", "vectors", "embedded", "reused", "failed", "seconds",
        "images_per_s", "estimated_bytes", "mode", "rebuild_reason", "previous_build", "added", "changed",
        "removed", "unchanged", "trained_on", "added_since_training", "rescan", "up_to_date", "strategy",
        "segments", "adapt_rounds", "shopper_views", "recall_probe", "engine", "calibration"}


def test_an_error_an_older_rescan_recorded_is_masked_too(indexed, shop):
    """Before the fix a rescan stored "no such file: http:/shop:<password>@..." (pathlib's one slash)."""
    url = f"{shop.base}/later.jpg"
    with sqlite3.connect(indexed / "catalogue.db") as db:  # the failed URL is stored masked
        db.execute("UPDATE product_images SET status = 'missing', error = ? WHERE path = ?",
                   (f"no such file: {url.replace('//', '/', 1)}", mask_url(url)))
    [bad] = _problems(indexed)
    assert bad["error"] == f"no such file: {mask_url(url).replace('//', '/', 1)}" and "***" in bad["error"]
    assert "***" in _run(indexed, "catalogue", "problems").stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_build_report_failures_are_masked(capsys, as_json):
    url = f"https://shop:{SECRET}@cdn.example/x.jpg"
    report = BuildReport("b1", "colorhist", "fp", "flat", 1, 1, 0, ((7, url, f"cannot read {url}"),), 0.1, 10.0)
    _print_report(report, as_json)
    out = capsys.readouterr()
    assert LEAK not in out.out + out.err
    assert "https://shop:***@cdn.example/x.jpg" in (out.out if as_json else out.err)
