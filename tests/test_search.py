"""SearchService over generated images with the deterministic fake embedder."""
from __future__ import annotations

from decimal import Decimal

import pytest

from indexer.build import IndexBuilder
from shopsearch.catalogue.records import ImageRecord, ProductRecord
from shopsearch.errors import CapabilityError, ModelMismatchError, ProductNotFoundError
from shopsearch.index import IndexStore
from shopsearch.results import SearchFilters
from shopsearch.search import SearchService
from tests.conftest import FakeEmbedder, jitter, make_image, sha


@pytest.fixture
def indexed(tmp_path, sqlite_catalogue, image_dir, fake_embedder):
    """12 products in 3 categories; products 0..5 have two images each (the second a jittered copy)."""
    paths = image_dir(12)
    cats = [("Fruit", "Apple"), ("Fruit", "Banana"), ("Dairy", "Milk")]
    for i, p in enumerate(paths):
        imgs = [ImageRecord(str(p), sha256=sha(p))]
        if i < 6:
            extra = tmp_path / f"extra_{i}.png"
            jitter(make_image(i), seed=100 + i, amount=6).save(extra)
            imgs.append(ImageRecord(str(extra), role="reference", sha256=sha(extra)))
        sqlite_catalogue.upsert_product(ProductRecord(
            sku=f"P{i}", title=f"Product {i}", price=Decimal(i), currency="EUR",
            category_path=cats[i % 3], images=tuple(imgs)))
    store = IndexStore(tmp_path / "index")
    report = IndexBuilder(fake_embedder, sqlite_catalogue, store, tmp_path / "vectors").build(progress=False, workers=1)
    index, manifest = store.load_current()
    return SearchService(fake_embedder, index, sqlite_catalogue, manifest), report


def test_build_report(indexed):
    _, report = indexed
    assert report.vectors == 18 and report.embedded == 18 and not report.failed


def test_photo_finds_its_product_grouped(indexed):
    svc, _ = indexed
    for i in range(12):
        res = svc.search_image(jitter(make_image(i), seed=i), k=5)
        assert res.hits[0].sku == f"P{i}"
        skus = [h.sku for h in res.hits]
        assert len(skus) == len(set(skus)) == 5  # one entry per product
        assert res.hits[0].score >= res.hits[1].score
    top = svc.search_image(make_image(0), k=1).hits[0]
    assert top.matched_images == 2 and top.category == "Fruit/Apple" and top.price == Decimal(0)


def test_filters_category_and_price(indexed):
    svc, _ = indexed
    res = svc.search_image(make_image(0), k=10, filters=SearchFilters(category="Dairy"))
    assert res.hits and all(h.category.startswith("Dairy") for h in res.hits)
    assert len(res.hits) == 4
    res = svc.search_image(make_image(0), k=10, filters=SearchFilters(min_price=3, max_price=6))
    assert sorted(h.sku for h in res.hits) == ["P3", "P4", "P5", "P6"]
    # a category match on a path prefix only, never a substring of a name
    assert svc.search_image(make_image(0), k=10, filters=SearchFilters(category="Fru")).hits == ()


def test_similar_products_excludes_itself_and_diversifies(indexed):
    svc, _ = indexed
    res = svc.similar_products("P0", k=6)
    skus = [h.sku for h in res.hits]
    assert "P0" not in skus and len(skus) == len(set(skus)) == 6
    cats = [h.category for h in res.hits]
    assert max(cats.count(c) for c in set(cats)) <= 3
    with pytest.raises(ProductNotFoundError):
        svc.similar_products("nope")


def test_text_search_needs_text_tower(indexed):
    svc, _ = indexed
    with pytest.raises(CapabilityError):
        svc.search_text("green apple")


def test_other_model_is_refused(indexed):
    svc, _ = indexed
    with pytest.raises(ModelMismatchError):
        SearchService(FakeEmbedder(salt="other"), svc.index, svc.catalogue, svc.manifest)


def test_rebuild_reuses_cached_vectors(tmp_path, sqlite_catalogue, image_dir):
    emb = FakeEmbedder()
    for i, p in enumerate(image_dir(5)):
        sqlite_catalogue.upsert_product(ProductRecord(sku=f"S{i}", title="x", images=(ImageRecord(str(p), sha256=sha(p)),)))
    store = IndexStore(tmp_path / "index")
    b = IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors")
    r1 = b.build(progress=False, workers=1)
    r2 = IndexBuilder(emb, sqlite_catalogue, store, tmp_path / "vectors").build(progress=False, workers=1, force=True)
    assert (r1.embedded, r2.embedded, r2.reused) == (5, 0, 5)
    assert emb.calls == 5 and r1.build_id != r2.build_id


def test_bad_image_is_reported_not_fatal(tmp_path, sqlite_catalogue, image_dir):
    good = image_dir(2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    for i, p in enumerate(good + [bad]):
        sqlite_catalogue.upsert_product(ProductRecord(sku=f"S{i}", title="x", images=(ImageRecord(str(p), sha256=f"{i}" * 64),)))
    store = IndexStore(tmp_path / "index")
    r = IndexBuilder(FakeEmbedder(), sqlite_catalogue, store, tmp_path / "vectors").build(progress=False, workers=1)
    assert r.vectors == 2 and len(r.failed) == 1 and r.failed[0][1] == str(bad)
    assert len(sqlite_catalogue.indexable_images()) == 2  # marked invalid in the catalogue


class _OneCategoryRouter:
    def route(self, vector):
        from shopsearch.results import CategoryPrediction

        return CategoryPrediction("Dairy/Milk", 0.9, routing="filter"), ("Dairy/Milk",)


def test_routing_prefers_category_tops_up_and_never_scans_everything(indexed, monkeypatch):
    svc, _ = indexed
    routed = SearchService(svc.embedder, svc.index, svc.catalogue, svc.manifest, router=_OneCategoryRouter())
    asked: list[tuple[int, int | None]] = []
    real = routed.index.search
    monkeypatch.setattr(routed.index, "search", lambda q, k, allowed=None: asked.append(
        (k, None if allowed is None else len(allowed))) or real(q, k, allowed=allowed))
    res = routed.search_image(make_image(0), k=3)
    # the 4 Dairy products come first, then the list is topped up from everything
    assert [h.category for h in res.hits] == ["Dairy/Milk"] * 3
    assert res.predicted_category.category == "Dairy/Milk"
    # the routed search is restricted inside the index to the category's 6 images (4 products)
    assert asked == [(6, 6)]
    asked.clear()
    res = routed.search_image(make_image(0), k=8)
    assert [h.category for h in res.hits[:4]] == ["Dairy/Milk"] * 4 and len(res.hits) == 8
    assert asked[0] == (6, 6) and asked[1][1] is None  # then one unrestricted top-up
    # a big gallery is never scanned whole: each search asks for a bounded number of images
    monkeypatch.setattr(type(routed.index), "__len__", lambda self: 1_000_000)
    asked.clear()
    routed.search_image(make_image(0), k=8)
    assert max(k for k, _ in asked) <= 8 * max(50, 8 * 8)


def _grouped_from_rows(svc: SearchService, vec, k: int) -> list[tuple[str, float, int, int]]:
    """The grouping search did before shopsearch.grouping: one catalogue row per candidate image,
    best image per product in the search's order, then sorted by score (the reference)."""
    fetch = min(len(svc.index), max(50, 8 * k))
    scores, ids = svc.index.search(vec[None, :], fetch)
    info = svc.catalogue.products_for_images([int(i) for i in ids[0] if i >= 0])
    best: dict[str, list] = {}
    for score, image_id in zip(scores[0], ids[0]):
        if image_id < 0 or int(image_id) not in info:
            continue
        prod, img = info[int(image_id)]
        if prod.sku in best:
            best[prod.sku][3] += 1
        else:
            best[prod.sku] = [prod.sku, float(score), img.id, 1]
    return [tuple(b) for b in sorted(best.values(), key=lambda b: -b[1])[:k]]


def test_grouping_from_columns_matches_a_row_per_candidate(indexed):
    svc, _ = indexed
    for i in range(12):
        vec = svc.embedder.encode_images([jitter(make_image(i), seed=50 + i)])[0]
        for k in (1, 5, 12):
            got = [(h.sku, h.score, h.image_id, h.matched_images) for h in svc.search_vector(vec, k).hits]
            assert got == _grouped_from_rows(svc, vec, max(k, 2))[:k]


def test_grouping_notices_catalogue_changes_without_a_new_build(indexed, tmp_path):
    svc, _ = indexed
    query = make_image(0)
    assert svc.search_image(query, k=1).hits[0].matched_images == 2
    loads = svc.owners.loads
    svc.search_image(query, k=3)
    assert svc.owners.loads == loads  # unchanged catalogue: the columns are read once
    # P0 keeps only its first image: its second leaves the catalogue (still in the index)
    p0 = svc.catalogue.get_product("P0")
    svc.catalogue.upsert_product(ProductRecord(sku="P0", title="Product 0 renamed", price=Decimal(0), currency="EUR",
                                               category_path=("Fruit", "Apple"),
                                               images=(ImageRecord(p0.images[0].path, sha256=p0.images[0].sha256),)))
    top = svc.search_image(query, k=1).hits[0]
    assert (top.sku, top.matched_images, top.title) == ("P0", 1, "Product 0 renamed")
    assert svc.owners.loads == loads + 1
    # P0 deleted: gone from the results at once, as the live rows said before
    svc.catalogue.delete_products(["P0"])
    res = svc.search_image(query, k=12)
    assert "P0" not in [h.sku for h in res.hits] and len(res.hits) == 11
    vec = svc.embedder.encode_images([query])[0]
    assert [(h.sku, h.score, h.image_id, h.matched_images) for h in svc.search_vector(vec, 11).hits] == \
        _grouped_from_rows(svc, vec, 11)


def test_group_candidates_orders_counts_and_leaves_out():
    import numpy as np

    from shopsearch.grouping import ImageOwners, group_candidates

    owners = ImageOwners(7, np.array([3, 5, 8, 9, 12]), np.array([1, 2, 1, 3, 2]))
    # image 4 is not in the catalogue (deleted), -1 is FAISS's "no result"; 9 and 3 tie on score
    c = group_candidates(owners, np.array([5, 4, 9, 3, 12, 8, -1]), np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.0]))
    assert c.image_ids.tolist() == [5, 9, 3] and c.counts.tolist() == [2, 1, 2]
    assert c.scores.tolist() == pytest.approx([0.9, 0.7, 0.7])
    c = group_candidates(owners, np.array([5, 9, 3, 12]), np.array([0.9, 0.7, 0.6, 0.5]), exclude_ids=np.array([5]))
    assert c.image_ids.tolist() == [9, 3, 12] and c.counts.tolist() == [1, 1, 1]
    empty = ImageOwners(0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert group_candidates(empty, np.array([5]), np.array([0.9])).image_ids.tolist() == []
    # dense ids are looked up in a table, sparse ones by binary search: the same answers
    sparse = ImageOwners(7, np.array([3, 5, 8, 9, 12]) * 1000, np.array([1, 2, 1, 3, 2]))
    assert owners.table is not None and sparse.table is None
    probe = np.array([5, 4, 9, 3, 12, 8, -1, 13, 2, 10 ** 12])
    assert owners.rows(probe).tolist() == [1, -1, 3, 0, 4, 2, -1, -1, -1, -1]
    assert sparse.rows(np.where(probe >= 0, probe * 1000, -1)).tolist() == owners.rows(probe).tolist()
    c = group_candidates(sparse, np.array([5, 4, 9, 3, 12, 8, -1]) * 1000, np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.0]))
    assert c.image_ids.tolist() == [5000, 9000, 3000] and c.counts.tolist() == [2, 1, 2]


def test_candidate_rows_are_products_for_images_cut_to_the_answer(catalogue, image_dir):
    """The search's candidate read (issue 18: no description, attributes or image metadata) gives
    each image exactly the fields products_for_images gives it, for merchant, predicted and no
    category, no price or brand; deleted ids are absent; a price edited since is read live."""
    paths = image_dir(5)
    for i, p in enumerate(paths[:4]):
        catalogue.upsert_product(ProductRecord(
            sku=f"S{i} é/ü", title=f"Title {i}", price=None if i == 1 else Decimal("12.34") + i,
            currency=None if i == 1 else "EUR", brand="Brand" if i % 2 else None, description="long text",
            attributes={"colour": "red"}, category_path=("Fruit", "Apple") if i in (0, 3) else None,
            images=(ImageRecord(str(p), sha256=sha(p)),) + ((ImageRecord(str(paths[4]), role="reference"),)
                                                             if i == 3 else ())))
    predicted = catalogue.ensure_category(("Dairy", "Milk"))
    catalogue.set_predicted_category(catalogue.get_product("S2 é/ü").id, predicted, 0.7)
    catalogue.set_predicted_category(catalogue.get_product("S3 é/ü").id, predicted, 0.9)  # the merchant's wins
    ids = [i.id for sku in ("S0 é/ü", "S1 é/ü", "S2 é/ü", "S3 é/ü") for i in catalogue.get_product(sku).images]
    asked = ids + [max(ids) + 100]  # an id no longer in the catalogue
    full = catalogue.products_for_images(asked)
    rows = catalogue.candidate_rows(asked)
    assert sorted(rows) == sorted(full) == sorted(ids)
    for image_id, (prod, img) in full.items():
        r = rows[image_id]
        assert (r.image_id, r.image_path, r.sku, r.title, r.brand, r.price, r.currency, r.category,
                r.category_source) == (img.id, img.path, prod.sku, prod.title, prod.brand, prod.price, prod.currency,
                                       prod.category, prod.category_source)
    assert {rows[i].category_source for i in ids} == {"merchant", "predicted", None}
    catalogue.upsert_product(ProductRecord(sku="S0 é/ü", title="Title 0", price=Decimal("1.50"),
                                           keep=frozenset({"description", "brand", "currency", "attributes"})))
    assert catalogue.candidate_rows(ids[:1])[ids[0]].price == Decimal("1.50")
    assert catalogue.candidate_rows([]) == {}
