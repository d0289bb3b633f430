"""SearchService: image (or text) -> top-k products, grouped per product."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from typing import Protocol

import numpy as np
from PIL import Image

from shopsearch.catalogue.records import CandidateRow
from shopsearch.catalogue.store import CatalogueStore
from shopsearch.centring import DomainCentring
from shopsearch.confidence import Calibration, annotate, capped, category_mass, scoring_key
from shopsearch.embedders.base import Embedder
from shopsearch.errors import CapabilityError
from shopsearch.filter_sets import AllowedImages
from shopsearch.grouping import OwnersCache, group_candidates
from shopsearch.images import grey_thumbnail, lacks_detail
from shopsearch.index.manifest import IndexManifest, check_model
from shopsearch.index.vector_index import VectorIndex
from shopsearch.photo_advice import photo_advice
from shopsearch.rerank import RerankingIndex, RerankOptions
from shopsearch.results import CategoryPrediction, ProductHit, SearchFilters, SearchResult


#: candidate rows read beyond the k a page needs, for rows deleted or changed since the
#: search's columns were read (they fail the re-check; a short read reads again)
READ_MARGIN = 4


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
                 rerank: RerankOptions = RerankOptions(), tta: bool = False, fusion: bool = False,
                 calibration: Calibration | None = None, centring: DomainCentring | None = None) -> None:
        check_model(manifest, embedder.fingerprint)
        self.embedder = embedder
        self.index = index
        self.catalogue = catalogue
        self.manifest = manifest
        self.router = router
        self.rerank = rerank  # the default of every query; a query may ask for another
        self.tta = tta
        # fuse the router's category probabilities into the ranking instead of filtering by them
        self.fusion = fusion
        self.calibration = calibration
        # the build's per-domain means (shopsearch.centring): its gallery vectors are stored centred
        self.centring = centring
        # filters and routing restrict the vector search itself (docs/filtered_search.md)
        self.allowed_images = AllowedImages(lambda: catalogue.filter_columns())
        # each image's product, for grouping candidates without a database row each (shopsearch.grouping)
        self.owners = OwnersCache(catalogue.generation, catalogue.image_owners)

    # -- entry points ---------------------------------------------------------
    def search_image(self, image: Image.Image, k: int = 10, filters: SearchFilters = SearchFilters(),
                     routing: bool = True, rerank: RerankOptions | None = None,
                     tta: bool | None = None, fusion: bool | None = None) -> SearchResult:
        """`tta`: also embed the mirrored photo and search with the mean of both vectors."""
        t0 = time.perf_counter()
        vec = tta_vector(self.embedder, image) if (self.tta if tta is None else tta) else \
            query_vectors(self.embedder, [image])[0]
        t1 = time.perf_counter()
        grey = grey_thumbnail(image)  # read by both checks on the photo's content
        return self.search_vector(vec, k, filters, routing=routing, embed_ms=(t1 - t0) * 1000, rerank=rerank,
                                  fusion=fusion, flat=lacks_detail(grey), advice=photo_advice(grey))

    def search_text(self, text: str, k: int = 10, filters: SearchFilters = SearchFilters()) -> SearchResult:
        if not self.embedder.has_text:
            raise CapabilityError(f"model {self.embedder.name!r} has no text tower; text search needs a CLIP model")
        t0 = time.perf_counter()
        vec = self.embedder.encode_texts([text])[0]
        return self.search_vector(vec, k, filters, routing=False, embed_ms=(time.perf_counter() - t0) * 1000,
                                  calibrate=False, photo=False)

    def search_vector(self, vec: np.ndarray, k: int = 10, filters: SearchFilters = SearchFilters(),
                      routing: bool = True, exclude_skus: frozenset[str] = frozenset(),
                      embed_ms: float = 0.0, rerank: RerankOptions | None = None,
                      fusion: bool | None = None, calibrate: bool = True, photo: bool = True,
                      flat: bool = False, advice: tuple[str, ...] = ()) -> SearchResult:
        """Top-k products; image queries carry a calibrated confidence (shopsearch.confidence),
        computed on at least two products so that k=1 has a runner-up to compare with.
        `rerank`, `fusion`: this query's choice (None = the service's default). Fusion needs a
        router with category probabilities (a trained classifier); without one it is plain routing.
        `vec` is the model's vector (the one logged, and the one the category head reads); a
        centred build searches with the photo's vector centred by the shopper-photo mean
        (`photo`=False: a text query, not centred); `flat`: the photo is one flat colour (no match);
        `advice`: the photo's (shopsearch.photo_advice), given with the result."""
        k_asked, k = k, max(k, 2)
        t0 = time.perf_counter()
        db_s = [0.0]  # catalogue lookups, reported apart from the vector search
        opts = self.rerank if rerank is None else rerank
        index = RerankingIndex(self.index, opts) if opts.active else self.index
        prediction, allowed, boost, head = None, None, None, None
        if routing and self.router is not None:
            prediction, allowed = self.router.route(vec)
            if (self.fusion if fusion is None else fusion) and hasattr(self.router, "category_boost"):
                # fusion replaces the filter; a weight of 0 (validation preferred plain retrieval) fuses nothing
                w = getattr(self.router, "fusion_weight", 0.0)
                boost = self.router.category_boost(vec) if w > 0 else None  # type: ignore[attr-defined]
                if boost is not None and hasattr(self.router, "category_probs"):
                    head = self.router.category_probs(vec)  # type: ignore[attr-defined]
                allowed, prediction = None, replace(prediction, routing="fused")
        svec = self.centring.query(vec) if self.centring is not None and photo else vec
        hits = self._grouped(svec, k, filters, allowed, exclude_skus, index=index, boost=boost, db_s=db_s)
        if allowed is not None and len(hits) < k:
            # Routing must never hide results: top up from the unrestricted ranking.
            seen = {h.sku for h in hits} | set(exclude_skus)
            hits += [h for h in self._grouped(svec, k, filters, None, frozenset(seen), index=index,
                                              db_s=db_s)][: k - len(hits)]
        t1 = time.perf_counter()
        timings = {"embed": embed_ms, "search": (t1 - t0 - db_s[0]) * 1000, "database": db_s[0] * 1000,
                   "total": embed_ms + (t1 - t0) * 1000}
        res = SearchResult(tuple(hits[:k]), self.manifest.model_name, self.manifest.build_id, timings, prediction)
        if calibrate:  # calibrated only for the scoring path it was fitted on (re-ranking, fusion)
            res = self._calibrated(res, opts.spec, boost, head, svec)
            bounded = False  # whether the category head bounded the confidence under the filter
            if filters is not None and filters.category and res.confidence is not None \
                    and hasattr(self.router, "category_probs"):
                # a photo of a banana searched among the milk: familiar to the shop, but its product
                # is not in the filter, which the head knows and the calibration (fitted unfiltered) does not
                mass = category_mass(head or self.router.category_probs(vec), filters.category)  # type: ignore[union-attr]
                bounded = mass is not None
                res = res if mass is None else capped(res, self.calibration, mass, "filter")
            if filters is not None and filters.active and not bounded and not flat \
                    and res.confidence is not None and res.hits:
                # No head bounds it (none, one that knows nothing of the category, a price filter):
                # the fit's features, read among the filtered products only, cannot see the better
                # products the filter hid, so a wrong first product the filter left looks far ahead
                # of the rest. Its chance among the unfiltered products bounds it.
                t_n, db_n = time.perf_counter(), db_s[0]
                chance = self._unfiltered_chance(res, svec, k, exclude_skus, index, opts.spec, boost, head, db_s)
                res = _plus_timings(res, time.perf_counter() - t_n, db_s[0] - db_n)
                res = res if chance is None else capped(res, self.calibration, chance, "filter")
            if flat:  # a photo of one flat colour (shopsearch.images.lacks_detail) identifies nothing
                res = capped(res, self.calibration, 0.0, "flat")
        return replace(res, hits=res.hits[:k_asked], query_vector=vec, advice=tuple(advice))

    def _calibrated(self, res: SearchResult, rerank_spec: str, boost: dict[str, float] | None,
                    head: dict[str, float] | None, svec: np.ndarray) -> SearchResult:
        """`res` with the calibration's confidence for the scoring path its hits were ranked on."""
        path = scoring_key(rerank_spec, boost is not None)
        plain = scoring_key(rerank_spec, False)
        if boost is None:
            return annotate(res, self.calibration, path, vector=svec)
        if self.calibration is not None and self.calibration.scoring == plain:
            # Fusion only re-orders products by a category bonus. A calibration fitted on plain
            # similarity is applied to the plain similarities of the products in the order shown
            # (a first product that fusion lifted over a more similar one gets a lower confidence).
            return annotate(res, self.calibration, plain, plain_scores=True, vector=svec)
        # fitted on fused searches: their plain similarities and the head's probabilities
        probs = None if head is None else [head.get((h.category or "").strip("/"), head.get("", 0.0))
                                           for h in res.hits]
        return annotate(res, self.calibration, path, plain_scores=True, head=probs, vector=svec)

    def _unfiltered_chance(self, res: SearchResult, svec: np.ndarray, k: int, exclude_skus: frozenset[str],
                           index: VectorIndex | RerankingIndex, rerank_spec: str, boost: dict[str, float] | None,
                           head: dict[str, float] | None, db_s: list[float]) -> float | None:
        """The calibrated chance of a filtered search's first product among the products the same
        search finds without the shopper's filters (and routing), the neighbourhood the fit was
        fitted on: the unfiltered confidence when it is the unfiltered first product; else its
        calibrated score there, and no more than the chance that the unfiltered first product
        (another product: the photo shows one) is not the one photographed."""
        first = res.hits[0]
        near = self._grouped(svec, k, SearchFilters(), None, exclude_skus, index=index, boost=boost, db_s=db_s)
        at = next((i for i, h in enumerate(near) if h.sku == first.sku), None)
        if at is None:  # ranked below the k best of the whole shop: after all of them
            near, at = near + [first], len(near)
        whole = self._calibrated(replace(res, hits=tuple(near)), rerank_spec, boost, head, svec)
        chance = whole.hits[at].calibrated
        if whole.confidence is None or chance is None:
            return None
        return chance if at == 0 else min(chance, 1.0 - whole.confidence)

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
        # its own photos' exact duplicates filed under other products are no recommendation either
        own = self.catalogue.image_ids_with_hashes(sorted({i.sha256 for i in product.images if i.sha256}))
        pool = self._grouped(query, k * 4, SearchFilters(), None, frozenset({sku}), exclude_ids=own)
        return SearchResult(tuple(_diversify(pool, k, max_per_category)), self.manifest.model_name, self.manifest.build_id)

    # -- internals --------------------------------------------------------------
    def _has(self, image_id: int) -> bool:
        try:
            self.index.reconstruct(image_id)
            return True
        except RuntimeError:
            return False

    def _grouped(self, vec: np.ndarray, k: int, filters: SearchFilters, allowed: tuple[str, ...] | None,
                 exclude_skus: frozenset[str], exclude_ids: np.ndarray | None = None,
                 index: VectorIndex | RerankingIndex | None = None,
                 boost: dict[str, float] | None = None, db_s: list[float] | None = None) -> list[ProductHit]:
        """Best image per product among the nearest images that pass the filters and routing;
        `boost` (fusion) adds a per-category amount to each product's best similarity; the seconds
        spent in catalogue lookups are added to db_s[0].

        Filters and routing restrict the vector search itself (an allowed-id set), so its
        results are the best matching images whatever share of the index matches; a filter
        that matches no image answers at once without searching."""
        index = self.index if index is None else index
        restrict = self.allowed_images.ids_for(filters, allowed)
        if restrict is not None and len(restrict) == 0:
            return []
        # never more than the index holds: a filter's ids may name images the index lacks
        limit = len(index) if restrict is None else min(len(index), len(restrict))
        fetch = min(limit, max(50, 8 * k))
        for deeper in (False, True):
            if deeper:
                # only products with many images each can leave the list short of k: one pass 8x deeper
                fetch = min(limit, fetch * 8)
            scores, ids = (index.search(vec[None, :], fetch) if restrict is None
                           else index.search(vec[None, :], fetch, allowed=restrict))
            t_db = time.perf_counter()
            cands = group_candidates(self.owners.current(), ids[0], scores[0], exclude_ids)
            rows = list(zip(cands.image_ids.tolist(), cands.scores.tolist(), cands.counts.tolist()))
            best: list[tuple[float, CandidateRow, int]] = []
            # The live rows of each product's best image only (titles, prices and categories as they
            # are now), best first and no more than the page needs: k, plus READ_MARGIN for rows that
            # fail below. Fusion re-orders by category, so it reads every candidate.
            at = 0
            while at < len(rows) and (len(best) < k or boost is not None):
                part = rows[at:] if boost is not None else rows[at:at + k - len(best) + READ_MARGIN]
                at += len(part)
                info = self.catalogue.candidate_rows([r[0] for r in part])
                for image_id, score, count in part:
                    row = info.get(image_id)
                    if row is None:  # deleted since the columns were read: the next search reloads them
                        continue
                    # filters are checked again on the live rows: the allowed set is as of the service's start
                    if self._passes(row, filters, allowed, exclude_skus):
                        best.append((score, row, count))
            if db_s is not None:
                db_s[0] += time.perf_counter() - t_db
            if len(best) >= k or fetch >= limit:
                break
        if boost is None:
            ranked = best[:k]  # in score order already
            return [ProductHit(r.sku, r.title, s, r.image_id, r.image_path, r.brand, r.price, r.currency, r.category,
                               r.category_source, c) for s, r, c in ranked]
        floor = boost.get("", 0.0)
        fused = sorted(((s + boost.get((r.category or "").strip("/"), floor), s, r, c) for s, r, c in best),
                       key=lambda t: -t[0])[:k]
        return [ProductHit(r.sku, r.title, f, r.image_id, r.image_path, r.brand, r.price, r.currency, r.category,
                           r.category_source, c, similarity=s) for f, s, r, c in fused]

    @staticmethod
    def _passes(prod: CandidateRow, f: SearchFilters, allowed: tuple[str, ...] | None,
                exclude_skus: frozenset[str]) -> bool:
        if prod.sku in exclude_skus:
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


def _plus_timings(res: SearchResult, seconds: float, db_seconds: float) -> SearchResult:
    """`res` with a further search's time (of which `db_seconds` in the catalogue) in its timings."""
    t = dict(res.timings_ms)
    t["search"] = t.get("search", 0.0) + (seconds - db_seconds) * 1000
    t["database"] = t.get("database", 0.0) + db_seconds * 1000
    t["total"] = t.get("total", 0.0) + seconds * 1000
    return replace(res, timings_ms=t)


def query_vectors(embedder: Embedder, images: list[Image.Image]) -> np.ndarray:
    """A shopper's photo(s) -> unit vectors, on the embedder's query model where it has one
    (TorchEmbedder.encode_query: the form measured fastest for single images), else encode_images."""
    encode = getattr(embedder, "encode_query", None)
    return encode(images) if encode is not None else embedder.encode_images(images)


def tta_vector(embedder: Embedder, image: Image.Image) -> np.ndarray:
    """Test-time augmentation: the unit mean of the photo's and its mirror image's vectors."""
    from PIL import ImageOps

    vecs = query_vectors(embedder, [image, ImageOps.mirror(image)])
    mean = vecs.mean(0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


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
