"""Open-set benchmark: a seeded share of products is removed from the gallery, photos of
kept and removed products are searched, and the calibrated confidence is scored on how
well it tells them apart (AUROC), how honest it is on in-catalogue queries (ECE), and
what precision each share of answered queries gets (precision/coverage)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from shopsearch.confidence import UNKNOWN_PRIOR, Calibration, scoring_key
from shopsearch.confidence_fit import FusedRanking, LabelledQuery, calibrate_index, ranked_as_served
from shopsearch.rerank import RerankingIndex, RerankOptions
from shopsearch.index.vector_index import VectorIndex

ECE_BINS = 15
#: folds (by product) when the calibration photos are the queries themselves
FOLDS = 5
#: trains a category head on (gallery vectors, their categories): (vectors -> probabilities, the columns)
HeadTrainer = Callable[[np.ndarray, Sequence[str]], tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...]]]


@dataclass(frozen=True)
class OpenSetFusion:
    """Fused searches in the open set: a head trained on the kept products' gallery photos only
    (it never sees a removed product), fused with `weight` as the served router fuses."""

    train: HeadTrainer
    weight: float
    category_of: Mapping[Any, str]  # product -> category path


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count half); None without both classes."""
    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), float)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS) -> float | None:
    """Expected calibration error: bin-size-weighted |accuracy - mean confidence| over equal-width bins."""
    c = np.asarray(confidence, float)
    y = np.asarray(correct, float)
    if len(c) == 0:
        return None
    idx = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(c) * abs(y[m].mean() - c[m].mean())
    return float(total)


def precision_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> list[tuple[float, float, float]]:
    """(threshold, coverage, precision) answering only queries at or above each confidence;
    an answer is right only when its first product is the query's (never for removed products)."""
    c = np.asarray(confidence, float)
    y = np.asarray(correct, float)
    order = np.argsort(-c, kind="mergesort")
    hits = np.cumsum(y[order])
    n = np.arange(1, len(c) + 1)
    out = []
    for i in range(len(c)):
        if i + 1 < len(c) and c[order[i + 1]] == c[order[i]]:
            continue  # one point per distinct threshold
        out.append((float(c[order[i]]), float(n[i] / len(c)), float(hits[i] / n[i])))
    return out


@dataclass(frozen=True)
class OpenSetQuery:
    """One query vector and the products (keys of `product_of`) that are right for it."""

    vector: np.ndarray
    relevant: frozenset


@dataclass(frozen=True)
class OpenSetResult:
    fraction: float
    seed: int
    removed_products: int
    kept_products: int
    queries_in: int
    queries_out: int
    auroc: float | None
    ece: float | None
    top1_accuracy_in: float | None
    match_shares: dict[str, dict[str, float]]
    curve: tuple[tuple[float, float, float], ...]
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        thin = self.curve[:: max(1, len(self.curve) // 50)]
        return {"fraction": self.fraction, "seed": self.seed, "removed_products": self.removed_products,
                "kept_products": self.kept_products, "queries_in_catalogue": self.queries_in,
                "queries_not_in_catalogue": self.queries_out,
                "auroc": round(self.auroc, 4) if self.auroc is not None else None,
                "ece": round(self.ece, 4) if self.ece is not None else None, "ece_bins": ECE_BINS,
                "top1_accuracy_in_catalogue": round(self.top1_accuracy_in, 4) if self.top1_accuracy_in else None,
                "match_shares": self.match_shares,
                "calibration": {"fitted": self.calibration.fitted, "samples": self.calibration.samples,
                                "method": self.calibration.method, "scoring": self.calibration.scoring,
                                "features": list(self.calibration.query_features),
                                "near_duplicate": self.calibration.near_duplicate,
                                "none_below": self.calibration.none_below, "strong_at": self.calibration.strong_at,
                                "reason": self.calibration.reason},
                "precision_coverage": [{"threshold": round(t, 4), "coverage": round(c, 4), "precision": round(p, 4)}
                                       for t, c, p in thin]}


def _draw_removed(products: Sequence[Any], fraction: float, rng: np.random.Generator) -> set:
    """The products (of the sorted list) the open set removes; advances `rng`."""
    n_remove = int(round(fraction * len(products)))
    removed = rng.choice(len(products), n_remove, replace=False).tolist() if n_remove else []
    return {products[i] for i in removed}


def products_removed(products: Iterable[Any], fraction: float, seed: int = 0) -> set:
    """The products `evaluate_open_set` removes for this fraction and seed (e.g. to train a model
    that never sees them)."""
    return _draw_removed(sorted(set(products), key=str), fraction, np.random.default_rng(seed))


def evaluate_open_set(index: VectorIndex, product_of: Mapping[int, Any], hash_of: Mapping[int, str | None],
                      queries: Sequence[OpenSetQuery], fraction: float, seed: int = 0, k: int = 5,
                      labelled: Sequence[LabelledQuery] = (), labelled_are_queries: bool = False,
                      rerank: RerankOptions = RerankOptions(), query_features: Sequence[str] | None = None,
                      unknown_prior: float = UNKNOWN_PRIOR, near_duplicate: float | None = None,
                      fusion: OpenSetFusion | None = None, density: bool = True) -> OpenSetResult:
    """Remove `fraction` of the products (seeded), calibrate on what is left as a shop would, then
    score every query's confidence. The calibration uses `labelled` photos (products = SKUs) of the
    kept products when given (photos of removed products are dropped: a shop has none of what it
    does not sell), else leave-one-out over the gallery's own photos. `labelled_are_queries`: the
    labelled photos are the queries themselves (a validation split): each query's confidence then
    comes from a fit without its product's photos (FOLDS folds by product). Scores go through
    `rerank` as the configuration's searches do. `query_features`, `unknown_prior`, `near_duplicate`:
    the fit's settings (calibrate_index; None: the defaults), for choosing them on validation photos.
    `fusion`: searches are fused with a head trained on the kept products alone (labelled photos are
    then fitted on the fused path, with the head's probability among the features). `density`: labelled
    fits also read the photo's familiarity to the kept products' photos (shopsearch.density)."""
    products = sorted(set(product_of.values()), key=str)
    rng = np.random.default_rng(seed)
    removed_products = _draw_removed(products, fraction, rng)
    kept_ids = np.array(sorted(i for i, p in product_of.items() if p not in removed_products), dtype=np.int64)
    gallery = VectorIndex(index.dim, "flat", expected_size=len(kept_ids))
    gallery.add(kept_ids, np.stack([index.reconstruct(int(i)) for i in kept_ids]))
    kept_of = {int(i): product_of[int(i)] for i in kept_ids}
    search = RerankingIndex(gallery, rerank) if rerank.active else gallery
    labelled = [q for q in labelled if q.product not in removed_products]
    fused = None
    if fusion is not None:
        probabilities, columns = fusion.train(np.stack([index.reconstruct(int(i)) for i in kept_ids]),
                                              [fusion.category_of[kept_of[int(i)]] for i in kept_ids])
        fused = FusedRanking(fusion.weight, probabilities, tuple(columns), fusion.category_of)
    fold_of = {p: i % FOLDS for i, p in enumerate(rng.permutation(np.array(products, dtype=object)).tolist())}

    def fit(exclude_fold: int | None) -> Calibration:
        photos = [q for q in labelled if exclude_fold is None or fold_of.get(q.product) != exclude_fold]
        return calibrate_index(gallery, kept_of, hash_of, build_id=f"open-set-{seed}", seed=seed, labelled=photos,
                               search=search if rerank.active else None, scoring=scoring_key(rerank.spec),
                               query_feature_names=query_features, unknown_prior=unknown_prior,
                               near_duplicate=near_duplicate, fusion=fused, density=density)

    cal = fit(None)
    per_fold = {f: fit(f) for f in range(FOLDS)} if labelled and labelled_are_queries else {}
    fetch = min(len(kept_ids), 256)
    conf, inside, correct = [], [], []
    vecs = np.stack([q.vector for q in queries]).astype(np.float32)
    scores, ids = search.search(vecs, fetch)
    probs = fused.probabilities(vecs) if fused is not None else [None] * len(queries)
    for q, sc, nb, pr in zip(queries, scores, ids, probs):
        fold = {fold_of.get(p) for p in q.relevant} - {None}
        c_fit = per_fold[min(fold)] if per_fold and fold else cal
        # fused search order; the head's probabilities only for a calibration fitted with them
        ranked, head = ranked_as_served(sc, nb, kept_of, set(), k, fused, pr)
        c, _ = c_fit.confidence([s for _, s in ranked], head if c_fit.needs_head else None,
                                c_fit.familiarity(q.vector))
        conf.append(0.0 if c is None else c)
        inside.append(bool(q.relevant - removed_products))
        correct.append(bool(ranked) and ranked[0][0] in q.relevant)
    conf_a, in_a, ok_a = np.asarray(conf), np.asarray(inside), np.asarray(correct)
    shares = {}
    for name, mask in (("in_catalogue", in_a), ("not_in_catalogue", ~in_a)):
        matches = [cal.match(float(c)) for c in conf_a[mask]]
        shares[name] = {m: round(matches.count(m) / max(1, len(matches)), 4) for m in ("strong", "weak", "none")}
    return OpenSetResult(
        fraction, seed, len(removed_products), len(products) - len(removed_products), int(in_a.sum()),
        int((~in_a).sum()), auroc(conf_a, in_a), ece(conf_a[in_a], ok_a[in_a]),
        float(ok_a[in_a].mean()) if in_a.any() else None, shares,
        tuple(precision_coverage(conf_a, ok_a & in_a)), cal)


def plot_precision_coverage(result: OpenSetResult, path: Any, label: str = "") -> None:
    """PNG of precision against coverage (matplotlib, headless)."""
    import matplotlib  # noqa: PLC0415 - only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([c for _, c, _ in result.curve], [p for _, _, p in result.curve], lw=2)
    none_at = [(c, p) for t, c, p in result.curve if t >= result.calibration.none_below]
    if none_at:
        ax.scatter([none_at[-1][0]], [none_at[-1][1]], color="crimson", zorder=3,
                   label=f"'no close match' below {result.calibration.none_below:.2f}")
        ax.legend(loc="lower left")
    ax.set_xlabel("coverage (share of queries answered)")
    ax.set_ylabel("precision@1 of answered queries")
    auroc_text = f"AUROC {result.auroc:.3f}" if result.auroc is not None else "AUROC -"
    ax.set_title(f"Open set: {result.fraction:.0%} of products removed\n{label} · {auroc_text}", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
