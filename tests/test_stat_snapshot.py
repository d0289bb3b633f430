"""The stored stat snapshot: a rescan of an unchanged catalogue reads no image row, still sees
files changed on disk, stays exact across its own writes, is read anew when anyone else
changed the catalogue, and the "dirs" scope sees what moves a folder's mtime (and, as
documented, not a file rewritten in place)."""
from __future__ import annotations

import os

import pytest

from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.rescan import rescan_files
from shopsearch.catalogue.stat_snapshot import StatSnapshot
from tests.conftest import make_image


def _later(path, seconds: int = 10) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _setup(cat, tmp_path, n: int = 6):
    paths = []
    for i in range(n):
        d = tmp_path / f"dir{i % 2}"
        d.mkdir(exist_ok=True)
        p = d / f"p{i}.png"
        make_image(i).save(p)
        paths.append(p)
    import_catalogue(cat, [ProductRecord(f"P{i}", f"p{i}", images=(ImageRecord(str(p)),))
                           for i, p in enumerate(paths)], progress=False, workers=1)
    return paths, tmp_path / "index" / "stat_snapshot.npz"


def _no_rows(monkeypatch, cat):
    def refuse(*_a, **_k):
        raise AssertionError("the image rows were read")

    monkeypatch.setattr(type(cat), "image_stats", refuse)
    monkeypatch.setattr(type(cat), "images", refuse)


def test_unchanged_catalogue_is_rescanned_from_the_snapshot_and_sees_changes(tmp_path, catalogue, monkeypatch):
    paths, snap = _setup(catalogue, tmp_path)
    first = rescan_files(catalogue, progress=False, workers=1, snapshot=snap)
    assert first.rehashed == 0 and snap.is_file()
    with monkeypatch.context() as m:
        _no_rows(m, catalogue)
        assert rescan_files(catalogue, progress=False, workers=1, snapshot=snap).rehashed == 0
        make_image(100).save(paths[0]); _later(paths[0])  # rewritten in place
        paths[3].unlink()
        r = rescan_files(catalogue, progress=False, workers=1, snapshot=snap)
        assert (r.rehashed, r.changed, r.missing) == (2, 1, 1)
        # its own writes were applied to the snapshot: still no row read, nothing moved
        assert rescan_files(catalogue, progress=False, workers=1, snapshot=snap).rehashed == 0
    assert catalogue.get_product("P3").images[0].status == "missing"
    assert catalogue.get_product("P0").images[0].file_size == os.stat(paths[0]).st_size


def test_another_writer_makes_the_rescan_read_the_rows_again(tmp_path, catalogue, monkeypatch):
    paths, snap = _setup(catalogue, tmp_path)
    rescan_files(catalogue, progress=False, workers=1, snapshot=snap)
    extra = tmp_path / "dir0" / "new.png"
    make_image(50).save(extra)
    import_catalogue(catalogue, [ProductRecord("N", "n", images=(ImageRecord(str(extra)),))], progress=False,
                     workers=1)
    assert StatSnapshot.load(snap, catalogue.generation(), catalogue.source()) is None  # stale now
    calls = []
    real = type(catalogue).image_stats
    monkeypatch.setattr(type(catalogue), "image_stats", lambda self: calls.append(1) or real(self))
    assert rescan_files(catalogue, progress=False, workers=1, snapshot=snap).images == 7 and calls
    fresh = StatSnapshot.load(snap, catalogue.generation(), catalogue.source())
    assert fresh is not None and len(fresh.ids) == 7
    # a snapshot of another database is never used
    assert StatSnapshot.load(snap, catalogue.generation(), "sqlite:///elsewhere.db") is None
    # a damaged snapshot (cut short) is no snapshot: the rows are read instead, and it is taken again
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) // 2])
    assert StatSnapshot.load(snap, catalogue.generation(), catalogue.source()) is None
    assert StatSnapshot.folders_moved(snap, catalogue.generation(), catalogue.source()) is None
    assert rescan_files(catalogue, progress=False, workers=1, snapshot=snap).images == 7
    assert StatSnapshot.load(snap, catalogue.generation(), catalogue.source()) is not None


def test_a_snapshot_is_not_kept_when_the_catalogue_moved_during_the_rescan(tmp_path, catalogue):
    paths, snap = _setup(catalogue, tmp_path)
    rescan_files(catalogue, progress=False, workers=1, snapshot=snap)
    g = catalogue.generation()
    # what a concurrent writer looks like to record_file_checks: the generation is not the expected one
    img = catalogue.get_product("P1").images[0]
    from shopsearch.catalogue.records import FileCheck
    assert catalogue.record_file_checks([FileCheck(img.id, "ok", img.sha256, 96, 96, 1, 2)], g - 1) is None
    assert catalogue.record_file_checks([FileCheck(img.id, "ok", img.sha256, 96, 96, 1, 2)], g) == g


@pytest.mark.parametrize("scope", ["files", "dirs"])
def test_dirs_scope_sees_renames_and_deletions_but_not_rewrites_in_place(tmp_path, sqlite_catalogue, scope):
    cat = sqlite_catalogue
    paths, snap = _setup(cat, tmp_path)
    rescan_files(cat, progress=False, workers=1, snapshot=snap)
    make_image(200).save(paths[1]); _later(paths[1])  # in place: dir1's mtime stays
    tmp = tmp_path / "upload.png"  # written elsewhere, then renamed into place
    make_image(201).save(tmp)
    os.replace(tmp, paths[0])  # renamed over: dir0's mtime moves
    st = os.stat(paths[0].parent)  # (pushed forward too, for file systems with coarse clocks)
    os.utime(paths[0].parent, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = rescan_files(cat, progress=False, workers=1, snapshot=snap, scope=scope)
    assert r.changed == (2 if scope == "files" else 1)
    assert cat.get_product("P0").images[0].file_size == os.stat(paths[0]).st_size
    # the in-place rewrite is still found by the files scope afterwards
    assert rescan_files(cat, progress=False, workers=1, snapshot=snap).changed == (0 if scope == "files" else 1)


def test_dirs_scope_without_a_snapshot_stats_every_file(tmp_path, sqlite_catalogue):
    paths, snap = _setup(sqlite_catalogue, tmp_path)
    make_image(300).save(paths[1]); _later(paths[1])
    assert rescan_files(sqlite_catalogue, progress=False, workers=1, snapshot=snap, scope="dirs").changed == 1


def test_quick_status_sees_folders_that_moved_since_the_last_rescan(tmp_path, sqlite_catalogue):
    from indexer.build import IndexBuilder
    from indexer.status import index_status
    from shopsearch.index import IndexStore
    from tests.conftest import FakeEmbedder

    paths, _ = _setup(sqlite_catalogue, tmp_path)
    store = IndexStore(tmp_path / "index")
    IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors").build(progress=False)
    quick = index_status(sqlite_catalogue, store, deep=False)
    assert quick.up_to_date and quick.folders_changed_on_disk == 0
    paths[2].unlink()  # dir0 moves
    st = os.stat(paths[2].parent)
    os.utime(paths[2].parent, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    quick = index_status(sqlite_catalogue, store, deep=False)
    assert quick.folders_changed_on_disk == 1  # a hint: the ids still match
    deep = index_status(sqlite_catalogue, store, deep=True)
    assert deep.files_changed_on_disk == 1 and not deep.up_to_date


def test_quick_status_does_not_say_up_to_date_when_folders_moved(tmp_path):
    from click.testing import CliRunner

    from indexer.cli import cli

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "m.csv").write_text("sku,title,images\nA,a,imgs/0.png\nB,b,imgs/1.png\n")
    run = lambda *a: CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), *a], catch_exceptions=False)  # noqa: E731
    run("catalogue", "import", str(tmp_path / "m.csv"))
    run("index", "build", "--model", "colorhist")
    assert run("index", "status").output.strip().endswith("up to date")
    make_image(7).save(tmp_path / "imgs" / "new.png")
    st = os.stat(tmp_path / "imgs")
    os.utime(tmp_path / "imgs", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    out = run("index", "status").output
    assert "1 image folders changed" in out and not out.strip().endswith("up to date")
    assert "index status --deep" in out and "index update" in out
