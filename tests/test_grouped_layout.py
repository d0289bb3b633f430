"""Builds store their vectors grouped by category subtree, then price (shopsearch/index/layout.py),
and filtered search over that layout (runs scored as slices) stays exact: against brute force
after a build, an update (delta segment and tombstones), deletions and a compaction."""
from __future__ import annotations

from decimal import Decimal

import faiss
import numpy as np
import pytest

import indexer.update_plan as update_plan
from indexer.build import IndexBuilder
from shopsearch.catalogue.bulk import FilterColumns
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.index import IndexStore, VectorIndex
from shopsearch.index import exact
from shopsearch.index.exact import exact_among, flat_storage
from shopsearch.index.filtered import ascending_unique
from shopsearch.index.layout import grouped_order
from shopsearch.results import SearchFilters
from tests.conftest import FakeEmbedder, make_image, sha

CATEGORIES = (["Food", "Fruit"], ["Food", "Fruit", "Apple"], ["Food", "Fruit-Juice"], ["Dairy", "Milk"])


def test_grouped_order_keeps_subtrees_contiguous_then_price_then_id():
    paths = {1: "Food/Fruit", 2: "Food/Fruit-Juice", 3: "Food/Fruit/Apple", 4: "Dairy"}
    cols = FilterColumns(np.array([10, 11, 12, 13, 14, 15, 16], dtype=np.int64), np.arange(7, dtype=np.int64),
                         np.array([5.0, 1.0, np.nan, 2.0, 9.0, 1.0, 3.0]),
                         np.array([1, 3, 1, 2, -1, 1, 4], dtype=np.int64), paths)
    ids = np.array([16, 15, 14, 13, 12, 11, 10, 99], dtype=np.int64)  # 99: not in the columns
    got = ids[grouped_order(ids, cols)].tolist()
    # Dairy; Food/Fruit (by price: 15 at 1.0, 10 at 5.0, 12 without) then its child Apple (11);
    # Food/Fruit-Juice after the whole Food/Fruit subtree; no category; unknown
    assert got == [16, 15, 10, 12, 11, 13, 14, 99]


@pytest.mark.parametrize("seed", range(4))
def test_ascending_unique_equals_np_unique_dense_or_sparse(seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(1000, 1200, 300)  # repeats, span < 4x count: the mask path
    sparse = rng.integers(0, 10 ** 6, 300)  # the sort path, with a repeat
    sparse[5] = sparse[7]
    for pos in (dense, sparse, dense.astype(np.int32), np.zeros(0, np.int32)):
        got = ascending_unique(pos)
        assert got.dtype == np.int64 and got.tolist() == np.unique(pos).tolist()


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_runs_are_scored_exactly_like_gathered_positions(index_type):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vi = VectorIndex(24, index_type)
    vi.add(np.arange(8000, dtype=np.int64) + 7, x)
    flat = flat_storage(faiss.downcast_index(vi.faiss_index.index))
    q = rng.standard_normal((3, 24)).astype(np.float32)
    runs = np.concatenate([np.arange(100, 900), np.arange(950, 1400), [1500], np.arange(1600, 1999)])
    long_runs = np.concatenate([np.arange(100, 2600), np.arange(3000, 6000)])  # FAISS's k-NN per run
    cases = ((runs, 10), (runs, 80), (np.arange(1990, 2000), 40), (long_runs, 10), (long_runs, 80),
             (np.arange(2000, 5000), 80))
    for positions, k in cases:
        for nq in (1, 3):  # one query: matrix-vector products; several: a matrix product per run
            scores, pos = exact_among(flat, q[:nq], k, positions)
            sims = q[:nq] @ x[positions].T
            want = positions[np.argsort(-sims, axis=1, kind="stable")[:, :k]]
            kk = min(k, len(positions))
            assert (pos[:, :kk] == want).all() and (pos[:, kk:] == -1).all()
            np.testing.assert_allclose(scores[:, :kk], np.take_along_axis(sims, np.argsort(-sims, axis=1)[:, :kk],
                                                                          axis=1), rtol=1e-5, atol=1e-6)


def _add(cat, tmp_path, i: int, seed: int | None = None) -> None:
    p = tmp_path / "imgs" / f"p{i}.png"
    p.parent.mkdir(exist_ok=True)
    make_image(i if seed is None else seed).save(p)
    cat.upsert_product(ProductRecord(f"P{i}", f"product {i}", price=Decimal(100 - i % 37),
                                     category_path=tuple(CATEGORIES[i % len(CATEGORIES)]),
                                     images=(ImageRecord(str(p), sha256=sha(p)),)))


def _check_exact(store: IndexStore, cat, emb: FakeEmbedder, filters: list[SearchFilters]) -> None:
    """Every filter's top-k from the served index equals brute force over the allowed vectors."""
    from shopsearch.filter_sets import AllowedImages

    index, _ = store.load_current()
    ids = index.ids()
    vecs = np.stack([index.reconstruct(int(i)) for i in ids])
    allowed_images = AllowedImages(cat.filter_columns)
    q = emb.encode_images([make_image(s) for s in (500, 501)])
    for f in filters:
        allowed = allowed_images.ids_for(f)
        assert len(allowed)
        rows = np.searchsorted(np.sort(ids), allowed)
        order = np.argsort(ids)
        k = min(8, len(allowed))
        scores, got = index.search(q, k, allowed=allowed)
        sims = q @ vecs[order[rows]].T
        want = np.sort(sims, axis=1)[:, ::-1][:, :k]
        np.testing.assert_allclose(scores[:, :k], want, rtol=1e-5, atol=1e-6)
        assert set(got.ravel().tolist()) <= set(allowed.tolist())


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_builds_store_categories_grouped_and_filters_stay_exact_through_updates(tmp_path, sqlite_catalogue,
                                                                                index_type, monkeypatch):
    cat, emb = sqlite_catalogue, FakeEmbedder()
    monkeypatch.setattr(exact, "RUN_SLICES", 2)  # runs of a dozen vectors scored as slices
    for i in range(48):
        _add(cat, tmp_path, i)
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(emb, cat, store, tmp_path / "vectors")
    b.build(index_type=index_type, progress=False)
    index, _ = store.load_current()
    stored = faiss.vector_to_array(index.faiss_index.id_map)
    cols = cat.filter_columns()
    paths = [cols.category_paths[int(c)] for c in cols.category_ids[np.searchsorted(cols.image_ids, stored)]]
    # stored in subtree order: each category's vectors one contiguous run, Food/Fruit's subtree too
    assert [tuple(p.split("/")) for p in paths] == sorted(tuple(p.split("/")) for p in paths)
    in_fruit = [p == "Food/Fruit" or p.startswith("Food/Fruit/") for p in paths]
    first, last = in_fruit.index(True), len(in_fruit) - in_fruit[::-1].index(True)
    assert all(in_fruit[first:last])
    filters = [SearchFilters(category="Food/Fruit"), SearchFilters(category="Food"), SearchFilters(category="Dairy"),
               SearchFilters(min_price=Decimal(70), max_price=Decimal(90)),
               SearchFilters(category="Food/Fruit", min_price=Decimal(80))]
    _check_exact(store, cat, emb, filters)
    # an update: changed photos (tombstoned in the base, live in the delta), new and deleted products
    monkeypatch.setattr(update_plan, "COMPACT_MIN_ENTRIES", 10 ** 6)
    for i in (1, 2, 3):
        _add(cat, tmp_path, i, seed=300 + i)
    for i in (60, 61, 62):
        _add(cat, tmp_path, i)
    cat.delete_products(["P4", "P5"])
    assert b.update(progress=False, index_type=index_type).strategy == "delta"
    _check_exact(store, cat, emb, filters)
    # a compaction rebuilds the base from the cache, grouped again
    monkeypatch.setattr(update_plan, "COMPACT_MIN_ENTRIES", 0)
    cat.delete_products([f"P{i}" for i in range(6, 26)])
    assert b.update(progress=False, index_type=index_type).strategy == "rebuild"
    index, _ = store.load_current()
    assert not index.segmented
    stored = faiss.vector_to_array(index.faiss_index.id_map)
    cols = cat.filter_columns()
    paths = [cols.category_paths[int(c)] for c in cols.category_ids[np.searchsorted(cols.image_ids, stored)]]
    assert [tuple(p.split("/")) for p in paths] == sorted(tuple(p.split("/")) for p in paths)
    _check_exact(store, cat, emb, filters)
