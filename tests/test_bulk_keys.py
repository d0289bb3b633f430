"""The array reads an update diffs with: the catalogue's indexable ids and hashes and a
build's served ids and hashes, equal to the row-by-row and dict answers (both databases)."""
from __future__ import annotations

import numpy as np

from indexer.build import IndexBuilder
from indexer.diff import diff_arrays, diff_index
from shopsearch.catalogue.bulk import NO_HASH
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore
from tests.conftest import FakeEmbedder, make_image, sha


def test_indexable_keys_match_the_rows(tmp_path, catalogue):
    recs = []
    for i in range(7):
        p = tmp_path / f"p{i}.png"
        make_image(i).save(p)
        status = "missing" if i == 5 else "ok"
        recs.append(ProductRecord(f"P{i}", f"p{i}", images=(
            ImageRecord(str(p), sha256=None if i == 3 else sha(p), status=status),)))
    catalogue.upsert_products(recs)
    ids, keys = catalogue.indexable_keys()
    rows = {img.id: (img.sha256 or NO_HASH.decode()) for img in catalogue.indexable_images()}
    assert ids.dtype == np.int64 and ids.tolist() == sorted(rows) and len(ids) == 6
    assert [k.decode() for k in keys] == [rows[i] for i in sorted(rows)]
    assert (keys == NO_HASH).sum() == 1  # the image without a recorded hash


def test_served_keys_and_the_array_diff_match_the_dicts(tmp_path, catalogue):
    for i in range(8):
        p = tmp_path / f"p{i}.png"
        make_image(i).save(p)
        catalogue.upsert_product(ProductRecord(f"P{i}", f"p{i}", images=(ImageRecord(str(p), sha256=sha(p)),)))
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(FakeEmbedder(), catalogue, store, tmp_path / "vectors")
    b.build(progress=False, rescan=False)
    catalogue.delete_products(["P1"])
    p = tmp_path / "p2.png"
    make_image(102).save(p)
    catalogue.upsert_product(ProductRecord("P2", "p2", images=(ImageRecord(str(p), sha256=sha(p)),)))
    r = b.update(progress=False, rescan=False)  # a delta build: base, tombstones and delta keys
    assert r.strategy == "delta"
    ids, keys = store.served_keys(r.build_id)
    served = store.load_keys(r.build_id)
    assert ids.tolist() == sorted(served) and [k.decode() for k in keys] == [served[i] for i in sorted(served)]
    p = tmp_path / "p9.png"
    make_image(9).save(p)
    catalogue.upsert_product(ProductRecord("P9", "p9", images=(ImageRecord(str(p), sha256=sha(p)),)))
    catalogue.delete_products(["P3"])
    make_image(104).save(tmp_path / "p4.png")
    catalogue.upsert_product(ProductRecord("P4", "p4", images=(
        ImageRecord(str(tmp_path / "p4.png"), sha256=sha(tmp_path / "p4.png")),)))
    want_ids, want_keys = catalogue.indexable_keys()
    want = {img.id: img.sha256 for img in catalogue.indexable_images()}
    assert diff_arrays(want_ids, want_keys, ids, keys) == diff_index(want, served)
    d = diff_arrays(want_ids, want_keys, ids, keys)
    assert (len(d.added), len(d.changed), len(d.removed)) == (1, 1, 1)
