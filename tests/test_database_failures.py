"""A catalogue database that fails under a running command (a read-only SQLite file or
PostgreSQL transaction, a database dropped mid-run) is a one-line [database_unavailable]
error with exit code 1 at the CLI, never a driver traceback; nothing written is lost."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from indexer.cli import cli
from shopsearch.catalogue import db as dbmod
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.errors import DatabaseUnavailableError
from tests.conftest import PG_URL, _pg_available, make_image


def _manifests(tmp_path):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(3):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "a.csv").write_text("sku,title,images\nA,Apple,imgs/0.png\n")
    (tmp_path / "b.csv").write_text("sku,title,images\nB,Pear,imgs/1.png\n")


def _run(tmp_path, url, *args):
    return CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "--database-url", url, *args])


def _read_only(url: str, tmp_path) -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///file:{tmp_path / 'var' / 'catalogue.db'}?mode=ro&uri=true"
    return url + "%20-cdefault_transaction_read_only%3Don"  # after the fixture's search_path option


@pytest.mark.parametrize("command", [["catalogue", "import", "b.csv"], ["catalogue", "delete", "A"],
                                     ["index", "build", "--model", "colorhist"]])
def test_a_read_only_database_is_one_line(tmp_path, db_url, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if db_url.startswith("sqlite"):
        db_url = f"sqlite:///{tmp_path / 'var' / 'catalogue.db'}"
    _manifests(tmp_path)
    assert _run(tmp_path, db_url, "catalogue", "import", "a.csv").exit_code == 0
    r = _run(tmp_path, _read_only(db_url, tmp_path), *command)
    assert r.exit_code == 1, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: the catalogue database failed: ") and last.endswith("[database_unavailable]")
    assert "read" in last.lower() and "Traceback" not in r.output
    assert CatalogueStore.open(db_url).get_product("A").title == "Apple"  # what was there stays


def test_a_database_dropped_under_a_running_store(tmp_path):
    if not _pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    name = f"gone_{os.getpid()}"
    admin = dbmod.make_engine(PG_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        c.execute(text(f"CREATE DATABASE {name}"))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    store = CatalogueStore.open(url)
    try:
        make_image(0).save(tmp_path / "a.png")
        import_catalogue(store, [ProductRecord("A", "Apple", images=(ImageRecord(str(tmp_path / "a.png")),))],
                         workers=1, progress=False)
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        with pytest.raises(DatabaseUnavailableError, match="the catalogue database failed: .*") as e:
            store.get_product("A")
        assert "\n" not in str(e.value)
    finally:
        store.close()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
