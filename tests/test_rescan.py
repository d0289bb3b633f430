"""Files replaced, deleted, corrupted, touched or restored on disk after the import: `index
update` notices them without a re-import, re-hashing only files whose stat moved."""
from __future__ import annotations

import json
import os
import shutil

from click.testing import CliRunner

from indexer.build import IndexBuilder
from indexer.cli import cli
from indexer.status import index_status
from shopsearch.catalogue import importers, rescan
from shopsearch.catalogue.importers import import_catalogue
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image


def _catalogue(cat, tmp_path, n: int = 6):
    d = tmp_path / "imgs"
    d.mkdir()
    paths = []
    for i in range(n):
        p = d / f"p{i}.png"
        make_image(i).save(p)
        paths.append(p)
    recs = [ProductRecord(f"P{i}", f"product {i}", images=(ImageRecord(str(p)),)) for i, p in enumerate(paths)]
    import_catalogue(cat, recs, progress=False, workers=1)
    return paths


def _image_id(cat, sku: str) -> int:
    return cat.get_product(sku).images[0].id


def _later(path, seconds: int = 10) -> None:
    """Move a file's mtime forward (filesystems with coarse clocks would not see a quick rewrite)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_update_notices_files_changed_on_disk(tmp_path, catalogue, monkeypatch):
    paths = _catalogue(catalogue, tmp_path)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, catalogue, store, tmp_path / "vectors")
    first = b.build(progress=False)
    assert first.vectors == 6 and first.rescan.rehashed == 0  # the import recorded every stat
    assert index_status(catalogue, store).up_to_date

    make_image(100).save(paths[0]); _later(paths[0])  # P0's photo replaced in place
    paths[1].unlink()  # P1's photo deleted
    paths[2].write_bytes(paths[2].read_bytes()[:200]); _later(paths[2])  # P2's photo truncated
    _later(paths[3])  # P3's photo touched, same bytes
    st = index_status(catalogue, store)
    assert st.files_changed_on_disk == 4 and not st.up_to_date

    r = b.update(progress=False)
    scan = r.rescan
    assert (scan.rehashed, scan.changed, scan.missing, scan.invalid, scan.restored) == (4, 1, 1, 1, 0)
    assert r.embedded == 1 and emb.calls == 7  # only the replaced photo; the touched one is not re-embedded
    assert (r.update.changed, r.update.removed) == (1, 2)
    assert sorted(p.rsplit("/", 1)[1] for _, p, _ in r.failed) == ["p1.png", "p2.png"]
    index, _ = store.load_current()
    assert set(index.ids().tolist()) == {_image_id(catalogue, f"P{i}") for i in (0, 3, 4, 5)}
    # the index now finds the new content under P0's image id
    want = emb.encode_images([make_image(100)])[0]
    assert index.search(want[None], 1)[1][0, 0] == _image_id(catalogue, "P0")
    assert {catalogue.get_product(s).images[0].status for s in ("P1", "P2")} == {"missing", "invalid"}
    st = index_status(catalogue, store)
    assert st.up_to_date and st.files_changed_on_disk == 0

    # nothing moved: no file is read again (the truncated one stays recorded as unusable)
    reads = []
    real_check = importers.check_image_file
    monkeypatch.setattr(importers, "check_image_file", lambda p: reads.append(p) or real_check(p))
    assert b.rescan(progress=False).rehashed == 0 and reads == []

    # the deleted photo comes back: restored, and its vector comes from the cache, not the model
    make_image(1).save(paths[1])
    r = b.update(progress=False)
    assert r.rescan.restored == 1 and r.embedded == 0 and r.vectors == 5
    assert _image_id(catalogue, "P1") in set(store.load_current()[0].ids().tolist())


def test_rows_without_a_recorded_stat_are_hashed_once(tmp_path, sqlite_catalogue):
    """Images imported before migration 0002 have no stat: the first rescan hashes them, once."""
    paths = _catalogue(sqlite_catalogue, tmp_path, n=3)
    img = sqlite_catalogue.get_product("P0").images[0]
    sqlite_catalogue.update_image_file(img.id, "ok", img.sha256, img.width, img.height, None, None)
    first = rescan.rescan_files(sqlite_catalogue, progress=False)
    assert (first.rehashed, first.changed) == (1, 0)
    assert rescan.rescan_files(sqlite_catalogue, progress=False).rehashed == 0
    assert os.stat(paths[0]).st_size == sqlite_catalogue.get_product("P0").images[0].file_size


def test_reimport_of_a_touched_file_is_not_an_update(tmp_path, sqlite_catalogue):
    paths = _catalogue(sqlite_catalogue, tmp_path, n=2)
    _later(paths[0])
    recs = [ProductRecord(f"P{i}", f"product {i}", images=(ImageRecord(str(p)),)) for i, p in enumerate(paths)]
    rep = import_catalogue(sqlite_catalogue, recs, progress=False, workers=1)
    assert (rep.products_updated, rep.products_unchanged) == (0, 2)
    assert sqlite_catalogue.get_product("P0").images[0].file_mtime_ns == os.stat(paths[0]).st_mtime_ns


def _cli_catalogue(tmp_path, ext: str):
    """Four one-image products imported and indexed (colorhist) through the CLI: (src, data, invoke)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        make_image(i).save(src / f"P{i}.{ext}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("sku,title,image\n" + "".join(f"P{i},product {i},{src / f'P{i}.{ext}'}\n" for i in range(4)))
    data = str(tmp_path / "var")
    run = CliRunner().invoke
    assert run(cli, ["--data-dir", data, "catalogue", "import", str(manifest)]).exit_code == 0
    assert run(cli, ["--data-dir", data, "index", "build", "--model", "colorhist", "--json"]).exit_code == 0
    return src, data, run


def test_cli_update_reports_disk_changes_and_no_rescan_skips_them(tmp_path):
    src, data, run = _cli_catalogue(tmp_path, "png")
    shutil.copy(src / "P3.png", src / "P0.png"); _later(src / "P0.png")
    res = run(cli, ["--data-dir", data, "index", "status", "--deep", "--json"])
    assert '"files_changed_on_disk": 1' in res.output
    skipped = run(cli, ["--data-dir", data, "index", "update", "--no-rescan", "--json"])
    assert skipped.exit_code == 0, skipped.output
    assert '"rescan": null' in skipped.output and '"changed": 0' in skipped.output
    res = run(cli, ["--data-dir", data, "index", "update"])
    assert res.exit_code == 0, res.output
    assert "files on disk: 1 changed, 0 missing" in res.output and "~1 changed" in res.output
    # P0 holds P3's bytes now: both are exact matches of P3's photo
    hits = json.loads(run(cli, ["--data-dir", data, "search", str(src / "P3.png"), "-k", "2", "--json"]).output)["results"]
    assert {h["sku"] for h in hits} == {"P0", "P3"} and min(h["score"] for h in hits) > 0.999


def test_verify_hashes_catches_a_rewrite_that_kept_size_and_mtime(tmp_path):
    """`cp -p`-style rewrites keep the stat: only --verify-hashes reads the bytes and sees them."""
    src, data, run = _cli_catalogue(tmp_path, "bmp")  # BMP: every 96x96 image has the same file size
    st = os.stat(src / "P0.bmp")
    make_image(9).save(tmp_path / "new.bmp")  # content no build has seen: it must be embedded
    shutil.copyfile(tmp_path / "new.bmp", src / "P0.bmp")
    os.utime(src / "P0.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(src / "P0.bmp").st_size == st.st_size

    plain = json.loads(run(cli, ["--data-dir", data, "index", "update", "--json"]).stdout)
    assert (plain["rescan"]["rehashed"], plain["embedded"]) == (0, 0)  # the stat check's blind spot
    res = run(cli, ["--data-dir", data, "index", "update", "--verify-hashes", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["rescan"]["rehashed"], report["rescan"]["changed"]) == (1, 1)
    assert (report["embedded"], report["changed"]) == (1, 1)
    hits = json.loads(run(cli, ["--data-dir", data, "search", str(tmp_path / "new.bmp"), "-k", "1", "--json"]).stdout)
    assert hits["results"][0]["sku"] == "P0" and hits["results"][0]["score"] > 0.999
    again = json.loads(run(cli, ["--data-dir", data, "index", "update", "--verify-hashes", "--json"]).stdout)
    assert (again["rescan"]["rehashed"], again["embedded"]) == (0, 0)
