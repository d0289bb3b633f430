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
    assert (r1.embedded, r2.embedded, r2.skipped) == (5, 0, 5)
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
