"""Work proportional to the change: an up-to-date build does nothing, a small update publishes
a delta segment and tombstones beside the shared base segment, on every index type."""
from __future__ import annotations

import json
import os
import signal
import time

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

import indexer.update_plan as update_plan
from indexer.build import IndexBuilder
from indexer.cli import cli
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index import IndexStore
from shopsearch.index.segments import new_delta
from shopsearch.index.manifest import INDEX_FILE
from shopsearch.index.vector_index import VectorIndex
from tests.conftest import REPO, FakeEmbedder, make_image
from tests.preforked import start_script
from tests.test_indexer_update import _add


def _files(store: IndexStore, build_id: str) -> dict[str, tuple[int, int]]:
    d = store.build_dir(build_id)
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.iterdir()}


def _vec(seed: int) -> np.ndarray:
    return FakeEmbedder().encode_images([make_image(seed)])


def test_a_build_with_nothing_changed_is_up_to_date_and_writes_nothing(tmp_path, catalogue):
    for i in range(6):
        _add(catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, catalogue, store, tmp_path / "vectors")
    first = b.build(progress=False)
    before, builds = _files(store, first.build_id), len(catalogue.builds())
    again = b.build(progress=False)
    assert again.up_to_date and (again.build_id, again.vectors, again.embedded) == (first.build_id, 6, 0)
    assert again.strategy == "up-to-date" and again.to_dict()["up_to_date"] is True
    assert _files(store, first.build_id) == before and store.list_builds()[-1].build_id == first.build_id
    assert len(catalogue.builds()) == builds and emb.calls == 6
    # another index type, or --force, is work to do
    assert not b.build(progress=False, index_type="hnsw").up_to_date
    forced = b.build(progress=False, index_type="hnsw", force=True)
    assert not forced.up_to_date and forced.embedded == 0 and forced.reused == 6
    _add(catalogue, tmp_path, 3, seed=103)  # a photo replaced: no longer up to date
    assert b.build(progress=False, index_type="hnsw").strategy == "full"


def test_cli_build_says_up_to_date_and_exits_0(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    for i in range(4):
        _add(cat, tmp_path, i)
    cat.close()
    run = CliRunner().invoke
    args = ["--data-dir", str(data), "index", "build", "--model", "colorhist"]
    first = json.loads(run(cli, [*args, "--json"], catch_exceptions=False).stdout)
    res = run(cli, [*args, "--json"], catch_exceptions=False)
    again = json.loads(res.stdout)
    assert res.exit_code == 0 and again["up_to_date"] is True and again["build_id"] == first["build_id"]
    res = run(cli, args, catch_exceptions=False)
    assert res.exit_code == 0 and res.stdout.startswith(f"up to date: build {first['build_id']} serves 4 vectors")
    forced = json.loads(run(cli, [*args, "--json", "--force"], catch_exceptions=False).stdout)
    assert forced["up_to_date"] is False and forced["build_id"] != first["build_id"]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfflat"])
def test_an_update_of_ten_images_is_a_delta_beside_the_unchanged_base(tmp_path, catalogue, index_type):
    for i in range(40):
        _add(catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, catalogue, store, tmp_path / "vectors")
    first = b.build(index_type=index_type, progress=False)
    base_before = _files(store, first.build_id)[INDEX_FILE]
    removed = {sku: catalogue.get_product(sku).images[0].id for sku in ("P5", "P6", "P7")}
    catalogue.delete_products(list(removed))
    for i in (1, 2, 3, 4):  # photos replaced on disk: the rescan finds them
        make_image(200 + i).save(tmp_path / "imgs" / f"p{i}.png")
    for i in (40, 41, 42):
        _add(catalogue, tmp_path, i)

    r = b.update(index_type=index_type, progress=False)
    assert (r.strategy, r.mode, r.embedded, emb.calls) == ("delta", "delta", 7, 47)
    assert (r.update.added, r.update.changed, r.update.removed) == (3, 4, 3)
    assert (r.segments.base, r.segments.delta, r.segments.dead, r.vectors) == (40, 7, 7, 40)
    new_dir, old_dir = store.build_dir(r.build_id), store.build_dir(first.build_id)
    assert os.path.samefile(new_dir / INDEX_FILE, old_dir / INDEX_FILE)  # shared, not rewritten
    assert _files(store, first.build_id)[INDEX_FILE] == base_before
    index, manifest = store.load_current()
    index.nprobe = 64
    want = {img.id for img in catalogue.indexable_images()}
    assert set(index.ids().tolist()) == want and len(index) == manifest.count == 40
    for sku, image_id in removed.items():  # a removed image is never returned, even for its own photo
        _, ids = index.search(_vec(int(sku[1:])), 40)
        assert image_id not in ids[0].tolist() and len(set(ids[0].tolist()) - {-1}) == 40
    for i in (1, 40):  # a changed image answers with its new photo, a new one is found
        img = catalogue.get_product(f"P{i}").images[0]
        _, ids = index.search(_vec(200 + i if i < 40 else i), 1)
        assert ids[0, 0] == img.id
        np.testing.assert_allclose(index.reconstruct(img.id), _vec(200 + i if i < 40 else i)[0], atol=1e-5)
    # a second small update stacks on the same base; rollback serves the first delta again
    catalogue.delete_products(["P40", "P20"])
    r2 = b.update(index_type=index_type, progress=False)
    assert r2.strategy == "delta" and (r2.segments.delta, r2.segments.dead, r2.vectors) == (6, 8, 38)
    assert os.path.samefile(store.build_dir(r2.build_id) / INDEX_FILE, new_dir / INDEX_FILE)  # first build pruned
    assert store.rollback() == r.build_id and len(store.load_current()[0]) == 40
    assert b.update(index_type=index_type, progress=False).vectors == 38


def test_dead_entries_past_the_threshold_compact_into_a_fresh_base(tmp_path, sqlite_catalogue, monkeypatch):
    cat = sqlite_catalogue
    for i in range(20):
        _add(cat, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), cat, store, tmp_path / "vectors")
    b.build(index_type="hnsw", progress=False)
    monkeypatch.setattr(update_plan, "COMPACT_MIN_ENTRIES", 0)
    cat.delete_products(["P0", "P1", "P2"])  # 15% of the base: still a delta
    d = b.update(progress=False, index_type="hnsw")
    assert d.strategy == "delta"
    cat.delete_products(["P3", "P4"])  # 25%: compacted
    r = b.update(progress=False, index_type="hnsw")
    assert r.strategy == "rebuild" and "tombstoned of 20 base vectors" in r.update.rebuild_reason
    assert (r.segments.base, r.segments.delta, r.segments.dead, r.vectors) == (15, 0, 0, 15)
    assert not os.path.samefile(store.build_dir(r.build_id) / INDEX_FILE, store.build_dir(d.build_id) / INDEX_FILE)
    index, _ = store.load_current()
    assert not index.segmented and set(index.ids().tolist()) == {img.id for img in cat.indexable_images()}


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfflat", "ivfpq"])
def test_a_segmented_index_excludes_tombstones_and_merges_its_delta(tmp_path, index_type):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = VectorIndex(16, index_type, expected_size=300)
    base.add(np.arange(300), x)
    delta = new_delta(16)
    delta.add_with_ids(x[:2].copy(), np.array([0, 1000]))  # id 0 replaced, 1000 new
    seg = VectorIndex(16, index_type, index=base.faiss_index, delta=delta, dead=np.array([0, 1, 2]))
    seg.nprobe = 64
    assert seg.segmented and len(seg) == 300 - 3 + 2
    assert set(seg.ids().tolist()) == (set(range(3, 300)) | {0, 1000})
    _, ids = seg.search(x[:3], 5)
    assert ids[0, 0] in (0, 1000) and ids[1, 0] == 1000 and not {1, 2} & set(ids.ravel().tolist())
    with pytest.raises(RuntimeError):
        seg.reconstruct(1)
    sel = faiss.IDSelectorBatch(np.array([1, 5, 1000], dtype=np.int64))  # the caller's filter, tombstones still out
    _, ids = seg.search(x[:1], 5, selector=sel)
    assert set(ids[0].tolist()) == {5, 1000, -1}
    # the filtered path (an allowed id set, shopsearch/index/filtered.py) sees the same segments
    _, ids = seg.search(x[:1], 5, allowed=np.array([1, 5, 1000, 2], dtype=np.int64))
    assert set(ids[0].tolist()) == {5, 1000, -1}
    _, ids = seg.search(x[:1], 3, allowed=np.array([2], dtype=np.int64))  # only a tombstone allowed
    assert ids[0].tolist() == [-1, -1, -1]
    # id 0 is tombstoned in the base but lives on in the delta (a changed image): a filter keeps it
    scores, ids = seg.search(x[:1], 2, allowed=np.array([0, 2], dtype=np.int64))
    assert ids[0].tolist() == [0, -1] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        seg.add(np.array([7]), x[:1])
    only_delta = VectorIndex(16, index_type, index=base.faiss_index, delta=delta)  # no tombstones
    only_delta.nprobe = 64
    assert only_delta.search(x[1:2], 2)[1][0].tolist() == [1, 1000] and len(only_delta) == 302
    from shopsearch.index.manifest import IndexManifest

    m = seg.save(tmp_path / "b", IndexManifest("b", "m", "fp", 16, 0, index_type, "now"))
    assert (m.count, m.base_count, m.delta_count, m.dead_count) == (299, 300, 2, 3)
    loaded, _ = VectorIndex.load(tmp_path / "b")
    loaded.nprobe = 64
    np.testing.assert_array_equal(loaded.search(x[:3], 5)[1], seg.search(x[:3], 5)[1])


def test_a_delta_publish_on_a_full_disk_leaves_the_serving_build(tmp_path, sqlite_catalogue, monkeypatch):
    from shopsearch.errors import IndexWriteError
    from shopsearch.index import segments

    for i in range(8):
        _add(sqlite_catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors")
    first = b.build(index_type="hnsw", progress=False)
    _add(sqlite_catalogue, tmp_path, 8)
    def open_on_a_full_disk(path, mode="r", *args, **kwargs):  # the delta part is written to /dev/full
        return open("/dev/full" if "w" in mode else path, mode, *args, **kwargs)

    monkeypatch.setattr(segments, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(IndexWriteError, match=f"build {first.build_id} is still serving"):
        b.update(index_type="hnsw", progress=False)
    assert store.current_id() == first.build_id and [m.build_id for m in store.list_builds()] == [first.build_id]
    assert not [p for p in (tmp_path / "index").rglob("*") if p.name.startswith(".staging-")]
    monkeypatch.undo()
    assert b.update(index_type="hnsw", progress=False).strategy == "delta"


KILLED_WHILE_PUBLISHING = r"""
import sys, time
from pathlib import Path
from shopsearch.index import staging as staging_mod
from indexer.build import IndexBuilder
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder

root = Path(sys.argv[1])
real = staging_mod.write_delta
def write_then_hang(*a, **kw):  # the delta is staged: the process dies before CURRENT moves
    out = real(*a, **kw)
    (root / "staged").touch()
    time.sleep(60)
    return out
staging_mod.write_delta = write_then_hang
cat = CatalogueStore.open(f"sqlite:///{root / 'catalogue.db'}")
IndexBuilder(FakeEmbedder(), cat, IndexStore(root / "index"), root / "vectors").update(index_type="hnsw",
                                                                                       progress=False)
"""


def test_kill_9_while_publishing_a_delta_leaves_the_serving_build(tmp_path):
    cat = CatalogueStore.open(f"sqlite:///{tmp_path / 'catalogue.db'}")
    for i in range(10):
        _add(cat, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), cat, store, tmp_path / "vectors")
    first = b.build(index_type="hnsw", progress=False)
    cat.delete_products(["P1"])
    _add(cat, tmp_path, 10)
    proc = start_script(KILLED_WHILE_PUBLISHING, str(tmp_path), cwd=REPO)
    deadline = time.monotonic() + 120
    while not (tmp_path / "staged").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the update never staged its delta"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert store.current_id() == first.build_id and len(store.load_current()[0]) == 10
    r = b.update(index_type="hnsw", progress=False)  # the next run clears the leftover and publishes
    assert r.strategy == "delta" and store.current_id() == r.build_id and r.vectors == 10
    assert not [p for p in (tmp_path / "index").rglob("*") if p.name.startswith(".staging-")]
    assert os.path.samefile(store.build_dir(r.build_id) / INDEX_FILE, store.build_dir(first.build_id) / INDEX_FILE)
    cat.close()


def test_read_ids_gives_sorted_ids_whatever_order_the_file_holds(tmp_path):
    from shopsearch.index.keyfiles import read_ids, write_keys

    write_keys(tmp_path / "unsorted.npz", {3: "c" * 64, 1: "a" * 64, 2: "b" * 64})
    write_keys(tmp_path / "sorted.npz", {1: "a" * 64, 5: "e" * 64})
    assert read_ids(tmp_path / "unsorted.npz").tolist() == [1, 2, 3]
    assert read_ids(tmp_path / "sorted.npz").tolist() == [1, 5]
