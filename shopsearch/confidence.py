"""Calibrated confidence: the probability that a search's first product is the right one,
and whether the shop has a `strong`, `weak` or no (`none`) close match.

Fitted per index build on labelled data every shop has: its own catalogue. Each sampled
catalogue image of a product with two or more indexed photos is searched against the
build with itself (and byte-identical copies) left out; whether the first product is the
right one is the label (leave-one-out). The same images searched with their whole product
left out show what an unknown product's scores look like, which sets the `none` threshold.
A logistic model over the first product's score and its lead over the second is the
calibrator; it is stored beside the build (calibration.json) and refitted with every build."""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from shopsearch.results import SearchResult

log = logging.getLogger("shopsearch.confidence")

CALIBRATION_FILE = "calibration.json"
#: fewer leave-one-out queries than this and the fit is not trusted (fallback instead)
MIN_SAMPLES = 30
#: `strong` from this confidence up
STRONG_AT = 0.6
#: the `none` threshold is this quantile of the confidences of products left out of the catalogue,
#: kept within NONE_RANGE so that it never swallows `weak` nor vanishes
NONE_QUANTILE = 0.9
NONE_RANGE = (0.1, 0.45)
#: the share of shopper photos assumed to show a product the shop does not sell: the products left
#: out of the catalogue enter the fit as wrong answers with this much total weight
UNKNOWN_PRIOR = 0.1


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 100,
                 weight: np.ndarray | None = None) -> np.ndarray:
    """Weights (one per column of x, then the bias) of a (sample-weighted) logistic regression, by Newton's method."""
    xb = np.hstack([np.asarray(x, np.float64), np.ones((len(x), 1))])
    y = np.asarray(y, np.float64)
    sw = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    w = np.zeros(xb.shape[1])
    reg = l2 * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(iters):
        p = _sigmoid(xb @ w)
        grad = xb.T @ (sw * (p - y)) + reg @ w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w


def features(scores: Sequence[float]) -> np.ndarray:
    """Per ranked product: its score and its lead over the best other product (negative below the first)."""
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return np.zeros((0, 2))
    best_other = np.full(len(s), s[1] if len(s) > 1 else 0.0)
    best_other[1:] = s[0]
    return np.stack([s, s - best_other], axis=1)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibrator, or the reason there is none (`fitted` False)."""

    fitted: bool
    top1: tuple[float, ...] = ()  # logistic weights (score, lead, bias) for the first product
    hit: tuple[float, ...] = ()  # the same for any ranked product
    strong_at: float = STRONG_AT
    none_below: float = NONE_RANGE[0]
    samples: int = 0
    loo_top1_accuracy: float | None = None
    build_id: str | None = None
    reason: str | None = None

    def confidence(self, scores: Sequence[float]) -> tuple[float | None, list[float]]:
        """(probability the first product is right, per-product calibrated scores) for ranked scores."""
        if not self.fitted or not scores:
            return None, []
        f = features(scores)
        per_hit = _sigmoid(f @ np.asarray(self.hit[:2]) + self.hit[2])
        top = float(_sigmoid(np.asarray(f[0] @ np.asarray(self.top1[:2]) + self.top1[2])))
        # the first-product model also knows unknown products; the others are scaled down alike,
        # so that a list whose first item is unlikely does not call a lower one 'possible'
        shrink = min(1.0, top / max(float(per_hit[0]), 1e-12))
        per_hit = per_hit * shrink
        per_hit[0] = top
        return top, [float(p) for p in per_hit]

    def match(self, confidence: float | None) -> str | None:
        if confidence is None:
            return None
        if confidence >= self.strong_at:
            return "strong"
        return "weak" if confidence >= self.none_below else "none"

    def describe(self) -> dict[str, Any]:
        """What a response says about how its confidence was obtained."""
        if not self.fitted:
            return {"status": "uncalibrated", "reason": self.reason}
        return {"status": "calibrated", "method": "leave-one-out over the catalogue's own photos",
                "samples": self.samples, "strong_at": round(self.strong_at, 4),
                "none_below": round(self.none_below, 4), "build_id": self.build_id}

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Calibration":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("top1", "hit"):
            known[k] = tuple(float(x) for x in known.get(k, ()))
        return cls(**known)


NO_CALIBRATION = Calibration(False, reason="this index build has no calibration yet; run `shopsearch index calibrate`")


def annotate(result: SearchResult, calibration: Calibration | None) -> SearchResult:
    """The result with `confidence`, `match` and each hit's calibrated score (or the fallback stated)."""
    cal = calibration or NO_CALIBRATION
    conf, per_hit = cal.confidence([h.score for h in result.hits])
    hits = tuple(replace(h, calibrated=p) for h, p in zip(result.hits, per_hit)) if per_hit else result.hits
    return replace(result, hits=hits, confidence=conf, match=cal.match(conf), calibration=cal.describe())


# -- fitting -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Samples:
    """Leave-one-out observations: ranked product scores and the true product of each query."""

    ranked: tuple[tuple[float, ...], ...]
    correct: tuple[tuple[bool, ...], ...]  # per ranked product: is it the query's product
    left_out: tuple[tuple[float, ...], ...]  # the same queries with their whole product left out


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
                    max_queries: int = 2000, k: int = 5, seed: int = 0) -> Samples:
    """Search sampled catalogue images of multi-photo products against `index` (leave-one-out)."""
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
        scores, ids = index.search(vecs, fetch)
        for q, sc, nb in zip(chunk, scores, ids):
            own = product_of[q]
            same = {int(i) for i in nb if int(i) in hash_of and hash_of[int(i)] is not None
                    and hash_of[int(i)] == hash_of.get(q)} | {q}
            r = ranked_products(sc, nb, product_of, same, k)
            if not r:
                continue
            ranked.append(tuple(s for _, s in r))
            correct.append(tuple(p == own for p, _ in r))
            lo = ranked_products(sc, nb, product_of, set(by_product[own]), k)
            if lo:
                left_out.append(tuple(s for _, s in lo))
    return Samples(tuple(ranked), tuple(correct), tuple(left_out))


def fit_calibration(samples: Samples, build_id: str | None = None) -> Calibration:
    """Fit the calibrator on leave-one-out samples; an unfitted Calibration (with why) when too few."""
    n = len(samples.ranked)
    if n < MIN_SAMPLES:
        return Calibration(False, build_id=build_id, samples=n, reason=(
            f"only {n} catalogue photos could be held out (products with two or more photos); at least "
            f"{MIN_SAMPLES} are needed to estimate confidence, so scores are raw similarities"))
    # first product: leave-one-out queries (right or wrong) and products left out (always wrong)
    x1 = np.stack([features(r)[0] for r in samples.ranked + samples.left_out])
    y1 = np.array([c[0] for c in samples.correct] + [False] * len(samples.left_out), dtype=float)
    w1 = np.ones(len(y1))
    if samples.left_out:
        w1[n:] = UNKNOWN_PRIOR / (1 - UNKNOWN_PRIOR) * n / len(samples.left_out)
    top1 = fit_logistic(x1, y1, weight=w1) if y1.min() != y1.max() else fit_logistic(x1, y1, l2=1.0)
    xh = np.concatenate([features(r) for r in samples.ranked])
    yh = np.array([v for c in samples.correct for v in c], dtype=float)
    # all right (or all wrong): an unregularised fit would diverge; shrink it harder
    hit = fit_logistic(xh, yh) if yh.min() != yh.max() else fit_logistic(xh, yh, l2=1.0)
    cal = Calibration(True, tuple(map(float, top1)), tuple(map(float, hit)), samples=n,
                      loo_top1_accuracy=float(y1[:n].mean()), build_id=build_id)
    if samples.left_out:
        unknown = [cal.confidence(r)[0] for r in samples.left_out]
        q = float(np.quantile(np.asarray(unknown, float), NONE_QUANTILE))
        cal = replace(cal, none_below=min(max(q, NONE_RANGE[0]), NONE_RANGE[1]))
    return cal


def calibrate_index(index: Any, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                    build_id: str | None = None, max_queries: int = 2000, seed: int = 0) -> Calibration:
    """Leave-one-out samples from `index`, then the fit."""
    return fit_calibration(collect_samples(index, product_of, hash_of, max_queries, seed=seed), build_id)


# -- storage beside a build ------------------------------------------------------------------
def save_calibration(build_dir: Path, cal: Calibration) -> Path:
    """Write calibration.json atomically into a build folder."""
    path = Path(build_dir) / CALIBRATION_FILE
    tmp = path.with_name(f".{CALIBRATION_FILE}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(calibration_file(cal)[CALIBRATION_FILE])
    os.replace(tmp, path)
    return path


def load_calibration(build_dir: Path, build_id: str | None = None) -> Calibration:
    """The build's calibration; the stated fallback when it has none or it belongs to another build."""
    path = Path(build_dir) / CALIBRATION_FILE
    try:
        cal = Calibration.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return NO_CALIBRATION
    except (OSError, ValueError, TypeError) as e:
        log.warning("calibration unreadable", extra={"path": str(path), "error": str(e)})
        return replace(NO_CALIBRATION, reason=f"this build's calibration is unreadable ({e}); "
                                              "run `shopsearch index calibrate`")
    if build_id is not None and cal.build_id not in (None, build_id):
        return replace(NO_CALIBRATION, reason="the calibration belongs to another build; "
                                              "run `shopsearch index calibrate`")
    if cal.fitted and not all(math.isfinite(v) for v in cal.top1 + cal.hit):
        return replace(NO_CALIBRATION, reason="this build's calibration is not usable; run `shopsearch index calibrate`")
    return cal



def calibrate_build(index: Any, images: Sequence[Any], build_id: str) -> Calibration:
    """Fit on a build (its indexed catalogue images: `ImageInfo`s); store it with `calibration_file`."""
    indexed = {int(i) for i in index.ids()}
    product_of = {im.id: im.product_id for im in images if im.id in indexed}
    hash_of = {im.id: im.sha256 for im in images if im.id in indexed}
    cal = calibrate_index(index, product_of, hash_of, build_id)
    log.info("calibration fitted" if cal.fitted else "calibration not fitted",
             extra={"build_id": build_id, "samples": cal.samples, "reason": cal.reason,
                    "none_below": cal.none_below, "loo_top1_accuracy": cal.loo_top1_accuracy})
    return cal


def calibration_file(cal: Calibration) -> dict[str, str]:
    """The build sidecar (name -> text) that IndexStore.publish writes before the build serves."""
    return {CALIBRATION_FILE: json.dumps(cal.to_json(), indent=2)}


def calibrate_serving(store: Any, images: Sequence[Any]) -> tuple[str, Calibration]:
    """Refit the serving build of an IndexStore (`shopsearch index calibrate`, older builds) and save it."""
    index, manifest = store.load_current()
    cal = calibrate_build(index, images, manifest.build_id)
    save_calibration(store.build_dir(manifest.build_id), cal)
    return manifest.build_id, cal
