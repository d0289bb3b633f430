"""/healthz (liveness) and /readyz (readiness): a database that goes away, one that hangs,
index files that vanish, and a broken CURRENT build served from the previous one (degraded)."""
from __future__ import annotations

import re
import shutil
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from indexer.build import IndexBuilder
from indexer.cli import cli
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.config import Settings
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image, sha
from tests.test_webapp import app_for, make_site
from webapp.health import DatabaseProbe


def add_and_build(settings: Settings, i: int) -> str:
    """One more product, then a new build; returns its id."""
    cat = CatalogueStore.open(settings.db_url)
    p = settings.data_dir.parent / f"more_{i}.png"
    make_image(i).save(p)
    cat.upsert_product(ProductRecord(sku=f"M{i}", title=f"More {i}", category_path=("Things",),
                                     images=(ImageRecord(str(p), sha256=sha(p)),)))
    report = IndexBuilder(FakeEmbedder(), cat, IndexStore(settings.index_dir), settings.vector_cache_dir).build(
        progress=False, workers=1)
    cat.close()
    return report.build_id


def test_ready_and_alive(tmp_path):
    app = app_for(make_site(tmp_path, n=3))
    c = app.test_client()
    for prefix in ("/api/v1", ""):  # probes usually look at the root
        live = c.get(f"{prefix}/healthz")
        assert live.status_code == 200 and live.json["status"] == "ok" and live.json["index_loaded"] is True
        # public: what monitoring needs (the build served), nothing about the process (probe fix: no pid)
        assert live.json["build_id"] and live.json["vectors"] == 6 and "pid" not in live.json
        assert not set(live.json) - set(c.get("/api/v1/openapi.json").json["components"]["schemas"]["Health"]
                                        ["properties"])
        ready = c.get(f"{prefix}/readyz")
        assert ready.status_code == 200 and ready.json["status"] == "ready" and ready.json["reasons"] == []
        assert ready.json["vectors"] == 6 and "degraded" not in ready.json


def test_database_gone_is_not_ready(tmp_path, db_url):
    settings = make_site(tmp_path, n=3, database_url=db_url)
    app = app_for(settings)
    c = app.test_client()
    assert c.get("/readyz").status_code == 200
    eng = CatalogueStore.open(db_url, migrate=False).engine
    with eng.begin() as conn:
        if db_url.startswith("postgresql"):  # the tests' stand-in for DROP DATABASE: the schema goes
            schema = re.search(r"search_path%3D(\w+)", db_url).group(1)
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        else:
            for table in ("product_images", "index_builds", "products", "categories"):
                conn.execute(text(f"DROP TABLE {table}"))
    eng.dispose()
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "unavailable"
    assert len(r.json["reasons"]) == 1 and "catalogue database is unreachable" in r.json["reasons"][0]
    assert "/" not in r.json["reasons"][0]  # no paths, no URLs
    assert c.get("/healthz").status_code == 200  # alive: a restart would not bring the database back
    app.extensions["shopsearch"].close()


def test_hung_database_answers_within_the_timeout(tmp_path, monkeypatch):
    release = []

    def hang(self):
        while not release:
            time.sleep(0.05)

    monkeypatch.setattr(DatabaseProbe, "_query", hang)
    app = app_for(make_site(tmp_path, n=2), READY_DB_TIMEOUT_S=0.3)
    c = app.test_client()
    t0 = time.monotonic()
    r = c.get("/readyz")
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 503 and r.json["reasons"] == ["the database did not answer within 0.3 s"]
    r = c.get("/readyz")  # the stuck check is not piled onto
    assert r.status_code == 503 and "has not answered an earlier check" in r.json["reasons"][0]
    release.append(True)
    time.sleep(0.2)
    monkeypatch.undo()
    assert c.get("/readyz").status_code == 200


def test_index_files_gone_is_not_ready(tmp_path):
    settings = make_site(tmp_path, n=2)
    app = app_for(settings)
    c = app.test_client()
    assert c.get("/readyz").status_code == 200
    shutil.rmtree(settings.index_dir)
    r = c.get("/readyz")
    assert r.status_code == 503 and "files of the serving index build are gone" in r.json["reasons"][0]


@pytest.mark.parametrize("damage", ["missing_build", "corrupt_index", "missing_pointer"])
def test_broken_current_build_falls_back_to_previous(tmp_path, damage):
    settings = make_site(tmp_path, n=3)
    store = IndexStore(settings.index_dir)
    first = store.current_id()
    second = add_and_build(settings, 7)
    assert store.current_id() == second and store.previous_id() == first
    if damage == "missing_build":
        shutil.rmtree(store.build_dir(second))
    elif damage == "corrupt_index":
        f = store.build_dir(second) / "index.faiss"
        f.write_bytes(f.read_bytes()[:-7] + b"garbage")
    else:
        (settings.index_dir / "CURRENT").unlink()
    app = app_for(settings)
    c = app.test_client()
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "degraded" and r.json["build_id"] == first
    assert "previous build" in r.json["degraded"] and str(tmp_path) not in r.json["degraded"]
    hits = c.post("/api/v1/search", data=make_png(1), content_type="application/octet-stream")
    assert hits.status_code == 200 and hits.json["build_id"] == first
    # the CLI says so too, instead of "no index yet"
    result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "index", "status"])
    assert "no index yet" not in result.output
    if damage != "corrupt_index":  # a checksum is only verified when the index is loaded
        assert "degraded" in result.output and f"serving build {first}" in result.output
    # a new build keeps the intact one as PREVIOUS, not the broken one
    third = add_and_build(settings, 8)
    assert store.current_id() == third and store.previous_id() in (first, second)
    if damage != "corrupt_index":
        assert store.previous_id() == first
    r = c.get("/readyz")
    assert r.json["status"] == "ready" and r.json["build_id"] == third


def make_png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    make_image(i).save(buf, "PNG")
    return buf.getvalue()
