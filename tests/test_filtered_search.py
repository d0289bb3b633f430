"""Filtered search is exact at any selectivity on flat, IVF and HNSW indexes (IVF-PQ: every
match of a small filter returned), a filter that
matches nothing never searches, and bulk catalogue reads take any number of ids."""
from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

import faiss
import numpy as np
import pytest
from sqlalchemy import insert, select

from shopsearch.catalogue.models import Product, ProductImage
from shopsearch.index import IndexManifest, VectorIndex, filtered
from shopsearch.results import SearchFilters
from shopsearch.search import SearchService

DIM = 32
#: vectors per index type: 100k flat; the ANN types are scaled down so that building them
#: stays within seconds on a shared 2-core machine (HNSW32 and IVF training dominate)
SIZES = {"flat": 100_000, "ivfflat": 20_000, "hnsw": 10_000, "ivfpq": 6_000}
INDEX_TYPES = ("flat", "ivfflat", "hnsw")


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """OpenMP threads fighting other processes for two cores make FAISS builds many times slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=None)
def _big(index_type: str) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """An index of `index_type` built the product's way (VectorIndex), seeded vectors; ids
    are sparse (every third integer) so ids and positions differ."""
    n = SIZES[index_type]
    x = _unit(np.random.default_rng(7).standard_normal((n, DIM)))
    ids = np.arange(n, dtype=np.int64) * 3 + 11
    vi = VectorIndex(DIM, index_type, expected_size=n)
    vi.add(ids, x)
    return vi, ids, x


def _truth(x: np.ndarray, ids: np.ndarray, q: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    rows = np.searchsorted(ids, allowed)
    sims = x[rows] @ q
    return allowed[np.argsort(-sims)[:k]]


@pytest.mark.parametrize("index_type", ("ivfflat", "hnsw"))
def test_thirty_of_a_hundred_thousand_all_returned_on_the_ann_types(index_type):
    """The issue's own case on the ANN types too (flat is 100k in _big): a filter that 30 of
    100,000 images pass returns all 30 for k >= 30, the exact top 10 below that."""
    n = 100_000
    x = _unit(np.random.default_rng(8).standard_normal((n, DIM)))
    ids = np.arange(n, dtype=np.int64) * 3 + 11
    vi = VectorIndex(DIM, index_type, expected_size=n)
    vi.add(ids, x)
    rng = np.random.default_rng(9)
    allowed = np.sort(rng.choice(ids, 30, replace=False))
    q = _unit(rng.standard_normal((4, DIM)))
    for k in (30, 40):
        _, got = vi.search(q, k, allowed=allowed)
        for row in range(len(q)):
            assert sorted(got[row][got[row] >= 0].tolist()) == allowed.tolist()
    _, got = vi.search(q[:1], 10, allowed=allowed)
    assert got[0].tolist() == _truth(x, ids, q[0], allowed, 10).tolist()


@pytest.mark.parametrize("index_type", (*INDEX_TYPES, "ivfpq"))
def test_thirty_allowed_all_returned(index_type):
    vi, ids, x = _big(index_type)
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(ids, 30, replace=False))
    q = _unit(rng.standard_normal((3, DIM)))
    for k in (30, 50):
        scores, got = vi.search(q, k, allowed=allowed)
        assert got.shape == (3, k)
        for row in range(3):
            found = got[row][got[row] >= 0]
            assert sorted(found.tolist()) == allowed.tolist()  # every one of the 30, nothing else
            assert (np.diff(scores[row][: len(found)]) <= 1e-6).all()  # best first
    # k below the set size: the exact top-k of the set (vectors scored exactly on every type)
    _, got = vi.search(q[:1], 10, allowed=allowed)
    want = _truth(x, ids, q[0], allowed, 10)
    if index_type == "ivfpq":  # scored on its 8-bit refine codes: near-exact, the set itself exact
        assert len(set(got[0].tolist()) & set(want.tolist())) >= 8 and np.isin(got[0], allowed).all()
    else:
        assert got[0].tolist() == want.tolist()


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_large_allowed_share_stays_inside_and_finds_the_best(index_type, monkeypatch):
    """Half and a twentieth of the index allowed, with the exact-scoring limit lowered so that
    the selector paths (HNSW graph, inverted lists) answer as they would at a million."""
    monkeypatch.setattr(filtered, "EXACT_LIMIT", 100)
    monkeypatch.setattr(filtered, "HNSW_EXACT_LIMIT", 100)
    vi, ids, x = _big(index_type)
    rng = np.random.default_rng(2)
    q = _unit(rng.standard_normal((20, DIM)))
    _, plain = vi.search(q, 10)
    base = _recall(plain, x, ids, q, ids)  # the index's own recall without a filter (IVF on random data: low)
    for share in (0.5, 0.05):
        allowed = np.sort(rng.choice(ids, int(len(ids) * share), replace=False))
        _, got = vi.search(q, 10, allowed=allowed)
        assert np.isin(got, allowed).all()
        recall = _recall(got, x, ids, q, allowed)
        # a filter never costs recall: the search breadth grows as the allowed share shrinks
        assert recall == 1.0 if index_type == "flat" else recall >= min(0.95, base) - 0.05, (share, recall, base)


def test_a_department_walks_the_graph_at_about_the_unfiltered_breadth(monkeypatch):
    """A large allowed set (a department: a fifth of the index) walks HNSW at about the index's
    own efSearch, not at a beam of k allowed nodes (k / share = 400 for the service's k=80),
    and still finds what the unfiltered walk finds; a quarter or more walks at it exactly."""
    monkeypatch.setattr(filtered, "HNSW_EXACT_LIMIT", 100)
    vi, ids, x = _big("hnsw")
    efs: list[int] = []
    real = faiss.SearchParametersHNSW
    monkeypatch.setattr(faiss, "SearchParametersHNSW", lambda **kw: efs.append(kw["efSearch"]) or real(**kw))
    rng = np.random.default_rng(4)
    q = _unit(rng.standard_normal((20, DIM)))
    _, plain = vi.search(q, 10)
    base = _recall(plain, x, ids, q, ids)
    own = int(faiss.downcast_index(vi.faiss_index.index).hnsw.efSearch)
    for share, widest in ((0.2, 1.5 * own), (0.3, own), (0.6, own)):
        allowed = np.sort(rng.choice(ids, int(len(ids) * share), replace=False))
        efs.clear()
        _, got = vi.search(q, 80, allowed=allowed)
        assert efs and all(own <= e <= widest < 80 / share for e in efs), (share, efs)
        assert np.isin(got[got >= 0], allowed).all()
        assert _recall(got[:, :10], x, ids, q, allowed) >= min(0.95, base) - 0.05, share
    # the breadth never shrinks as the share does, and a deep page (k above efSearch) keeps k
    shares = (1.0, 0.5, 0.25, 0.2, 0.12, 0.08, 0.05)
    assert [filtered.graph_ef(128, 80, s) for s in shares] == sorted(filtered.graph_ef(128, 80, s) for s in shares)
    assert filtered.graph_ef(128, 400, 0.2) >= 400


def _recall(got: np.ndarray, x: np.ndarray, ids: np.ndarray, q: np.ndarray, allowed: np.ndarray) -> float:
    return float(np.mean([len(set(got[i].tolist()) & set(_truth(x, ids, q[i], allowed, 10).tolist())) / 10
                          for i in range(len(q))]))


def test_empty_or_unknown_allowed_set_returns_nothing():
    vi, ids, _ = _big("flat")
    q = _unit(np.random.default_rng(3).standard_normal((1, DIM)))
    for allowed in (np.zeros(0, np.int64), np.array([-5, 2, 4], np.int64)):  # none of these ids is indexed
        scores, got = vi.search(q, 5, allowed=allowed)
        assert (got == -1).all() and np.isneginf(scores).all()


# -- through SearchService, on both databases ---------------------------------------------------------

class _VecEmbedder:
    name, has_text, device, dim, fingerprint = "vec", False, "cpu", DIM, "vec-fp"


def _bulk_catalogue(catalogue, n: int) -> np.ndarray:
    """n products of one image each in 20 leaf categories; product i costs i euros, except
    30 products in "Cat/C19" only; returns the image ids in product order."""
    cat_ids = [catalogue.ensure_category(["Cat", f"C{c}"]) for c in range(20)]
    with catalogue.engine.begin() as conn:
        conn.execute(insert(Product), [
            {"sku": f"S{i}", "title": f"product {i}", "price": Decimal(i), "currency": "EUR", "attributes": {},
             "category_id": cat_ids[19] if i < 30 else cat_ids[i % 19]} for i in range(n)])
        pids = dict(conn.execute(select(Product.sku, Product.id)).all())
        conn.execute(insert(ProductImage), [
            {"product_id": pids[f"S{i}"], "path": f"/img/{i}.jpg", "role": "catalogue", "sha256": f"{i:064x}",
             "status": "ok"} for i in range(n)])
        rows = conn.execute(select(ProductImage.id, ProductImage.path)).all()
    by_path = {p: i for i, p in rows}
    return np.array([by_path[f"/img/{i}.jpg"] for i in range(n)], dtype=np.int64)


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_service_filters_return_every_match_and_nothing_searches_nothing(catalogue, index_type, monkeypatch):
    n = 3000
    image_ids = _bulk_catalogue(catalogue, n)
    x = _unit(np.random.default_rng(5).standard_normal((n, DIM)))
    vi = VectorIndex(DIM, index_type, expected_size=n)
    vi.add(image_ids, x)
    manifest = IndexManifest("b1", "vec", "vec-fp", DIM, n, index_type, "2026-01-01T00:00:00Z")
    svc = SearchService(_VecEmbedder(), vi, catalogue, manifest)
    q = x[2500]  # a query far (in vector space) from the 30 products the filters select
    for filters in (SearchFilters(category="Cat/C19"), SearchFilters(min_price=0, max_price=29),
                    SearchFilters(category="Cat", max_price=Decimal("29.00"))):
        res = svc.search_vector(q, k=30, filters=filters, calibrate=False)
        assert sorted(h.sku for h in res.hits) == sorted(f"S{i}" for i in range(30)), filters
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
    res = svc.search_vector(q, k=5, filters=SearchFilters(min_price=100, max_price=104), calibrate=False)
    assert sorted(h.sku for h in res.hits) == [f"S{i}" for i in range(100, 105)]
    assert svc.search_vector(q, k=3, calibrate=False).hits[0].sku == "S2500"  # unfiltered: itself first

    searched: list[int] = []
    real = VectorIndex.search
    monkeypatch.setattr(VectorIndex, "search", lambda self, *a, **kw: searched.append(1) or real(self, *a, **kw))
    for nothing in (SearchFilters(min_price=999_999), SearchFilters(category="Cat/C19", min_price=30)):
        assert svc.search_vector(q, k=10, filters=nothing, calibrate=False).hits == ()
    assert searched == []  # answered without touching the index


def test_products_for_images_beyond_the_bind_parameter_limit(catalogue):
    """More ids in one call than PostgreSQL takes in one statement (65,535): 5,000 products
    asked for among 66,000 unknown ids."""
    n = 5000
    image_ids = _bulk_catalogue(catalogue, n)
    asked = np.concatenate([image_ids.max() + 1 + np.arange(66_000), image_ids[::-1]])
    info = catalogue.products_for_images(asked.tolist())
    assert len(info) == n
    prod, img = info[int(image_ids[1234])]
    assert (prod.sku, prod.price, img.path, prod.category) == ("S1234", Decimal(1234), "/img/1234.jpg",
                                                               f"Cat/C{1234 % 19}")
    assert info[int(image_ids[7])][0].category == "Cat/C19"
    rows = catalogue.candidate_rows(asked.tolist())  # the search's read, chunked alike
    assert sorted(rows) == sorted(info) and (rows[int(image_ids[1234])].sku, rows[int(image_ids[1234])].price) == \
        ("S1234", Decimal(1234))
    cols = catalogue.filter_columns()
    assert cols.image_ids.tolist() == sorted(image_ids.tolist())
    at = np.searchsorted(cols.image_ids, image_ids[[7, 1234]])
    assert cols.prices[at].tolist() == [7.0, 1234.0]
    assert [cols.category_paths[c] for c in cols.category_ids[at]] == ["Cat/C19", f"Cat/C{1234 % 19}"]
    assert catalogue.ok_image_ids().tolist() == sorted(image_ids.tolist())


def test_allowed_images_match_a_row_by_row_check():
    """Category prefixes, price bounds (products without a price fail every bound), routing
    and their combinations give exactly the images a row-by-row check would."""
    from shopsearch.catalogue.bulk import FilterColumns
    from shopsearch.filter_sets import AllowedImages

    rng = np.random.default_rng(4)
    n = 5000
    paths = {1: "Fruit", 2: "Fruit/Apple", 3: "Fruit/Apple/Green", 4: "Dairy", 5: "Fruity", 6: "Bakery"}
    prices = np.round(rng.uniform(0, 100, n), 2)
    prices[rng.random(n) < 0.1] = np.nan
    cols = FilterColumns(np.arange(n, dtype=np.int64) * 2 + 1, np.arange(n, dtype=np.int64), prices,
                         rng.choice([-1, 1, 2, 3, 4, 5], n), paths)
    allowed = AllowedImages(lambda: cols)

    def check(f: SearchFilters, routed: tuple[str, ...] | None = None) -> None:
        def ok(r: int) -> bool:
            path = paths.get(int(cols.category_ids[r]))
            in_cat = lambda ps: path is not None and any(path == p or path.startswith(p + "/") for p in ps)  # noqa: E731
            return ((not f.category or in_cat((f.category,))) and (routed is None or in_cat(routed))
                    and (f.min_price is None or prices[r] >= float(f.min_price))
                    and (f.max_price is None or prices[r] <= float(f.max_price)))
        want = sorted(int(cols.image_ids[r]) for r in range(n) if ok(r))
        for _ in range(2):  # computed, then from the cache
            got = allowed.ids_for(f, routed)
            assert sorted(got.tolist()) == want, (f, routed)

    assert allowed.ids_for(SearchFilters()) is None
    check(SearchFilters(category="Fruit"))  # Fruit, Fruit/Apple, Fruit/Apple/Green; not "Fruity"
    check(SearchFilters(category="Fruit/Apple", min_price=20))
    check(SearchFilters(category="Bakery"))  # a category no image is in
    check(SearchFilters(max_price=Decimal("10.5")))
    check(SearchFilters(min_price=40, max_price=40.5))
    check(SearchFilters(min_price=60, max_price=50))  # an empty range
    check(SearchFilters(min_price=10 ** 6))
    check(SearchFilters(), routed=("Dairy", "Fruit/Apple/Green"))
    check(SearchFilters(category="Fruit", max_price=30), routed=("Fruit/Apple",))


def test_a_repeated_allowed_set_is_translated_once_and_answers_the_same(monkeypatch):
    """The index keeps a read-only allowed set's positions (keyed by the array, held weakly):
    a repeated filter skips the id -> position translation; a writeable array is never kept."""
    vi, ids, x = _big("hnsw")
    rng = np.random.default_rng(6)
    q = _unit(rng.standard_normal((2, DIM)))
    allowed = np.sort(rng.choice(ids, 500, replace=False))
    first = vi.search(q, 20, allowed=allowed)
    translations: list[int] = []
    real = filtered.PositionMap.positions
    monkeypatch.setattr(filtered.PositionMap, "positions",
                        lambda self, a: translations.append(len(a)) or real(self, a))
    np.testing.assert_array_equal(vi.search(q, 20, allowed=allowed)[1], first[1])
    assert len(translations) == 1  # writeable: translated again
    allowed.flags.writeable = False
    for _ in range(3):
        np.testing.assert_array_equal(vi.search(q, 20, allowed=allowed)[1], first[1])
    assert len(translations) == 2  # read-only: translated once, then from the cache
    assert np.array_equal(first[1][0], _truth(x, ids, q[0], allowed, 20))
    del allowed  # its entry goes with it
    cache = vi._among.cache  # noqa: SLF001 - the cache's bookkeeping is what this test checks
    assert cache._entries == {} and cache._bytes == 0  # noqa: SLF001


def test_allowed_images_are_one_read_only_array_of_unique_ids_per_filter():
    from shopsearch.catalogue.bulk import FilterColumns
    from shopsearch.filter_sets import AllowedImages

    rng = np.random.default_rng(8)
    n = 2000
    cols = FilterColumns(np.arange(n, dtype=np.int64) + 5, np.arange(n, dtype=np.int64), rng.uniform(0, 100, n),
                         rng.choice([1, 2], n), {1: "A", 2: "B"})
    allowed = AllowedImages(lambda: cols)
    for f in (SearchFilters(min_price=10, max_price=20), SearchFilters(category="B")):
        got = allowed.ids_for(f)
        assert len(np.unique(got)) == len(got) and not got.flags.writeable
        assert allowed.ids_for(f) is got


def test_a_page_reads_about_k_candidate_rows_and_more_only_when_rows_fail(catalogue):
    """The database is asked for the k best candidates' rows (plus a small margin), not for
    every candidate; rows whose product no longer passes the filter are read past."""
    from sqlalchemy import update

    from shopsearch.search import READ_MARGIN

    n = 3000
    image_ids = _bulk_catalogue(catalogue, n)
    x = _unit(np.random.default_rng(9).standard_normal((n, DIM)))
    vi = VectorIndex(DIM, "flat", expected_size=n)
    vi.add(image_ids, x)
    svc = SearchService(_VecEmbedder(), vi, catalogue, IndexManifest("b1", "vec", "vec-fp", DIM, n, "flat", "now"))
    asked: list[int] = []
    real = catalogue.candidate_rows  # the search's read of its candidates' live rows
    catalogue.candidate_rows = lambda ids: asked.append(len(ids)) or real(ids)
    f = SearchFilters(max_price=2000)
    first = svc.search_vector(x[100], k=10, filters=f, calibrate=False)
    assert first.hits[0].sku == "S100" and sum(asked) == 10 + READ_MARGIN
    # the six best products now cost more than the filter allows (the service's columns are older)
    gone = [h.sku for h in first.hits[:6]]
    with catalogue.engine.begin() as conn:
        conn.execute(update(Product).where(Product.sku.in_(gone)).values(price=Decimal(5000)))
    asked.clear()
    again = svc.search_vector(x[100], k=10, filters=f, calibrate=False)
    assert len(again.hits) == 10 and not set(gone) & {h.sku for h in again.hits}
    assert all(h.price <= 2000 for h in again.hits) and len(asked) == 2
    assert [h.sku for h in again.hits[:4]] == [h.sku for h in first.hits[6:10]]


@pytest.mark.parametrize("spread", [3, 10])  # ids dense enough for the lookup table, then too sparse for it
def test_positions_drop_unknown_and_repeated_ids(spread):
    rng = np.random.default_rng(10)
    table = rng.permutation(np.arange(1000, dtype=np.int64) * spread + 7)  # positions in no id order
    pm = filtered.PositionMap(table)
    asked = np.concatenate([table[[5, 900, 5, 17]], [-3, 8, 10 ** 9]])  # a repeat, unknown ids
    assert pm.positions(asked).tolist() == [5, 17, 900]
    vi, ids, x = _big("hnsw")
    q = _unit(rng.standard_normal((1, DIM)))
    scores, got = vi.search(q, 6, allowed=np.repeat(ids[:3], 2))  # each allowed id twice
    assert sorted(got[0][:3].tolist()) == ids[:3].tolist() and got[0][3:].tolist() == [-1, -1, -1]
