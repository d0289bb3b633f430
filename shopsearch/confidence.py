"""Calibrated confidence: the probability that a search's first product is the right one,
and whether the shop has a `strong`, `weak` or no (`none`) close match.

A logistic model over features of the first product's score (QUERY_FEATURES) plus one over
each ranked product's score and lead; fitted per index build (shopsearch.confidence_fit) on
labelled shopper photos when the shop has them, else leave-one-out over its own catalogue,
stored beside the build (calibration.json) with the scoring path it was fitted on, and
refitted with every build. A search scored on another path (re-ranking, fusion) gets the
stated fallback instead of a confidence that belongs to other scores."""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shopsearch.density import DENSITY_FILE, ProductDensity
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
#: ... and never above the confidence this share of the fit's right answers reach: where right
#: answers and unknown products overlap, 'no close match' must not swallow the right answers
RIGHT_KEPT = 0.9
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


#: what a query's first product is judged by (names stored in calibration.json), from its ranked
#: plain similarities `s`, on fused searches the category head's probability `h` of each ranked
#: product's category, and `m` the photo's familiarity to the catalogue (shopsearch.density): the
#: first product's score, its lead over the second product, its lead over the mean of the others (a
#: crowd of near-equal products, typical of a photo of something the shop does not sell, gives a
#: small lead over all of them), the head's probability of its category (a head that agrees with
#: retrieval is rarely wrong; it also knows categories look-alikes lack), and how far the photo lies
#: from every product's photos in units of their spread (`density`: unknown products lie farther)
QUERY_FEATURES: dict[str, Callable[[np.ndarray, np.ndarray | None, float | None], float]] = {
    "score": lambda s, h, m: float(s[0]),
    "lead": lambda s, h, m: float(s[0] - (s[1] if len(s) > 1 else 0.0)),
    "lead_mean": lambda s, h, m: float(s[0] - (s[1:].mean() if len(s) > 1 else 0.0)),
    "head": lambda s, h, m: float(_need_head(h)[0]),
    "head_log": lambda s, h, m: float(np.log(max(float(_need_head(h)[0]), 1e-4))),
    "head_lead": lambda s, h, m: float(_need_head(h)[0] - (h[1:].max() if len(h) > 1 else 0.0)),
    "density": lambda s, h, m: _need_density(m),
}
#: features that need the category head's probabilities (fused searches only)
HEAD_FEATURES = frozenset({"head", "head_log", "head_lead"})
#: features that need the build's density model (density.npz) and the query's vector
DENSITY_FEATURES = frozenset({"density"})


def _need_head(h: np.ndarray | None) -> np.ndarray:
    if h is None or len(h) == 0:
        raise ValueError("this confidence feature needs the category head's probabilities (a fused search)")
    return h


def _need_density(m: float | None) -> float:
    if m is None:
        raise ValueError("this confidence feature needs the photo's familiarity (the build's density model)")
    return float(m)


#: a calibrated probability is an estimate from a finite sample: never shown as certain either way
CONFIDENCE_RANGE = (0.01, 0.99)


def query_features(scores: Sequence[float], names: Sequence[str], head: Sequence[float] | None = None,
                   familiarity: float | None = None) -> np.ndarray:
    """The named features of one ranked score list (in the order shown); `head`: the category head's
    probability of each ranked product's category (fused searches); `familiarity`: the photo's
    (ProductDensity.familiarity)."""
    s = np.asarray(scores, np.float64)
    h = None if head is None else np.asarray(head, np.float64)
    return np.array([QUERY_FEATURES[n](s, h, familiarity) for n in names])


def scoring_key(rerank: str = "off", fusion: bool = False) -> str:
    """How a search scored its candidates (`RerankOptions.spec`, fusion): a calibration fitted on
    one path says nothing about scores from another (re-ranked scores live on another scale)."""
    return f"rerank={rerank or 'off'};fusion={'on' if fusion else 'off'}"


RAW_SCORING = scoring_key()


@dataclass(frozen=True)
class Calibration:
    """A fitted calibrator, or the reason there is none (`fitted` False)."""

    fitted: bool
    top1: tuple[float, ...] = ()  # logistic weights (one per query feature, then the bias) for the first product
    hit: tuple[float, ...] = ()  # weights (score, lead, bias) for any ranked product
    strong_at: float = STRONG_AT
    none_below: float = NONE_RANGE[0]
    samples: int = 0
    loo_top1_accuracy: float | None = None  # the first product's accuracy on the fitting queries
    build_id: str | None = None
    reason: str | None = None
    query_features: tuple[str, ...] = ("score", "lead")
    method: str = "leave-one-out"  # or "labelled": shopper photos with their products
    scoring: str = RAW_SCORING  # the scoring path the samples were scored on (scoring_key)
    near_duplicate: float | None = None  # leave-one-out: same-product photos this similar were left out too
    #: the catalogue's density model the `density` feature reads (stored beside as density.npz)
    density: ProductDensity | None = field(default=None, compare=False, repr=False)

    @property
    def needs_head(self) -> bool:
        """Whether the first-product model uses the category head (fitted on fused searches)."""
        return bool(HEAD_FEATURES & set(self.query_features))

    @property
    def needs_density(self) -> bool:
        """Whether the first-product model reads the photo's familiarity (the build's density model)."""
        return bool(DENSITY_FEATURES & set(self.query_features))

    def familiarity(self, vector: np.ndarray | None) -> float | None:
        """The photo's familiarity to the catalogue when this calibration reads it (else None)."""
        if not self.needs_density or self.density is None or vector is None:
            return None
        return float(self.density.familiarity(vector)[0])

    def confidence(self, scores: Sequence[float], head: Sequence[float] | None = None,
                   familiarity: float | None = None) -> tuple[float | None, list[float]]:
        """(probability the first product is right, per-product calibrated scores) for ranked plain
        similarities in the order shown; `head`: the head's probability of each one's category,
        `familiarity`: the photo's (needed when the calibration uses them: None then answers None)."""
        if not self.fitted or not scores or (self.needs_head and head is None) or \
                (self.needs_density and familiarity is None):
            return None, []
        f = features(scores)
        per_hit = _sigmoid(f @ np.asarray(self.hit[:2]) + self.hit[2])
        q = query_features(scores, self.query_features, head, familiarity)
        top = float(np.clip(_sigmoid(np.asarray(q @ np.asarray(self.top1[:-1]) + self.top1[-1])), *CONFIDENCE_RANGE))
        # the first-product model also knows unknown products; the others are scaled down alike,
        # so that a list whose first item is unlikely does not call a lower one 'possible'
        shrink = min(1.0, top / max(float(per_hit[0]), 1e-12))
        per_hit = np.clip(per_hit * shrink, *CONFIDENCE_RANGE)
        per_hit[0] = top
        # never more likely than a product ranked above it: the hit model reads plain similarities,
        # while a fused ranking also weighs the category head, and a list whose percentages rise
        # down the page contradicts its own order. A photo shows one product, so the products'
        # chances exclude each other: together they never pass 1 (the hit model scores each alone)
        chances, left = [], 1.0
        for p in np.minimum.accumulate(per_hit):
            p = max(min(float(p), left), CONFIDENCE_RANGE[0])
            chances.append(p)
            left -= p
        return top, chances

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
        how = ("labelled shopper photos of the shop's products" if self.method == "labelled"
               else "leave-one-out over the catalogue's own photos")
        out = {"status": "calibrated", "method": how, "source": "labelled" if self.method == "labelled" else "catalogue",
               "samples": self.samples, "strong_at": round(self.strong_at, 4), "none_below": round(self.none_below, 4),
               "build_id": self.build_id, "scoring": self.scoring, "features": list(self.query_features)}
        if self.method != "labelled":
            out["fallback"] = CATALOGUE_FALLBACK
        return out

    def for_scoring(self, scoring: str) -> "Calibration":
        """This calibration when it was fitted on `scoring`, else the stated fallback (never a guess)."""
        if not self.fitted or scoring == self.scoring:
            return self
        return replace(NO_CALIBRATION, reason=(
            f"the confidence was calibrated on scores from {self.scoring}, but this search scored with {scoring}; "
            "run `shopsearch index calibrate` with the same search settings"))

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "density"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Calibration":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "density"}
        for k in ("top1", "hit"):
            known[k] = tuple(float(x) for x in known.get(k, ()))
        known["query_features"] = tuple(str(x) for x in known.get("query_features", ("score", "lead")))
        unknown = [n for n in known["query_features"] if n not in QUERY_FEATURES]
        if unknown:
            raise ValueError(f"unknown confidence feature(s) {unknown}")
        if known.get("fitted") and len(known["top1"]) != len(known["query_features"]) + 1:
            raise ValueError("the first-product weights do not match its features")
        return cls(**known)


#: what a catalogue-only calibration says about itself (API, CLI): it is the fallback, and how to do better
CATALOGUE_FALLBACK = ("no labelled shopper photos: calibrated on the catalogue's own photos, each held out and "
                      "searched as a shopper's photo; run `shopsearch index calibrate --photos` with labelled "
                      "shopper photos for a fairer fit")

NO_CALIBRATION = Calibration(False, reason="this index build has no calibration yet; run `shopsearch index calibrate`")


def category_mass(probs: Mapping[str, float], prefix: str) -> float | None:
    """The category head's probability that the photo's product lies under category `prefix` (the
    sum over its fine categories there); None when the head knows no category there (it cannot tell)."""
    p = prefix.strip("/")
    inside = [v for c, v in probs.items() if c and (c == p or c.startswith(p + "/"))]
    return float(sum(inside)) if inside else None


def capped(result: SearchResult, calibration: Calibration | None, cap: float, why: str) -> SearchResult:
    """The result with its confidence at most `cap` (each hit's calibrated score scaled alike and
    `match` decided again): a filtered search's first product can only be the one photographed
    when that product is inside the filter, whatever the photo's familiarity says. `why` names the
    limit (SearchResult.confidence_limit) when it lowered the confidence."""
    if result.confidence is None or calibration is None or result.confidence <= cap:
        return result
    conf = float(max(cap, CONFIDENCE_RANGE[0]))
    scale = conf / result.confidence
    hits = tuple(replace(h, calibrated=None if h.calibrated is None else max(h.calibrated * scale, CONFIDENCE_RANGE[0]))
                 for h in result.hits)
    return replace(result, hits=hits, confidence=conf, match=calibration.match(conf), confidence_limit=why)


def annotate(result: SearchResult, calibration: Calibration | None, scoring: str = RAW_SCORING,
             plain_scores: bool = False, head: Sequence[float] | None = None,
             vector: np.ndarray | None = None) -> SearchResult:
    """The result with `confidence`, `match` and each hit's calibrated score (or the fallback stated);
    `scoring`: the path the hits' scores came from (scoring_key); `plain_scores`: calibrate the
    hits' plain similarities (fused results); `head`: the category head's probability of each hit's
    category (fused results: a calibration fitted on fused searches uses it); `vector`: the query's
    vector as searched (a calibration with the `density` feature reads its familiarity)."""
    cal = (calibration or NO_CALIBRATION).for_scoring(scoring)
    if cal.fitted and cal.needs_head and head is None:
        cal = replace(NO_CALIBRATION, reason="the confidence was calibrated with the category head's probabilities, "
                                             "which this search did not compute")
    if cal.fitted and cal.needs_density and (cal.density is None or vector is None):
        cal = replace(NO_CALIBRATION, reason=(
            "the confidence was calibrated with the catalogue's density model, which this build lacks "
            f"({DENSITY_FILE}); run `shopsearch index calibrate --photos`" if cal.density is None else
            "the confidence was calibrated with the photo's familiarity to the catalogue, which this search "
            "(not a photo) has none of"))
    conf, per_hit = cal.confidence([h.plain_score if plain_scores else h.score for h in result.hits], head,
                                   cal.familiarity(vector))
    hits = tuple(replace(h, calibrated=p) for h, p in zip(result.hits, per_hit)) if per_hit else result.hits
    return replace(result, hits=hits, confidence=conf, match=cal.match(conf), calibration=cal.describe())


# -- storage beside a build ------------------------------------------------------------------
def save_calibration(build_dir: Path, cal: Calibration) -> Path:
    """Write calibration.json atomically into a build folder."""
    files = calibration_file(cal)
    if DENSITY_FILE not in files:
        (Path(build_dir) / DENSITY_FILE).unlink(missing_ok=True)  # an older fit's: not this one's
    for name in sorted(files, key=lambda n: n == CALIBRATION_FILE):  # the density first: never a fit without it
        path = Path(build_dir) / name
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        content = files[name]
        tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_text(content)
        os.replace(tmp, path)
    return Path(build_dir) / CALIBRATION_FILE


def load_calibration(build_dir: Path, build_id: str | None = None) -> Calibration:
    """The build's calibration; the stated fallback when it has none or it belongs to another build."""
    path = Path(build_dir) / CALIBRATION_FILE
    try:
        cal = Calibration.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return NO_CALIBRATION
    except (OSError, ValueError, TypeError, KeyError) as e:
        log.warning("calibration unreadable", extra={"path": str(path), "error": str(e)})
        return replace(NO_CALIBRATION, reason=f"this build's calibration is unreadable ({e}); "
                                              "run `shopsearch index calibrate`")
    if build_id is not None and cal.build_id not in (None, build_id):
        return replace(NO_CALIBRATION, reason="the calibration belongs to another build; "
                                              "run `shopsearch index calibrate`")
    if cal.fitted and not all(math.isfinite(v) for v in cal.top1 + cal.hit):
        return replace(NO_CALIBRATION, reason="this build's calibration is not usable; run `shopsearch index calibrate`")
    if cal.needs_density:  # missing or unreadable: annotate states the fallback
        try:
            cal = replace(cal, density=ProductDensity.from_bytes((Path(build_dir) / DENSITY_FILE).read_bytes()))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            log.warning("density model unreadable", extra={"path": str(Path(build_dir) / DENSITY_FILE), "error": str(e)})
    return cal



def calibration_file(cal: Calibration) -> dict[str, str | bytes]:
    """The build sidecars (name -> content) that IndexStore.publish writes before the build serves:
    the calibration, and the density model its `density` feature reads."""
    files: dict[str, str | bytes] = {CALIBRATION_FILE: json.dumps(cal.to_json(), indent=2)}
    if cal.density is not None and cal.needs_density:
        files[DENSITY_FILE] = cal.density.to_bytes()
    return files


