"""SearchService: image (or text) -> top-k products, grouped per product."""
from __future__ import annotations

import time
from dataclasses import replace
from collections import Counter
from typing import Protocol

import numpy as np
from PIL import Image

from shopsearch.catalogue.records import ImageInfo, ProductInfo
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.confidence import Calibration, annotate
from shopsearch.embedders.base import Embedder
from shopsearch.errors import CapabilityError
from shopsearch.index.vector_index import IndexManifest, VectorIndex, check_model
from shopsearch.results import CategoryPrediction, ProductHit, SearchFilters, SearchResult


class CategoryRouter(Protocol):
    """Optional collaborator: predicts a query's category and narrows the search to it."""

    def route(self, vector: np.ndarray) -> tuple[CategoryPrediction, tuple[str, ...] | None]:
        """(prediction, category paths to restrict to, or None for no restriction)."""


def _in_categories(category: str | None, prefixes: tuple[str, ...]) -> bool:
    return category is not None and any(category == p or category.startswith(p + "/") for p in prefixes)


class SearchService:
    """Takes its collaborators; owns no I/O set-up of its own."""

    def __init__(self, embedder: Embedder, index: VectorIndex, catalogue: CatalogueStore,
                 manifest: IndexManifest, router: CategoryRouter | None = None,
                 calibration: Calibration | None = None) -> None:
        check_model(manifest, embedder.fingerprint)
        self.embedder = embedder
        self.index = index
        self.catalogue = catalogue
        self.manifest = manifest
        self.router = router
        self.calibration = calibration

    # -- entry points ---------------------------------------------------------
    def search_image(self, image: Image.Image, k: int = 10, filters: SearchFilters = SearchFilters(),
                     routing: bool = True) -> SearchResult:
        t0 = time.perf_counter()
        vec = self.embedder.encode_images([image])[0]
        t1 = time.perf_counter()
        return self.search_vector(vec, k, filters, routing=routing, embed_ms=(t1 - t0) * 1000)

    def search_text(self, text: str, k: int = 10, filters: SearchFilters = SearchFilters()) -> SearchResult:
        if not self.embedder.has_text:
            raise CapabilityError(f"model {self.embedder.name!r} has no text tower; text search needs a CLIP model")
        t0 = time.perf_counter()
        vec = self.embedder.encode_texts([text])[0]
        return self.search_vector(vec, k, filters, routing=False, embed_ms=(time.perf_counter() - t0) * 1000,
                                  calibrate=False)

    def search_vector(self, vec: np.ndarray, k: int = 10, filters: SearchFilters = SearchFilters(),
                      routing: bool = True, exclude_skus: frozenset[str] = frozenset(),
                      embed_ms: float = 0.0, calibrate: bool = True) -> SearchResult:
        """Top-k products; image queries carry a calibrated confidence (shopsearch.confidence),
        computed on at least two products so that k=1 has a runner-up to compare with."""
        k_asked, k = k, max(k, 2)
        t0 = time.perf_counter()
        prediction, allowed = None, None
        if routing and self.router is not None:
            prediction, allowed = self.router.route(vec)
        hits = self._grouped(vec, k, filters, allowed, exclude_skus)
        if allowed is not None and len(hits) < k:
            # Routing must never hide results: top up from the unrestricted ranking.
            seen = {h.sku for h in hits} | set(exclude_skus)
            hits += [h for h in self._grouped(vec, k, filters, None, frozenset(seen))][: k - len(hits)]
        t1 = time.perf_counter()
        res = SearchResult(tuple(hits[:k]), self.manifest.model_name, self.manifest.build_id,
                           {"embed": embed_ms, "search": (t1 - t0) * 1000, "total": embed_ms + (t1 - t0) * 1000},
                           prediction)
        if calibrate:
            res = annotate(res, self.calibration)
        return replace(res, hits=res.hits[:k_asked])

    def similar_products(self, sku: str, k: int = 8, max_per_category: float = 0.5) -> SearchResult:
        """"More like this": neighbours of the product's images, itself and exact duplicates
        excluded, one card per product, and no single category filling more than
        `max_per_category` of the list while others are available."""
        product = self.catalogue.get_product(sku)
        ids = [i.id for i in product.images if i.status == "ok"]
        vecs = [self.index.reconstruct(i) for i in ids if self._has(i)]
        if not vecs:
            return SearchResult((), self.manifest.model_name, self.manifest.build_id)
        query = np.mean(np.stack(vecs), axis=0)
        query /= max(np.linalg.norm(query), 1e-12)
        own_hashes = {i.sha256 for i in product.images if i.sha256}
        pool = self._grouped(query, k * 4, SearchFilters(), None, frozenset({sku}), exclude_hashes=own_hashes)
        return SearchResult(tuple(_diversify(pool, k, max_per_category)), self.manifest.model_name, self.manifest.build_id)

    # -- internals --------------------------------------------------------------
    def _has(self, image_id: int) -> bool:
        try:
            self.index.reconstruct(image_id)
            return True
        except RuntimeError:
            return False

    def _grouped(self, vec: np.ndarray, k: int, filters: SearchFilters, allowed: tuple[str, ...] | None,
                 exclude_skus: frozenset[str], exclude_hashes: set[str] | None = None) -> list[ProductHit]:
        """Best image per product, over a growing candidate list until k products pass the filters."""
        n = len(self.index)
        fetch = min(n, max(50, 8 * k))
        # Routing is a preference, not a filter the shopper chose: a small predicted category
        # must not make us scan the whole index (the caller tops up from the unrestricted list).
        limit = n if allowed is None else min(n, 4 * fetch)
        while True:
            scores, ids = self.index.search(vec[None, :], fetch)
            info = self.catalogue.products_for_images([int(i) for i in ids[0] if i >= 0])
            best: dict[str, tuple[float, ProductInfo, ImageInfo, int]] = {}
            for score, image_id in zip(scores[0], ids[0]):
                if image_id < 0 or int(image_id) not in info:
                    continue
                prod, img = info[int(image_id)]
                if not self._passes(prod, img, filters, allowed, exclude_skus, exclude_hashes):
                    continue
                if prod.sku in best:
                    s, p, i, c = best[prod.sku]
                    best[prod.sku] = (s, p, i, c + 1)
                else:
                    best[prod.sku] = (float(score), prod, img, 1)
            if len(best) >= k or fetch >= limit:
                break
            fetch = min(limit, fetch * 4)
        ranked = sorted(best.values(), key=lambda t: -t[0])[:k]
        return [ProductHit(p.sku, p.title, s, i.id, i.path, p.brand, p.price, p.currency, p.category,
                           p.category_source, c) for s, p, i, c in ranked]

    @staticmethod
    def _passes(prod: ProductInfo, img: ImageInfo, f: SearchFilters, allowed: tuple[str, ...] | None,
                exclude_skus: frozenset[str], exclude_hashes: set[str] | None) -> bool:
        if prod.sku in exclude_skus:
            return False
        if exclude_hashes and img.sha256 in exclude_hashes:
            return False
        if f.category and not _in_categories(prod.category, (f.category,)):
            return False
        if allowed is not None and not _in_categories(prod.category, allowed):
            return False
        if f.min_price is not None and (prod.price is None or float(prod.price) < float(f.min_price)):
            return False
        if f.max_price is not None and (prod.price is None or float(prod.price) > float(f.max_price)):
            return False
        return True


def _diversify(pool: list[ProductHit], k: int, max_share: float) -> list[ProductHit]:
    """Greedy: take in score order, deferring products whose category already has its share."""
    cap = max(1, int(round(k * max_share)))
    out: list[ProductHit] = []
    deferred: list[ProductHit] = []
    per_cat: Counter[str | None] = Counter()
    for h in pool:
        if per_cat[h.category] < cap:
            out.append(h)
            per_cat[h.category] += 1
        else:
            deferred.append(h)
        if len(out) == k:
            return out
    return out + deferred[: k - len(out)]
