"""Incremental `index update`, `index status`, deletions and rollback."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.build import IndexBuilder, diff_index
from indexer.cli import cli
from indexer.status import index_status
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.errors import IndexNotFoundError, ModelMismatchError
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, jitter, make_image, sha


def _add(cat, tmp_path, i: int, seed: int | None = None) -> None:
    p = tmp_path / "imgs" / f"p{i}.png"
    p.parent.mkdir(exist_ok=True)
    make_image(i if seed is None else seed).save(p)
    cat.upsert_product(ProductRecord(f"P{i}", f"product {i}", images=(ImageRecord(str(p), sha256=sha(p)),)))


def _catalogue_ids(cat) -> set[int]:
    return {img.id for img in cat.indexable_images()}


def test_diff_index():
    d = diff_index({1: "a", 2: "b", 3: "c"}, {2: "b", 3: "x", 4: "d"})
    assert (d.added, d.changed, d.removed, d.unchanged) == ((1,), (3,), (4,), 1)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_update_embeds_only_new_and_changed_and_drops_removed(tmp_path, catalogue, index_type):
    for i in range(10):
        _add(catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, catalogue, store, tmp_path / "vectors")
    first = b.build(index_type=index_type, progress=False)
    assert (first.vectors, emb.calls) == (10, 10)
    assert index_status(catalogue, store).up_to_date

    _add(catalogue, tmp_path, 10)  # new product
    _add(catalogue, tmp_path, 11)
    _add(catalogue, tmp_path, 3, seed=103)  # P3's photo replaced (same path, new content)
    assert catalogue.delete_products(["P5", "P7"]) == ["P5", "P7"]
    st = index_status(catalogue, store)
    assert (st.missing, st.changed, st.stale, st.vectors, st.images_ok, st.up_to_date) == (2, 1, 2, 10, 10, False)

    r = b.update(index_type=index_type, progress=False)
    assert r.embedded == 3 and emb.calls == 13  # two new + one changed, nothing else re-embedded
    assert (r.update.added, r.update.changed, r.update.removed) == (2, 1, 2)
    assert r.mode == "delta"  # the base segment kept, on HNSW too (tombstones, no rebuild)
    index, manifest = store.load_current()
    assert set(index.ids().tolist()) == _catalogue_ids(catalogue) and manifest.count == 10
    assert index_status(catalogue, store).up_to_date
    # the changed image's vector is the new picture's, not the old one
    p3 = catalogue.get_product("P3").images[0]
    new_vec = FakeEmbedder().encode_images([make_image(103)])[0]
    np.testing.assert_allclose(index.reconstruct(p3.id), new_vec, atol=1e-5)
    # previous build kept: rollback serves the 10 vectors of the first build again
    assert store.rollback() == first.build_id
    assert set(store.load_current()[0].ids().tolist()) != _catalogue_ids(catalogue)
    # nothing to do -> an update embeds nothing
    store.rollback()
    again = b.update(index_type=index_type, progress=False)
    assert (again.embedded, emb.calls, again.vectors) == (0, 13, 10)


def test_update_without_vector_cache_reuses_index_vectors(tmp_path, sqlite_catalogue):
    """A compaction (here forced) takes vectors from the cache, or from the old index if the cache is gone."""
    import shutil

    for i in range(6):
        _add(sqlite_catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors").build(index_type="hnsw", progress=False)
    shutil.rmtree(tmp_path / "vectors")
    sqlite_catalogue.delete_products(["P0"])
    emb = FakeEmbedder()
    r = IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors").update(progress=False, index_type="hnsw",
                                                                                force=True)
    assert emb.calls == 0 and r.vectors == 5 and r.update.rebuild_reason == "forced"


def test_update_refuses_another_model(tmp_path, sqlite_catalogue):
    _add(sqlite_catalogue, tmp_path, 0)
    store = IndexStore(tmp_path / "index")
    IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors").build(progress=False)
    with pytest.raises(ModelMismatchError):
        IndexBuilder(FakeEmbedder(salt="x"), sqlite_catalogue, store, tmp_path / "vectors").update(progress=False)


def test_auto_index_type_switches_with_size(tmp_path, sqlite_catalogue, monkeypatch):
    """Growing past the HNSW threshold rebuilds as HNSW from cached vectors (no re-embedding)."""
    import indexer.build as build_mod

    for i in range(4):
        _add(sqlite_catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors")
    assert b.build(progress=False).index_type == "flat"
    _add(sqlite_catalogue, tmp_path, 4)
    monkeypatch.setattr(build_mod, "choose_index_type", lambda n: "hnsw" if n >= 5 else "flat")
    r = b.update(progress=False)
    assert (r.index_type, r.vectors, r.embedded, emb.calls) == ("hnsw", 5, 1, 5)


def test_an_index_type_named_with_index_is_kept_by_later_builds_and_updates(tmp_path, sqlite_catalogue, monkeypatch):
    """`--index hnsw` on a catalogue auto would index flat: a later update or build without --index
    (the CLI's "keep") keeps HNSW instead of switching back; `--index auto` hands the choice back to size."""
    import indexer.build as build_mod

    for i in range(4):
        _add(sqlite_catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors")
    assert b.build(progress=False, index_type="hnsw").index_type == "hnsw"
    assert store.current_manifest().index_choice == "fixed"
    first = store.current_id()
    r = b.update(progress=False, index_type="keep")
    assert (r.index_type, r.mode) == ("hnsw", "up-to-date") and store.current_id() == first  # nothing to do
    _add(sqlite_catalogue, tmp_path, 4)
    assert b.update(progress=False, index_type="keep").index_type == "hnsw"
    assert b.build(progress=False, index_type="keep", force=True).index_type == "hnsw"
    # a type chosen by size follows the size
    monkeypatch.setattr(build_mod, "choose_index_type", lambda n: "flat")
    r = b.build(progress=False, index_type="auto")
    assert r.index_type == "flat" and store.current_manifest().index_choice == "auto"
    monkeypatch.setattr(build_mod, "choose_index_type", lambda n: "hnsw" if n >= 6 else "flat")
    _add(sqlite_catalogue, tmp_path, 5)
    assert b.update(progress=False, index_type="keep").index_type == "hnsw"  # grew past the threshold


def _cli(data_dir, *args):
    res = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    return res


def _data_dir(tmp_path, products: int):
    """A data folder whose SQLite catalogue holds `products` products (P0...), and the open store."""
    (data := tmp_path / "data").mkdir()
    cat = CatalogueStore.open(f"sqlite:///{data / 'catalogue.db'}")
    for i in range(products):
        _add(cat, tmp_path, i)
    return data, cat


def test_cli_status_update_rollback_json(tmp_path):
    data, cat = _data_dir(tmp_path, 5)
    res = _cli(data, "index", "status", "--json")
    assert json.loads(res.stdout)["missing"] == 5
    res = _cli(data, "index", "rollback")
    assert res.exit_code == 1 and "no previous index build" in res.output
    first = json.loads(_cli(data, "index", "build", "--model", "colorhist", "--json").stdout)
    assert first["vectors"] == 5 and first["embedded"] == 5
    cat.delete_products(["P1"])
    p = tmp_path / "extra.png"
    jitter(make_image(50), seed=1).save(p)
    cat.upsert_product(ProductRecord("NEW", "new", images=(ImageRecord(str(p), sha256=sha(p)),)))
    st = json.loads(_cli(data, "index", "status", "--json").stdout)  # the quick check: ids only
    assert (st["missing"], st["stale"], st["changed"], st["up_to_date"], st["deep"]) == (1, 1, None, False, False)
    st = json.loads(_cli(data, "index", "status", "--deep", "--json").stdout)
    assert (st["missing"], st["stale"], st["changed"], st["up_to_date"], st["deep"]) == (1, 1, 0, False, True)
    res = _cli(data, "index", "update", "--json")
    upd = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert (upd["embedded"], upd["reused"], upd["vectors"], upd["removed"], upd["mode"]) == (1, 0, 5, 1, "delta")
    assert upd["previous_build"] == first["build_id"] and upd["images_per_s"] >= 0 and "seconds" in upd
    # nothing changed since: no new build, and the build serving before is still the first (not itself)
    noop = json.loads(_cli(data, "index", "update", "--json").stdout)
    assert (noop["up_to_date"], noop["build_id"], noop["previous_build"]) == (True, upd["build_id"], first["build_id"])
    assert json.loads(_cli(data, "index", "status", "--json").stdout)["up_to_date"] is True
    rb = json.loads(_cli(data, "index", "rollback", "--json").stdout)
    assert rb == {"build_id": first["build_id"], "previous_build": upd["build_id"], "vectors": 5}
    assert json.loads(_cli(data, "index", "status", "--json").stdout)["stale"] == 1
    listing = json.loads(_cli(data, "index", "list", "--json").stdout)["builds"]
    assert {b["build_id"] for b in listing} == {first["build_id"], upd["build_id"]}
    cat.close()


def test_an_update_with_nothing_to_do_after_a_first_build_names_no_previous_build(tmp_path):
    data, cat = _data_dir(tmp_path, 3)
    first = json.loads(_cli(data, "index", "build", "--model", "colorhist", "--json").stdout)
    noop = json.loads(_cli(data, "index", "update", "--json").stdout)
    assert (noop["up_to_date"], noop["build_id"], noop["previous_build"]) == (True, first["build_id"], None)
    assert noop["added"] == noop["changed"] == noop["removed"] == 0
    cat.close()


def test_rollback_refuses_without_previous(tmp_path):
    with pytest.raises(IndexNotFoundError):
        IndexStore(tmp_path / "index").rollback()


@pytest.mark.parametrize("itype", ["ivfflat", "ivfpq", "hnsw"])
def test_non_flat_types_refuse_in_place_removal(itype):
    """IVF inside IndexIDMap2 'removes' but then answers with the wrong ids: never do it."""
    from shopsearch.index import VectorIndex

    vi = VectorIndex(16, itype)
    assert not vi.supports_remove()
    with pytest.raises(NotImplementedError):
        vi.remove(np.array([1]))
    assert VectorIndex(16, "flat").supports_remove()


def test_ivf_update_readds_to_trained_index_with_correct_ids(tmp_path, sqlite_catalogue):
    for i in range(40):
        _add(sqlite_catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    emb = FakeEmbedder()
    b = IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors")
    b.build(index_type="ivfflat", progress=False)
    sqlite_catalogue.delete_products(["P0", "P1", "P2"])
    _add(sqlite_catalogue, tmp_path, 40)
    r = b.update(index_type="ivfflat", progress=False, force=True)  # a compaction
    assert (r.embedded, r.vectors, emb.calls, r.update.removed) == (1, 38, 41, 3)
    assert r.strategy == "re-add" and r.trained_on == 40  # codebooks kept
    index, _ = store.load_current()
    index.nprobe = 64
    for sku in ("P3", "P20", "P40"):  # every vector still answers to its own image id
        img = sqlite_catalogue.get_product(sku).images[0]
        _, got = index.search(FakeEmbedder().encode_images([make_image(int(sku[1:]))]), 1)
        assert got[0, 0] == img.id


def test_colorhist_build_and_update_never_import_torch(tmp_path):
    """A model without torch builds and updates without importing it (about a CPU-second and
    hundreds of MB per command): the pipeline's tuning reads the CPU count torch-free."""
    import subprocess
    import sys

    data, cat = _data_dir(tmp_path, 4)
    cat.close()
    script = (
        "import sys, json\n"
        "from indexer.cli import cli\n"
        "from tests.conftest import make_image\n"
        f"data = {str(data)!r}\n"
        "def run(*a):\n"
        "    try:\n"
        "        cli(['--data-dir', data, *a], standalone_mode=False)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "run('index', 'build', '--model', 'colorhist', '--json')\n"
        f"make_image(77).save({str(tmp_path / 'imgs' / 'p0.png')!r})\n"
        "run('index', 'update', '--json')\n"
        "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "SHOPSEARCH_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"embedded": 1' in out.stdout  # the update did embed the replaced picture
    assert "TORCH False" in out.stdout
