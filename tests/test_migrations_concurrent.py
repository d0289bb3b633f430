"""Migrations are serialised: several first runs on one brand-new database (two `catalogue
import`s started together into a new data dir) all open it, and its schema is made once."""
from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from shopsearch.app import open_catalogue
from shopsearch.catalogue import db as dbmod
from shopsearch.config import Settings

N = 4


def _settings(db_url: str, tmp_path: Path) -> Settings:
    """What `shopsearch catalogue import` opens: SQLite under a new data dir, or the URL given."""
    if db_url.startswith("sqlite"):
        return Settings(data_dir=tmp_path / "data")
    return Settings(data_dir=tmp_path / "data", database_url=db_url)


def _open_once(settings: Settings, barrier, results) -> None:
    """One first run: wait until all are ready, then open (and so migrate) the catalogue."""
    barrier.wait(timeout=60)
    try:
        store = open_catalogue(settings)
        store.close()
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - the parent reports whatever a run died of
        results.put(f"{type(e).__name__}: {e}")


def _assert_at_head(url: str) -> None:
    engine = dbmod.make_engine(url)
    try:
        assert dbmod.current_revision(engine) == dbmod.head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert {"categories", "products", "product_images"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_parallel_first_runs_in_processes_all_succeed(db_url, tmp_path):
    settings = _settings(db_url, tmp_path)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(N), ctx.Queue()
    procs = [ctx.Process(target=_open_once, args=(settings, barrier, results)) for _ in range(N)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok"] * N
    assert [p.exitcode for p in procs] == [0] * N
    _assert_at_head(settings.db_url)


def test_parallel_first_runs_in_threads_all_succeed(db_url, tmp_path):
    """Threads of one process too (each its own engine, as two stores opened at once would be)."""
    import queue

    settings = _settings(db_url, tmp_path)
    barrier, results = threading.Barrier(N), queue.Queue()
    threads = [threading.Thread(target=_open_once, args=(settings, barrier, results)) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results.get_nowait() for _ in threads] == ["ok"] * N
    _assert_at_head(settings.db_url)


def test_a_migration_failing_midway_leaves_sqlite_at_the_previous_revision(tmp_path):
    """0003 creates three tables; the third collides, so 0003 fails after making the first two.
    They must go with it: pysqlite would otherwise commit each CREATE at once, leaving a schema
    stamped 0002 that holds half of 0003 and that no later upgrade can get past."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = dbmod.make_engine(url)
    dbmod.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE feedback_events (x INTEGER)"))  # 0003's third table
    tables = set(inspect(engine).get_table_names())
    with pytest.raises(Exception, match="feedback_events"):
        dbmod.upgrade(engine)
    assert dbmod.current_revision(engine) == "0002"
    assert set(inspect(engine).get_table_names()) == tables  # no search_log, no search_log_hits
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE feedback_events"))
    assert dbmod.upgrade(engine) == dbmod.head_revision()  # and the next try gets through
    engine.dispose()


def test_a_migration_failing_midway_leaves_a_new_sqlite_file_empty(tmp_path):
    """The very first migration too: a failed first run leaves no half-made schema behind."""
    engine = dbmod.make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE index_builds (x INTEGER)"))  # 0001's last table
    with pytest.raises(Exception, match="index_builds"):
        dbmod.upgrade(engine)
    assert set(inspect(engine).get_table_names()) == {"index_builds"}
    assert dbmod.current_revision(engine) is None
    engine.dispose()
