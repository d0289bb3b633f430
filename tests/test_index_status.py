"""`index status`: the quick check (counts and ids from the database, no file or hash read)
and the deep one (content hashes and files on disk), through the library and the CLI."""
from __future__ import annotations

import json
import os

from click.testing import CliRunner

from indexer.build import IndexBuilder
from indexer.cli import cli
from indexer.status import index_status
from shopsearch.catalogue import rescan
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image, sha


def _add(catalogue, tmp_path, i: int, seed: int | None = None) -> None:
    p = tmp_path / f"p{i}.png"
    make_image(i if seed is None else seed).save(p)
    st = os.stat(p)
    catalogue.upsert_product(ProductRecord(f"P{i}", f"product {i}", images=(
        ImageRecord(str(p), sha256=sha(p), file_size=st.st_size, file_mtime_ns=st.st_mtime_ns),)))


def test_quick_status_counts_ids_without_reading_files_deep_checks_content(tmp_path, catalogue, monkeypatch):
    for i in range(8):
        _add(catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors").build(progress=False, workers=1)
    quick = index_status(catalogue, store, deep=False)
    assert (quick.vectors, quick.images_ok, quick.missing, quick.stale, quick.up_to_date) == (8, 8, 0, 0, True)
    assert (quick.changed, quick.files_changed_on_disk, quick.deep) == (None, None, False)

    _add(catalogue, tmp_path, 8)  # new
    _add(catalogue, tmp_path, 9)
    catalogue.delete_products(["P2"])  # stale in the index
    _add(catalogue, tmp_path, 3, seed=103)  # new content under the same id: only the deep check sees it
    os.utime(tmp_path / "p4.png", ns=(0, 10**9))  # touched on disk: only the deep check stats files

    stat_calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *a, **k):
        if os.fsdecode(path).endswith(".png"):  # the deep check passes paths as bytes
            stat_calls.append(os.fsdecode(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(rescan.os, "stat", counting_stat)
    quick = index_status(catalogue, store, deep=False)
    assert (quick.missing, quick.stale, quick.images_ok, quick.up_to_date) == (2, 1, 9, False)
    assert stat_calls == []  # no file was looked at
    deep = index_status(catalogue, store, deep=True)
    assert (deep.missing, deep.stale, deep.changed, deep.files_changed_on_disk) == (2, 1, 1, 1)
    assert len(stat_calls) == 9


def test_cli_status_quick_and_deep(tmp_path):
    data = tmp_path / "data"
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    for i in range(3):
        _add(cat, tmp_path, i)
    run = CliRunner().invoke
    assert run(cli, ["--data-dir", str(data), "index", "build", "--model", "colorhist", "--json"]).exit_code == 0
    _add(cat, tmp_path, 1, seed=101)
    quick = run(cli, ["--data-dir", str(data), "index", "status"])
    assert quick.exit_code == 0 and "0 to add, 0 to remove (ids only; --deep" in quick.output
    deep = json.loads(run(cli, ["--data-dir", str(data), "index", "status", "--deep", "--json"]).output)
    assert (deep["changed"], deep["up_to_date"], deep["deep"]) == (1, False, True)
    cat.close()
