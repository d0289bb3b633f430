"""The delta segment in immutable parts (shopsearch/index/segments.py): an update writes one
part of its own vectors and shares the earlier parts by hard link, however large the delta
has grown; the chain is rewritten as one part past MAX_PARTS; a build made before parts (one
delta.faiss) is carried over."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import faiss
import numpy as np

import shopsearch.index.staging as staging_mod
from indexer.build import IndexBuilder
from shopsearch.index import IndexStore
from shopsearch.index.segments import DELTA_FILE, assemble, read_part, sha256_file
from shopsearch.index.manifest import MANIFEST, IndexManifest
from tests.conftest import FakeEmbedder, make_image
from tests.test_indexer_update import _add


def _setup(tmp_path, catalogue, n: int = 30):
    for i in range(n):
        _add(catalogue, tmp_path, i)
    store = IndexStore(tmp_path / "index", keep=20)
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    b.build(index_type="hnsw", progress=False)
    return store, b


def _parts(store: IndexStore, build_id: str) -> list[str]:
    return [name for name, _ in json.loads((store.build_dir(build_id) / MANIFEST).read_text())["delta_parts"]]


def _served_matches_catalogue(store, catalogue, b):
    index, _ = store.load_current()
    assert sorted(index.ids().tolist()) == sorted(i.id for i in catalogue.indexable_images())
    for img in catalogue.indexable_images():  # every served vector is the one of the image's current file
        np.testing.assert_allclose(index.reconstruct(img.id), b.cache.get_many([img.sha256])[0], atol=1e-6)


def test_each_update_writes_one_part_of_its_own_vectors_and_links_the_rest(tmp_path, sqlite_catalogue):
    store, b = _setup(tmp_path, sqlite_catalogue)
    builds = []
    for step in range(3):
        for i in (40 + 2 * step, 41 + 2 * step):
            _add(sqlite_catalogue, tmp_path, i)
        r = b.update(index_type="hnsw", progress=False)
        assert r.strategy == "delta" and r.segments.delta == 2 * (step + 1)
        builds.append(r.build_id)
        parts = _parts(store, r.build_id)
        assert len(parts) == step + 1
        new = read_part(store.build_dir(r.build_id) / parts[-1])
        assert len(new[0]) == 2 and new[1].shape == (2, 48)  # only this update's vectors
        for name in parts[:-1]:  # the earlier parts: the very files of the build before
            assert os.path.samefile(store.build_dir(r.build_id) / name, store.build_dir(builds[-2]) / name)
    _served_matches_catalogue(store, sqlite_catalogue, b)

    p40, p42 = (sqlite_catalogue.get_product(sku).images[0].id for sku in ("P40", "P42"))
    make_image(900).save(tmp_path / "imgs" / "p40.png")  # a delta entry changed, one removed
    sqlite_catalogue.delete_products(["P42"])
    r = b.update(index_type="hnsw", progress=False)
    ids, vectors, drop = read_part(store.build_dir(r.build_id) / _parts(store, r.build_id)[-1])
    assert ids.tolist() == [p40] and sorted(drop.tolist()) == sorted([p40, p42]) and vectors.shape == (1, 48)
    assert r.segments.delta == 5 and len(_parts(store, r.build_id)) == 4
    _served_matches_catalogue(store, sqlite_catalogue, b)
    assert store.rollback() == builds[-1]  # the earlier build still reads its own, untouched chain
    index, manifest = store.load_current()
    assert manifest.delta_count == 6 and len(index) == 36


def test_the_chain_is_rewritten_as_one_part_past_max_parts(tmp_path, sqlite_catalogue, monkeypatch):
    monkeypatch.setattr(staging_mod, "MAX_PARTS", 3)
    store, b = _setup(tmp_path, sqlite_catalogue)
    counts = []
    for step in range(4):
        _add(sqlite_catalogue, tmp_path, 50 + step)
        r = b.update(index_type="hnsw", progress=False)
        counts.append(len(_parts(store, r.build_id)))
    assert counts == [1, 2, 3, 1]
    only = read_part(store.build_dir(r.build_id) / _parts(store, r.build_id)[0])
    assert len(only[0]) == 4 and not len(only[2])
    _served_matches_catalogue(store, sqlite_catalogue, b)


def test_a_build_with_a_whole_delta_file_is_carried_over_as_a_part(tmp_path, sqlite_catalogue):
    store, b = _setup(tmp_path, sqlite_catalogue)
    for i in (60, 61):
        _add(sqlite_catalogue, tmp_path, i)
    r = b.update(index_type="hnsw", progress=False)
    d = store.build_dir(r.build_id)  # made as builds were before parts: one delta.faiss
    manifest = IndexManifest(**json.loads((d / MANIFEST).read_text()))
    (name, _), = manifest.delta_parts
    faiss.write_index(assemble([read_part(d / name)], 48), str(d / DELTA_FILE))
    (d / name).unlink()
    legacy = replace(manifest, delta_parts=[], delta_sha256=sha256_file(d / DELTA_FILE))
    (d / MANIFEST).write_text(json.dumps({k: v for k, v in asdict(legacy).items() if k != "delta_parts"}))
    assert len(store.load_current()[0]) == 32
    _add(sqlite_catalogue, tmp_path, 62)
    r2 = b.update(index_type="hnsw", progress=False)
    assert len(_parts(store, r2.build_id)) == 2 and r2.segments.delta == 3
    _served_matches_catalogue(store, sqlite_catalogue, b)
