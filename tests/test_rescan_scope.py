"""The rescan scopes on a catalogue larger than one rolling window (ROLL_MIN made small here):
`index update` finds exactly the files changed on disk, with the default "auto" scope and with
"files"; "auto" stats the folders that moved and one window of the other files per rescan, so
a file rewritten in place (its folder's mtime unchanged) is found within ROLL_PARTS rescans."""
from __future__ import annotations

import os

import pytest

from indexer.build import IndexBuilder
from shopsearch.catalogue import stat_snapshot
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image

N, FOLDERS = 40, 4


@pytest.fixture
def small_window(monkeypatch):
    """Windows of 5 files, all 40 seen once per 8 rescans (the defaults: 65,536, 1/16)."""
    monkeypatch.setattr(stat_snapshot, "ROLL_MIN", 5)
    monkeypatch.setattr(stat_snapshot, "ROLL_PARTS", 8)


def _push(folder) -> None:
    """Move a folder's mtime forward (file systems with coarse clocks would not show a quick change)."""
    st = os.stat(folder)
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _later(path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 * 10**9))


def _replace(path, seed: int) -> None:
    """A new picture written beside and renamed over (uploaders, rsync, mv): the folder moves."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    make_image(seed).save(tmp)
    os.replace(tmp, path)
    _push(path.parent)


def _setup(cat, tmp_path):
    paths = []
    for i in range(N):
        d = tmp_path / f"dir{i % FOLDERS}"
        d.mkdir(exist_ok=True)
        paths.append(d / f"p{i}.png")
        make_image(i).save(paths[-1])
    import_catalogue(cat, [ProductRecord(f"P{i}", f"p{i}", images=(ImageRecord(str(p)),))
                           for i, p in enumerate(paths)], progress=False, workers=1)
    emb = FakeEmbedder()
    b = IndexBuilder(emb, cat, IndexStore(tmp_path / "index"), tmp_path / "vectors")
    assert b.build(progress=False).vectors == N
    return paths, b


@pytest.mark.parametrize("scope", ["auto", "files"])
def test_update_finds_exactly_the_files_changed_added_and_removed(tmp_path, catalogue, small_window, scope,
                                                                  monkeypatch):
    paths, b = _setup(catalogue, tmp_path)
    paths[7].unlink()  # gone before: recorded missing, comes back below
    paths[8].unlink()
    _push(paths[7].parent); _push(paths[8].parent)
    first = b.update(progress=False, rescan_scope=scope)
    assert first.rescan.missing == 2 and first.vectors == N - 2
    ids = {p: catalogue.get_product(f"P{i}").images[0].id for i, p in enumerate(paths)}

    replaced = [paths[i] for i in (0, 5, 10, 17, 22)]  # new pictures, renamed over
    for j, p in enumerate(replaced):
        _replace(p, 1000 + j)
    removed = [paths[i] for i in (3, 14, 33)]
    for p in removed:
        p.unlink()
        _push(p.parent)
    restored = [paths[7], paths[8]]
    for j, p in enumerate(restored):
        make_image(2000 + j).save(p)
        _push(p.parent)
    def no_rows(*_a, **_k):
        raise AssertionError("the rescan's findings are the whole change: no id or hash is read")

    with monkeypatch.context() as m:
        m.setattr(type(catalogue), "indexable_keys", no_rows)
        r = b.update(progress=False, rescan_scope=scope)
    scan = r.rescan
    assert (scan.changed, scan.missing, scan.restored, scan.invalid) == (5, 3, 2, 0)
    assert scan.rehashed == 10  # exactly the ten files: nothing else was read
    assert r.embedded == 7 and r.vectors == N - 3
    assert (r.update.added, r.update.changed, r.update.removed) == (2, 5, 3)
    served = set(b.store.load_current()[0].ids().tolist())
    assert served == {ids[p] for p in paths} - {ids[p] for p in removed}
    # nothing moved since: the next rescan re-reads no file
    assert b.rescan(progress=False, scope=scope).rehashed == 0


def test_auto_scope_finds_a_rewrite_in_place_within_one_round_of_windows(tmp_path, catalogue, small_window):
    paths, b = _setup(catalogue, tmp_path)
    make_image(999).save(paths[23]); _later(paths[23])  # in place: dir3's mtime stays
    rounds = 0
    while True:
        rounds += 1
        scan = b.rescan(progress=False, scope="auto")
        assert scan.files_checked == 5  # one window (no folder moved)
        if scan.changed:
            break
        assert rounds < 8, "not found in a full round of windows"
    assert scan.rehashed == 1
    # "dirs" has no window: a rewrite in place stays unseen there, "files" sees it at once
    make_image(998).save(paths[31]); _later(paths[31])
    assert b.rescan(progress=False, scope="dirs").changed == 0
    full = b.rescan(progress=False, scope="files")
    assert (full.changed, full.files_checked) == (1, N)


def test_auto_scope_checks_every_file_of_a_small_catalogue(tmp_path, sqlite_catalogue):
    """Up to ROLL_MIN (65,536) images the window is the whole catalogue: every rescan sees a
    rewrite in place, as the files scope does."""
    paths, b = _setup(sqlite_catalogue, tmp_path)
    make_image(777).save(paths[2]); _later(paths[2])
    scan = b.rescan(progress=False)
    assert (scan.changed, scan.files_checked) == (1, N)
