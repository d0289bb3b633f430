"""Fitting the confidence calibrator (shopsearch.confidence) on labelled searches.

Two sources of labels, best first:
- **labelled shopper photos** (`collect_labelled`): photos with the product they show, such as a
  validation split. Each is searched as a shopper's photo would be; whether the first product is
  right is the label, and the same photo searched with its whole product left out stands for a
  product the shop does not sell. These look like real queries, so the fit is honest.
- **leave-one-out over the catalogue** (`collect_samples`), when the shop has nothing else: each
  sampled catalogue image searched with itself and byte-identical copies left out. Catalogue
  photos of one product are often near-duplicates, so these searches look easier than a
  shopper's: a fit on them is over-confident (benchmarks/RESULTS.md, open set). This is the
  catalogue-only fallback, and responses say so (`Calibration.describe`: source `catalogue`). With
  the catalogue's density model, each held-out photo's familiarity is read with it (and the photos
  left out with it) taken out of its product's mean, and with its whole product left out.

Samples are scored on the path the search serves with (re-ranking included: pass the
`RerankingIndex` as `search`), and the path is stored with the fit (`Calibration.scoring`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shopsearch.confidence import (DENSITY_FEATURES, HEAD_FEATURES, MIN_SAMPLES, NONE_QUANTILE, NONE_RANGE, QUERY_FEATURES,
                                   RAW_SCORING, RIGHT_KEPT, UNKNOWN_PRIOR, Calibration, features, fit_logistic,
                                   query_features, save_calibration, scoring_key)
from shopsearch.density import ProductDensity, fit_index_density
from shopsearch.rerank import RerankingIndex, RerankOptions

log = logging.getLogger("shopsearch.confidence")

#: the first product's features per source of samples. Labelled photos: chosen on the Grocery Store
#: validation photos, 5 folds by product (benchmarks/results/open_set_feature_selection_val.json): the
#: score alone separates unknown products best; a lead over the second product tells right from wrong
#: among known ones but makes unknown products (whose look-alikes lead clearly) look confident.
#: Leave-one-out: the score and its lead, as before (no shopper photos to choose with).
FEATURES_BY_METHOD = {"labelled": ("score",), "leave-one-out": ("score", "lead")}
#: leave-one-out with near-duplicates left out: the score alone, chosen on the same validation photos
NEAR_DUPLICATE_FEATURES = ("score",)
#: fused searches (labelled photos searched with the category head): the score and the head's probability
#: of the first product's category, chosen on the Grocery Store validation photos (5 folds by product:
#: benchmarks/results/confidence_fused_features_val.json): right vs wrong first products far apart
#: with the head, barely told apart by similarity alone
FUSED_FEATURES = ("score", "head")
#: labelled photos with the build's density model (shopsearch.density): the score and the photo's
#: familiarity, chosen on the Grocery Store validation photos in the open set (20% of products removed,
#: 5 folds by product, AUROC - 2 ECE: benchmarks/results/open_set_density_fused.json, val AUROC 0.814
#: against 0.715 for score + head; on test 0.738 against 0.743: the val gain did not carry over).
#: Fused searches keep the head's probability too, as it tells right from wrong first products
#: (FUSED_FEATURES); with it, the familiarity still lifted val open-set AUROC from 0.715 to 0.742
#: (test: 0.743 -> 0.752, ECE 0.039 -> 0.034; open_set_density_fused_served.json)
#: Leave-one-out over the catalogue (the catalogue-only fallback): score, lead and familiarity, chosen on the
#: Grocery Store validation photos (open set, AUROC - 2 ECE among 4 feature sets x near-duplicates off/0.9:
#: benchmarks/results/open_set_catalogue_only.json; val AUROC 0.770 / ECE 0.142 against 0.706 / 0.124
#: for score + lead without the density model)
DENSITY_FEATURES_BY_PATH = {"plain": ("score", "density"), "fused": ("score", "head", "density"),
                            "leave-one-out": ("score", "lead", "density")}


#: leave-one-out fits (each build's) read the density model back from the index up to this many images
LOO_DENSITY_MAX_IMAGES = 50_000


@dataclass(frozen=True)
class Samples:
    """Labelled searches: ranked product scores and, per ranked product, whether it is the query's;
    on fused searches also the head's probability of each ranked product's category."""

    ranked: tuple[tuple[float, ...], ...]
    correct: tuple[tuple[bool, ...], ...]  # per ranked product: is it the query's product
    left_out: tuple[tuple[float, ...], ...]  # searches whose product is not in the catalogue
    method: str = "leave-one-out"  # or "labelled"
    head: tuple[tuple[float, ...], ...] = ()  # fused: parallel to ranked
    left_out_head: tuple[tuple[float, ...], ...] = ()  # fused: parallel to left_out
    familiarity: tuple[float, ...] = ()  # with a density model: each query's, parallel to ranked
    left_out_familiarity: tuple[float, ...] = ()  # ... its product left out of the model, parallel to left_out


@dataclass(frozen=True)
class FusedRanking:
    """How fused searches order products (SearchService: similarity + weight * log p(category)),
    so that samples are ranked, and the head's probabilities read, as a fused search serves them."""

    weight: float
    probabilities: Callable[[np.ndarray], np.ndarray]  # (N, dim) query vectors -> (N, categories)
    categories: tuple[str, ...]  # the columns of `probabilities`
    category_of: Mapping[Any, str]  # product -> its category path ("/"-joined)

    @cached_property
    def _columns(self) -> dict[str, int]:
        return {c: j for j, c in enumerate(self.categories)}

    def column(self, product: Any) -> int | None:
        """The head's column of `product`'s category (None: a category the head does not know)."""
        return self._columns.get((self.category_of.get(product) or "").strip("/"))

    def order(self, ranked: list[tuple[Any, float]], probs: np.ndarray, k: int
              ) -> tuple[list[tuple[Any, float]], list[float]]:
        """(the first k products in fused order with their plain similarities, their head probabilities)."""
        uniform = 1.0 / max(1, len(self.categories))
        head = [uniform if (j := self.column(p)) is None else float(probs[j]) for p, _ in ranked]
        fused = sorted(range(len(ranked)), key=lambda i: -(ranked[i][1] + self.weight * np.log(max(head[i], 1e-4))))
        return [ranked[i] for i in fused[:k]], [head[i] for i in fused[:k]]


def ranked_products(scores: np.ndarray, ids: np.ndarray, product_of: Mapping[int, Any],
                    skip: set[int], k: int) -> list[tuple[Any, float]]:
    """Best score per product over one neighbour list, in order, ids in `skip` ignored."""
    out: dict[Any, float] = {}
    for s, i in zip(scores, ids):
        i = int(i)
        if i < 0 or i in skip or i not in product_of:
            continue
        out.setdefault(product_of[i], float(s))
        if len(out) >= k:
            break
    return list(out.items())


#: fused searches re-order the products of this many nearest images (SearchService fetches 8 per result)
FUSION_POOL = 64


def ranked_as_served(scores: np.ndarray, ids: np.ndarray, product_of: Mapping[int, Any], skip: set[int], k: int,
                     fusion: FusedRanking | None = None, probs: np.ndarray | None = None
                     ) -> tuple[list[tuple[Any, float]], list[float] | None]:
    """(products in the order a search shows them, with plain similarities; the head's probabilities
    of their categories, fused searches only)."""
    if fusion is None or probs is None:
        return ranked_products(scores, ids, product_of, skip, k), None
    return fusion.order(ranked_products(scores[:FUSION_POOL], ids[:FUSION_POOL], product_of, skip, FUSION_POOL),
                        probs, k)


def collect_samples(index: Any, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                    max_queries: int = 2000, k: int = 5, seed: int = 0, search: Any = None,
                    near_duplicate: float | None = None, density: ProductDensity | None = None) -> Samples:
    """Search sampled catalogue images of multi-photo products against `index` (leave-one-out);
    `search`: what scores them (default the index itself; a RerankingIndex for a re-ranked path).
    `near_duplicate`: photos of the same product scoring at least this are left out with the query
    (burst shots of one shelf are not what a shopper's photo is to the catalogue); a query with no
    other photo of its product left is skipped. `density` (fitted on the index's vectors): each
    query's familiarity with the photos left out taken out of its product's mean too, and with its
    whole product left out (ProductDensity.held_out)."""
    by_product: dict[Any, list[int]] = {}
    for i, p in product_of.items():
        by_product.setdefault(p, []).append(int(i))
    candidates = sorted(i for ids in by_product.values() if len(ids) >= 2 for i in ids)
    rng = np.random.default_rng(seed)
    if len(candidates) > max_queries:
        candidates = sorted(rng.choice(candidates, max_queries, replace=False).tolist())
    if not candidates:
        return Samples((), (), ())
    largest = max(len(v) for v in by_product.values())
    fetch = int(min(len(product_of), max(64, largest + 8 * k)))
    ranked, correct, left_out, fam, left_out_fam = [], [], [], [], []
    for start in range(0, len(candidates), 256):
        chunk = candidates[start:start + 256]
        vecs = np.stack([index.reconstruct(i) for i in chunk]).astype(np.float32)
        scores, ids = (search or index).search(vecs, fetch)
        kept, gone = [], []
        for row, (q, sc, nb) in enumerate(zip(chunk, scores, ids)):
            own = product_of[q]
            same = {int(i) for i in nb if int(i) in hash_of and hash_of[int(i)] is not None
                    and hash_of[int(i)] == hash_of.get(q)} | {q}
            if near_duplicate is not None:
                same |= {int(i) for s, i in zip(sc, nb) if s >= near_duplicate and product_of.get(int(i)) == own}
                if len(same & set(by_product[own])) >= len(by_product[own]):
                    continue
            r = ranked_products(sc, nb, product_of, same, k)
            if not r:
                continue
            ranked.append(tuple(s for _, s in r))
            correct.append(tuple(p == own for p, _ in r))
            lo = ranked_products(sc, nb, product_of, set(by_product[own]), k)
            if lo:
                left_out.append(tuple(s for _, s in lo))
            kept.append((row, own, bool(lo)))
            gone.append(sorted(same & set(by_product[own])))
        if density is not None and kept:
            held, without = density.held_out(vecs[[r for r, _, _ in kept]], [p for _, p, _ in kept],
                                             [np.stack([index.reconstruct(i) for i in g]) for g in gone])
            fam += [float(v) for v in held]
            left_out_fam += [float(v) for v, (_, _, lo) in zip(without, kept) if lo]
    return Samples(tuple(ranked), tuple(correct), tuple(left_out), familiarity=tuple(fam),
                   left_out_familiarity=tuple(left_out_fam))


@dataclass(frozen=True)
class LabelledQuery:
    """A shopper's photo (its vector) and the product it shows (a value of `product_of`)."""

    vector: np.ndarray
    product: Any


def without_category(probs: np.ndarray, column: int | None) -> np.ndarray:
    """The head's probabilities had it never known `column`'s category (a softmax without that
    class: the others renormalised), for a search whose product stands for one the shop lacks."""
    if column is None:
        return probs
    out = np.array(probs, np.float64)
    rest = max(1.0 - float(out[column]), 1e-12)
    out[column] = 0.0
    return out / rest


def collect_labelled(index: Any, product_of: Mapping[int, Any], queries: Sequence[LabelledQuery], k: int = 5,
                     search: Any = None, fusion: FusedRanking | None = None,
                     density: ProductDensity | None = None) -> Samples:
    """Search labelled photos as shoppers' photos; each again with its product left out (an unknown
    product: with `fusion`, the head's probabilities are read as if it did not know that product's
    category either; with `density`, its familiarity as if the product had no photos). Photos of
    products the index lacks are unknown products as they are."""
    by_product: dict[Any, set[int]] = {}
    for i, p in product_of.items():
        by_product.setdefault(p, set()).add(int(i))
    if not queries or not by_product:
        return Samples((), (), (), "labelled")
    largest = max(len(v) for v in by_product.values())
    fetch = int(min(len(product_of), max(64, largest + 8 * k, FUSION_POOL if fusion else 0)))
    ranked, correct, left_out, head, left_out_head, fam, left_out_fam = [], [], [], [], [], [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        vecs = np.stack([q.vector for q in chunk]).astype(np.float32)
        scores, ids = (search or index).search(vecs, fetch)
        probs = fusion.probabilities(vecs) if fusion else [None] * len(chunk)
        for q, sc, nb, pr in zip(chunk, scores, ids, probs):
            own = by_product.get(q.product, set())
            if own:
                r, h = ranked_as_served(sc, nb, product_of, set(), k, fusion, pr)
                if r:
                    ranked.append(tuple(s for _, s in r))
                    correct.append(tuple(p == q.product for p, _ in r))
                    head.append(tuple(h or ()))
                    if density is not None:
                        fam.append(float(density.familiarity(q.vector)[0]))
            pr_out = None if pr is None else (without_category(pr, fusion.column(q.product)) if own else pr)
            lo, h = ranked_as_served(sc, nb, product_of, own, k, fusion, pr_out)
            if lo:
                left_out.append(tuple(s for _, s in lo))
                left_out_head.append(tuple(h or ()))
                if density is not None:
                    left_out_fam.append(float(density.familiarity(q.vector, without=q.product if own else None)[0]))
    return Samples(tuple(ranked), tuple(correct), tuple(left_out), "labelled",
                   tuple(head) if fusion else (), tuple(left_out_head) if fusion else (), tuple(fam),
                   tuple(left_out_fam))


def fit_calibration(samples: Samples, build_id: str | None = None, scoring: str = RAW_SCORING,
                    query_feature_names: Sequence[str] | None = None,
                    unknown_prior: float = UNKNOWN_PRIOR, density: ProductDensity | None = None) -> Calibration:
    """Fit the calibrator; an unfitted Calibration (with why) when there are too few samples.
    `unknown_prior`: the share of shoppers' photos assumed to show a product the shop does not sell
    (the left-out searches enter the first-product fit as wrong answers with this total weight).
    `density`: the model the samples' familiarities came from (kept with a fit that reads them)."""
    fused = bool(samples.head)
    with_density = bool(samples.familiarity) and density is not None
    path = "leave-one-out" if samples.method == "leave-one-out" else "fused" if fused else "plain"
    names = tuple(query_feature_names or (DENSITY_FEATURES_BY_PATH[path] if with_density
                                          else FUSED_FEATURES if fused else FEATURES_BY_METHOD[samples.method]))
    if any(n not in QUERY_FEATURES for n in names):
        raise ValueError(f"unknown confidence feature in {names}; known: {sorted(QUERY_FEATURES)}")
    if not fused and HEAD_FEATURES & set(names):
        raise ValueError(f"features {sorted(HEAD_FEATURES & set(names))} need samples from fused searches")
    if not with_density and DENSITY_FEATURES & set(names):
        raise ValueError(f"features {sorted(DENSITY_FEATURES & set(names))} need samples with a density model")
    n = len(samples.ranked)
    if n < MIN_SAMPLES:
        where = ("labelled photos of products in the catalogue" if samples.method == "labelled" else
                 "catalogue photos could be held out (products with two or more photos)")
        return Calibration(False, build_id=build_id, samples=n, method=samples.method, scoring=scoring, reason=(
            f"only {n} {where}; at least {MIN_SAMPLES} are needed to estimate confidence, so scores are raw "
            "similarities"))
    # first product: the searches (right or wrong) and the products left out (always wrong)
    use_unknown = unknown_prior > 0 and bool(samples.left_out)
    pool = samples.ranked + (samples.left_out if use_unknown else ())
    heads = (samples.head + (samples.left_out_head if use_unknown else ())) if fused else (None,) * len(pool)
    fams = (samples.familiarity + (samples.left_out_familiarity if use_unknown else ())) if with_density \
        else (None,) * len(pool)
    x1 = np.stack([query_features(r, names, h, m) for r, h, m in zip(pool, heads, fams)])
    y1 = np.array([c[0] for c in samples.correct] + [False] * (len(pool) - n), dtype=float)
    w1 = np.ones(len(y1))
    if use_unknown:
        w1[n:] = unknown_prior / (1 - unknown_prior) * n / len(samples.left_out)
    top1 = fit_logistic(x1, y1, weight=w1) if y1.min() != y1.max() else fit_logistic(x1, y1, l2=1.0)
    xh = np.concatenate([features(r) for r in samples.ranked])
    yh = np.array([v for c in samples.correct for v in c], dtype=float)
    # all right (or all wrong): an unregularised fit would diverge; shrink it harder
    hit = fit_logistic(xh, yh) if yh.min() != yh.max() else fit_logistic(xh, yh, l2=1.0)
    cal = Calibration(True, tuple(map(float, top1)), tuple(map(float, hit)), samples=n,
                      loo_top1_accuracy=float(y1[:n].mean()), build_id=build_id, query_features=names,
                      method=samples.method, scoring=scoring,
                      density=density if DENSITY_FEATURES & set(names) else None)
    right = [cal.confidence(r, h or None, m)[0] for r, h, m, c in
             zip(samples.ranked, samples.head or ((),) * n, samples.familiarity or (None,) * n, samples.correct)
             if c[0]]
    n_out = len(samples.left_out)
    unknown = [cal.confidence(r, h or None, m)[0] for r, h, m in
               zip(samples.left_out, samples.left_out_head or ((),) * n_out,
                   samples.left_out_familiarity or (None,) * n_out)]
    return replace(cal, none_below=none_threshold(right, unknown))


def none_threshold(right: Sequence[float], unknown: Sequence[float]) -> float:
    """Where 'no close match' starts: below what most products the shop lacks score (NONE_QUANTILE
    of their confidences), yet never above what RIGHT_KEPT of the right answers reach, so that a
    first product that is right is rarely called 'no close match' when the two overlap; within
    NONE_RANGE."""
    q = float(np.quantile(np.asarray(unknown, float), NONE_QUANTILE)) if len(unknown) else NONE_RANGE[0]
    if len(right):
        q = min(q, float(np.quantile(np.asarray(right, float), 1.0 - RIGHT_KEPT)))
    return min(max(q, NONE_RANGE[0]), NONE_RANGE[1])


def calibrate_index(index: Any, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                    build_id: str | None = None, max_queries: int = 2000, seed: int = 0,
                    labelled: Sequence[LabelledQuery] = (), search: Any = None,
                    scoring: str = RAW_SCORING, query_feature_names: Sequence[str] | None = None,
                    unknown_prior: float = UNKNOWN_PRIOR, near_duplicate: float | None = None,
                    fusion: FusedRanking | None = None, density: bool = True) -> Calibration:
    """Labelled samples when there are enough, else leave-one-out ones (`near_duplicate`: see
    collect_samples), from `index`; then the fit. `fusion`: labelled photos are searched as fused
    searches are (the head trained on the catalogue has never seen them); leave-one-out never is, as
    the head was trained on those very photos (a fused search then uses the plain-similarity fit).
    `density`: the fit also reads each photo's familiarity to the index's vectors (shopsearch.density,
    fitted here on them; a held-out catalogue photo's with itself taken out of its product's mean)."""
    # every build calibrates: past this size, reading every vector back for the density is left to
    # `index calibrate --photos`
    model = fit_index_density(index, product_of) \
        if density and (labelled or len(product_of) <= LOO_DENSITY_MAX_IMAGES) else None
    if labelled:
        cal = fit_calibration(collect_labelled(index, product_of, labelled, search=search, fusion=fusion,
                                               density=model), build_id,
                              scoring_fused(scoring) if fusion else scoring, query_feature_names, unknown_prior, model)
        if cal.fitted:
            return cal
        log.warning("too few labelled photos; calibrating on the catalogue", extra={"reason": cal.reason})
    samples = collect_samples(index, product_of, hash_of, max_queries, seed=seed, search=search,
                              near_duplicate=near_duplicate, density=model)
    # the head was trained on these very photos: its features have no honest leave-one-out reading
    unusable = HEAD_FEATURES | (set() if model is not None else DENSITY_FEATURES)
    names = query_feature_names if not (query_feature_names and unusable & set(query_feature_names)) else None
    names = names or (NEAR_DUPLICATE_FEATURES if near_duplicate is not None and model is None else None)
    cal = fit_calibration(samples, build_id, scoring, names, unknown_prior, model)
    return replace(cal, near_duplicate=near_duplicate)


def scoring_fused(scoring: str) -> str:
    """The scoring key of the same path with fusion on."""
    return scoring.replace("fusion=off", "fusion=on")


def fused_ranking_for(router: Any, products: Sequence[Any]) -> FusedRanking | None:
    """How `router` (a trained ClassifierRouter) fuses, over products (ProductInfo-like: id and
    category); None when it does not fuse (no head probabilities, or a weight of 0)."""
    weight = float(getattr(router, "fusion_weight", 0.0) or 0.0)
    if router is None or weight <= 0 or not hasattr(router, "category_probabilities"):
        return None
    return FusedRanking(weight, router.category_probabilities, tuple(router.categories),
                        {p.id: (p.category or "").strip("/") for p in products})


def calibrate_build(index: Any, images: Sequence[Any], build_id: str, rerank: RerankOptions = RerankOptions(),
                    labelled: Sequence[LabelledQuery] = (), near_duplicate: float | None = None,
                    fusion: FusedRanking | None = None) -> Calibration:
    """Fit on a build (its indexed catalogue images: `ImageInfo`s; `labelled` photos name product ids),
    scored as searches with `rerank` (and `fusion`, labelled photos only) are; store it with `calibration_file`."""
    indexed = {int(i) for i in index.ids()}
    product_of = {im.id: im.product_id for im in images if im.id in indexed}
    hash_of = {im.id: im.sha256 for im in images if im.id in indexed}
    search = RerankingIndex(index, rerank) if rerank.active else None
    cal = calibrate_index(index, product_of, hash_of, build_id, labelled=labelled, search=search,
                          scoring=scoring_key(rerank.spec), near_duplicate=near_duplicate, fusion=fusion)
    log.info("calibration fitted" if cal.fitted else "calibration not fitted",
             extra={"build_id": build_id, "samples": cal.samples, "reason": cal.reason, "method": cal.method,
                    "scoring": cal.scoring, "none_below": cal.none_below,
                    "loo_top1_accuracy": cal.loo_top1_accuracy})
    return cal


def calibrate_serving(store: Any, images: Sequence[Any], rerank: RerankOptions = RerankOptions(),
                      labelled: Sequence[LabelledQuery] = (), near_duplicate: float | None = None,
                      fusion: FusedRanking | None = None) -> tuple[str, Calibration]:
    """Refit the serving build of an IndexStore (`shopsearch index calibrate`, older builds) and save it."""
    index, manifest = store.load_current()
    cal = calibrate_build(index, images, manifest.build_id, rerank, labelled, near_duplicate, fusion)
    save_calibration(store.build_dir(manifest.build_id), cal)
    return manifest.build_id, cal
