"""Fitting the confidence calibrator (shopsearch.confidence) on labelled searches.

Two sources of labels, best first:
- **labelled shopper photos** (`collect_labelled`): photos with the product they show, such as a
  validation split. Each is searched as a shopper's photo would be; whether the first product is
  right is the label, and the same photo searched with its whole product left out stands for a
  product the shop does not sell. These look like real queries, so the fit is honest.
- **leave-one-out over the catalogue** (`collect_samples`), when the shop has nothing else: each
  sampled catalogue image searched with itself and byte-identical copies left out. Catalogue
  photos of one product are often near-duplicates, so these searches look easier than a
  shopper's: a fit on them is over-confident (benchmarks/RESULTS.md, open set).

Samples are scored on the path the search serves with (re-ranking included: pass the
`RerankingIndex` as `search`), and the path is stored with the fit (`Calibration.scoring`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from shopsearch.confidence import (MIN_SAMPLES, NONE_QUANTILE, NONE_RANGE, QUERY_FEATURES, RAW_SCORING,
                                   UNKNOWN_PRIOR, Calibration, features, fit_logistic, query_features,
                                   save_calibration, scoring_key)
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


@dataclass(frozen=True)
class Samples:
    """Labelled searches: ranked product scores and, per ranked product, whether it is the query's."""

    ranked: tuple[tuple[float, ...], ...]
    correct: tuple[tuple[bool, ...], ...]  # per ranked product: is it the query's product
    left_out: tuple[tuple[float, ...], ...]  # searches whose product is not in the catalogue
    method: str = "leave-one-out"  # or "labelled"


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


def collect_samples(index: Any, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                    max_queries: int = 2000, k: int = 5, seed: int = 0, search: Any = None,
                    near_duplicate: float | None = None) -> Samples:
    """Search sampled catalogue images of multi-photo products against `index` (leave-one-out);
    `search`: what scores them (default the index itself; a RerankingIndex for a re-ranked path).
    `near_duplicate`: photos of the same product scoring at least this are left out with the query
    (burst shots of one shelf are not what a shopper's photo is to the catalogue); a query with no
    other photo of its product left is skipped."""
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
    ranked, correct, left_out = [], [], []
    for start in range(0, len(candidates), 256):
        chunk = candidates[start:start + 256]
        vecs = np.stack([index.reconstruct(i) for i in chunk]).astype(np.float32)
        scores, ids = (search or index).search(vecs, fetch)
        for q, sc, nb in zip(chunk, scores, ids):
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
    return Samples(tuple(ranked), tuple(correct), tuple(left_out))


@dataclass(frozen=True)
class LabelledQuery:
    """A shopper's photo (its vector) and the product it shows (a value of `product_of`)."""

    vector: np.ndarray
    product: Any


def collect_labelled(index: Any, product_of: Mapping[int, Any], queries: Sequence[LabelledQuery], k: int = 5,
                     search: Any = None) -> Samples:
    """Search labelled photos as shoppers' photos; each again with its product left out (an unknown
    product). Photos of products the index lacks are unknown products as they are."""
    by_product: dict[Any, set[int]] = {}
    for i, p in product_of.items():
        by_product.setdefault(p, set()).add(int(i))
    if not queries or not by_product:
        return Samples((), (), (), "labelled")
    largest = max(len(v) for v in by_product.values())
    fetch = int(min(len(product_of), max(64, largest + 8 * k)))
    ranked, correct, left_out = [], [], []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        scores, ids = (search or index).search(np.stack([q.vector for q in chunk]).astype(np.float32), fetch)
        for q, sc, nb in zip(chunk, scores, ids):
            own = by_product.get(q.product, set())
            if own:
                r = ranked_products(sc, nb, product_of, set(), k)
                if r:
                    ranked.append(tuple(s for _, s in r))
                    correct.append(tuple(p == q.product for p, _ in r))
            lo = ranked_products(sc, nb, product_of, own, k)
            if lo:
                left_out.append(tuple(s for _, s in lo))
    return Samples(tuple(ranked), tuple(correct), tuple(left_out), "labelled")


def fit_calibration(samples: Samples, build_id: str | None = None, scoring: str = RAW_SCORING,
                    query_feature_names: Sequence[str] | None = None,
                    unknown_prior: float = UNKNOWN_PRIOR) -> Calibration:
    """Fit the calibrator; an unfitted Calibration (with why) when there are too few samples.
    `unknown_prior`: the share of shoppers' photos assumed to show a product the shop does not sell
    (the left-out searches enter the first-product fit as wrong answers with this total weight)."""
    names = tuple(query_feature_names or FEATURES_BY_METHOD[samples.method])
    if any(n not in QUERY_FEATURES for n in names):
        raise ValueError(f"unknown confidence feature in {names}; known: {sorted(QUERY_FEATURES)}")
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
    x1 = np.stack([query_features(r, names) for r in pool])
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
                      method=samples.method, scoring=scoring)
    if samples.left_out:
        unknown = [cal.confidence(r)[0] for r in samples.left_out]
        q = float(np.quantile(np.asarray(unknown, float), NONE_QUANTILE))
        cal = replace(cal, none_below=min(max(q, NONE_RANGE[0]), NONE_RANGE[1]))
    return cal


def calibrate_index(index: Any, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                    build_id: str | None = None, max_queries: int = 2000, seed: int = 0,
                    labelled: Sequence[LabelledQuery] = (), search: Any = None,
                    scoring: str = RAW_SCORING, query_feature_names: Sequence[str] | None = None,
                    unknown_prior: float = UNKNOWN_PRIOR, near_duplicate: float | None = None) -> Calibration:
    """Labelled samples when there are enough, else leave-one-out ones (`near_duplicate`: see
    collect_samples), from `index`; then the fit."""
    if labelled:
        cal = fit_calibration(collect_labelled(index, product_of, labelled, search=search), build_id, scoring,
                              query_feature_names, unknown_prior)
        if cal.fitted:
            return cal
        log.warning("too few labelled photos; calibrating on the catalogue", extra={"reason": cal.reason})
    samples = collect_samples(index, product_of, hash_of, max_queries, seed=seed, search=search,
                              near_duplicate=near_duplicate)
    names = query_feature_names or (NEAR_DUPLICATE_FEATURES if near_duplicate is not None else None)
    cal = fit_calibration(samples, build_id, scoring, names, unknown_prior)
    return replace(cal, near_duplicate=near_duplicate)




def calibrate_build(index: Any, images: Sequence[Any], build_id: str, rerank: RerankOptions = RerankOptions(),
                    labelled: Sequence[LabelledQuery] = (), near_duplicate: float | None = None) -> Calibration:
    """Fit on a build (its indexed catalogue images: `ImageInfo`s; `labelled` photos name product ids),
    scored as searches with `rerank` are; store it with `calibration_file`."""
    indexed = {int(i) for i in index.ids()}
    product_of = {im.id: im.product_id for im in images if im.id in indexed}
    hash_of = {im.id: im.sha256 for im in images if im.id in indexed}
    search = RerankingIndex(index, rerank) if rerank.active else None
    cal = calibrate_index(index, product_of, hash_of, build_id, labelled=labelled, search=search,
                          scoring=scoring_key(rerank.spec), near_duplicate=near_duplicate)
    log.info("calibration fitted" if cal.fitted else "calibration not fitted",
             extra={"build_id": build_id, "samples": cal.samples, "reason": cal.reason, "method": cal.method,
                    "scoring": cal.scoring, "none_below": cal.none_below,
                    "loo_top1_accuracy": cal.loo_top1_accuracy})
    return cal


def calibrate_serving(store: Any, images: Sequence[Any], rerank: RerankOptions = RerankOptions(),
                      labelled: Sequence[LabelledQuery] = (), near_duplicate: float | None = None
                      ) -> tuple[str, Calibration]:
    """Refit the serving build of an IndexStore (`shopsearch index calibrate`, older builds) and save it."""
    index, manifest = store.load_current()
    cal = calibrate_build(index, images, manifest.build_id, rerank, labelled, near_duplicate)
    save_calibration(store.build_dir(manifest.build_id), cal)
    return manifest.build_id, cal
