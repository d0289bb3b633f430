"""Confidence under a shopper's filter without a category head, on seeded synthetic vectors whose
right answers are known: the fit, read among the filtered products only, would call the best
product the filter leaves a strong match when the photographed product lies outside the filter;
the unfiltered neighbourhood bounds it, and a filter holding the product keeps its confidence."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import insert, select

from shopsearch.catalogue.models import Product, ProductImage
from shopsearch.confidence import Calibration
from shopsearch.confidence_fit import LabelledQuery, calibrate_index
from shopsearch.index import IndexManifest, VectorIndex
from shopsearch.results import CategoryPrediction, SearchFilters
from shopsearch.search import SearchService

DIM = 32
N = 40  # products 0..19 in Cat/A, 20..39 in Cat/B; product i costs i euros
LOOKALIKES = 5  # product 20+i (Cat/B) looks like product i (Cat/A), i < LOOKALIKES
NOISE = 0.07  # per coordinate: a photo's similarity to its product's centre is about 0.9


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class _VecEmbedder:
    name, has_text, device, dim, fingerprint = "vec", False, "cpu", DIM, "vec-fp"


def _shop(catalogue, rng: np.random.Generator) -> tuple[VectorIndex, dict[int, str], np.ndarray]:
    """Two catalogue photos per product around its centre; (index, image id -> sku, centres)."""
    centres = _unit(rng.standard_normal((N, DIM)))
    for i in range(LOOKALIKES):  # similarity about 0.92 to the product it looks like
        centres[N // 2 + i] = _unit(centres[i] + 0.4 * _unit(rng.standard_normal(DIM)))
    a, b = catalogue.ensure_category(["Cat", "A"]), catalogue.ensure_category(["Cat", "B"])
    with catalogue.engine.begin() as conn:
        conn.execute(insert(Product), [
            {"sku": f"S{i}", "title": f"product {i}", "price": Decimal(i), "currency": "EUR", "attributes": {},
             "category_id": a if i < N // 2 else b} for i in range(N)])
        pids = dict(conn.execute(select(Product.sku, Product.id)).all())
        conn.execute(insert(ProductImage), [
            {"product_id": pids[f"S{i}"], "path": f"/img/{i}_{j}.jpg", "role": "catalogue",
             "sha256": f"{2 * i + j:064x}", "status": "ok"} for i in range(N) for j in range(2)])
        by_path = dict(conn.execute(select(ProductImage.path, ProductImage.id)).all())
    ids = np.array([by_path[f"/img/{i}_{j}.jpg"] for i in range(N) for j in range(2)], dtype=np.int64)
    vecs = _unit(np.repeat(centres, 2, axis=0) + NOISE * rng.standard_normal((2 * N, DIM)))
    index = VectorIndex(DIM, "flat")
    index.add(ids, vecs)
    return index, {int(i): f"S{n // 2}" for n, i in enumerate(ids)}, centres


def _served(catalogue, how: str) -> tuple[SearchService, Calibration, np.ndarray]:
    """(service without a head, calibration, product centres): calibrated leave-one-out over the
    catalogue (score, lead, familiarity) or on labelled shopper photos (score, familiarity)."""
    rng = np.random.default_rng(11)
    index, product_of, centres = _shop(catalogue, rng)
    labelled = [LabelledQuery(_unit(centres[n % N] + NOISE * rng.standard_normal(DIM)), f"S{n % N}")
                for n in range(400)] if how == "labelled" else ()
    cal = calibrate_index(index, product_of, {i: None for i in product_of}, build_id="b1", labelled=labelled)
    assert cal.fitted and cal.method == ("labelled" if labelled else "leave-one-out")
    manifest = IndexManifest("b1", "vec", "vec-fp", DIM, len(product_of), "flat", "now")
    return SearchService(_VecEmbedder(), index, catalogue, manifest, calibration=cal), cal, centres


@pytest.fixture(params=["catalogue", "labelled"])
def shop(request, sqlite_catalogue):
    return _served(sqlite_catalogue, request.param)


def _photos(centres: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """A clear shopper's photo of each product that has a look-alike in the other category (half
    the usual noise: each is unmistakably its product, so right and wrong are known)."""
    rng = np.random.default_rng(23)
    return [(i, _unit(centres[i] + NOISE / 2 * rng.standard_normal(DIM))) for i in range(LOOKALIKES)]


def _unfiltered_fit(cal: Calibration, res, q: np.ndarray) -> float:
    """What the fit says when it reads the filtered products as if they were the whole shop."""
    return cal.confidence([h.score for h in res.hits], familiarity=cal.familiarity(q))[0]


def test_a_filter_hiding_the_photographed_product_leaves_no_strong_match(shop):
    svc, cal, centres = shop
    fooled = 0
    for i, q in _photos(centres):
        whole = svc.search_vector(q, k=10)
        assert whole.hits[0].sku == f"S{i}" and whole.match == "strong"  # the right answer, and known
        among_b = svc.search_vector(q, k=10, filters=SearchFilters(category="Cat/B"))
        assert among_b.hits[0].sku == f"S{N // 2 + i}"  # its look-alike: a wrong answer
        fooled += _unfiltered_fit(cal, among_b, q) >= cal.strong_at
        # the shop's best product is outside the filter and right with chance c: another is at most 1 - c
        assert among_b.match != "strong" and among_b.confidence_limit == "filter"
        assert among_b.confidence <= max(0.01, 1 - whole.confidence) + 1e-9
        assert all(h.calibrated <= among_b.confidence + 1e-9 for h in among_b.hits)
        # a price filter hiding it (products 0-9 cost under 10) is no different
        priced = svc.search_vector(q, k=10, filters=SearchFilters(min_price=Decimal(10)))
        assert priced.hits[0].sku == f"S{N // 2 + i}" and priced.match != "strong"
        assert priced.confidence_limit == "filter"
    assert fooled >= 3  # the flaw this guards against is present in this data


def test_a_filter_holding_the_photographed_product_keeps_its_confidence(shop):
    svc, cal, centres = shop
    for i, q in _photos(centres):
        whole = svc.search_vector(q, k=10)
        among_a = svc.search_vector(q, k=10, filters=SearchFilters(category="Cat/A"))
        assert among_a.hits[0].sku == f"S{i}" and among_a.match == "strong"
        # as the fit reads the filtered list, never above what the whole shop's neighbourhood supports
        assert among_a.confidence == pytest.approx(min(_unfiltered_fit(cal, among_a, q), whole.confidence))
    # no filter: one search, as before
    calls = []
    real = svc._grouped  # noqa: SLF001
    svc._grouped = lambda *a, **kw: calls.append(a) or real(*a, **kw)  # noqa: SLF001
    res = svc.search_vector(_photos(centres)[0][1], k=10)
    assert len(calls) == 1 and res.confidence_limit is None


class _Head:
    """A category router whose head puts `mass` of every photo in Cat/B (and knows no other category)."""

    def __init__(self, mass: float | None) -> None:
        self.mass = mass

    def route(self, vector):
        return CategoryPrediction("Cat/B", self.mass or 0.0, routing="all"), None

    def category_probs(self, vector):
        return {"Cat/B": self.mass, "": 0.5} if self.mass is not None else {"Other": 0.9, "": 0.5}


def test_a_head_that_knows_the_category_bounds_it_as_before(shop):
    svc, cal, centres = shop
    i, q = _photos(centres)[1]
    plain = svc.search_vector(q, k=10, filters=SearchFilters(category="Cat/B"))
    for mass, want in ((0.9, None), (None, plain.confidence)):
        headed = SearchService(svc.embedder, svc.index, svc.catalogue, svc.manifest, router=_Head(mass),
                               calibration=cal)
        res = headed.search_vector(q, k=10, filters=SearchFilters(category="Cat/B"))
        if want is None:  # the head's mass is the only bound (a wrong head, trusted as before)
            assert res.confidence == pytest.approx(min(_unfiltered_fit(cal, res, q), 0.9))
        else:  # a head that cannot tell about Cat/B: the unfiltered neighbourhood bounds it
            assert res.confidence == pytest.approx(want) and res.confidence_limit == "filter"
