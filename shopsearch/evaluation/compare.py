"""Two index builds side by side (the serving one and a shadow): the same labelled queries
through both SearchServices: recall@k, agreement of their first results, latency, and the
queries where they disagree. Labelled photos are embedded by each build's own model;
confirmed feedback queries (stored vectors) are replayed only in a space they can be
mapped to (the same model, with or without an adapter), and otherwise reported as skipped."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from shopsearch.adapter.model import Adapter
from shopsearch.adapter.train import ConfirmedPair
from shopsearch.embedding.preprocess import decode_query
from shopsearch.errors import InvalidImageError
from shopsearch.evaluation.metrics import percentiles
from shopsearch.search import SearchService


@dataclass(frozen=True)
class LabelledPhoto:
    path: str
    relevant: frozenset[str]  # the SKUs that count as a right answer


@dataclass(frozen=True)
class SideResult:
    build_id: str
    model: str
    fingerprint: str
    recall: dict[int, float]
    latency_ms: dict[str, float | None]  # p50/p95/p99 of one query (embedding included for photos)

    def to_dict(self) -> dict:
        return {"build_id": self.build_id, "model": self.model, "fingerprint": self.fingerprint,
                "recall": {f"@{k}": round(v, 4) for k, v in self.recall.items()},
                "latency_ms": {k: round(v, 2) if v is not None else None for k, v in self.latency_ms.items()}}


@dataclass(frozen=True)
class Disagreement:
    query: str
    expected: tuple[str, ...]
    serving_top: str | None
    shadow_top: str | None

    @property
    def serving_right(self) -> bool:
        return self.serving_top in self.expected

    @property
    def shadow_right(self) -> bool:
        return self.shadow_top in self.expected

    def to_dict(self) -> dict:
        return {"query": self.query, "expected": list(self.expected), "serving_top": self.serving_top,
                "shadow_top": self.shadow_top, "serving_right": self.serving_right, "shadow_right": self.shadow_right}


@dataclass(frozen=True)
class Comparison:
    source: str  # "photos" | "feedback"
    queries: int  # scored by both builds
    skipped: int  # unreadable photos, or feedback vectors in a space a build cannot use
    serving: SideResult
    shadow: SideResult
    agreement_at_1: float
    disagreements: tuple[Disagreement, ...] = field(repr=False)

    def to_dict(self) -> dict:
        return {"source": self.source, "queries": self.queries, "skipped": self.skipped,
                "serving": self.serving.to_dict(), "shadow": self.shadow.to_dict(),
                "agreement@1": round(self.agreement_at_1, 4), "disagreements": len(self.disagreements),
                "disagreeing_queries": [d.to_dict() for d in self.disagreements]}


def compare_photos(serving: SearchService, shadow: SearchService, photos: Sequence[LabelledPhoto],
                   ks: Sequence[int] = (1, 5, 10), progress: bool = True) -> Comparison:
    """Each photo searched by both builds, each embedding it with its own model."""
    runs: list[tuple[str, frozenset[str], list[tuple[tuple[str, ...], float]]]] = []
    skipped = 0
    for p in tqdm(photos, desc="comparing builds", unit="photo", disable=not progress):
        both = []
        for svc in (serving, shadow):
            try:
                img = decode_query(p.path, svc.embedder)
            except (InvalidImageError, OSError):
                break
            t0 = time.perf_counter()
            res = svc.search_image(img, k=max(ks))
            both.append((tuple(h.sku for h in res.hits), (time.perf_counter() - t0) * 1000))
        if len(both) == 2:
            runs.append((p.path, p.relevant, both))
        else:
            skipped += 1
    return _compare("photos", serving, shadow, runs, skipped, ks)


def compare_feedback(serving: SearchService, shadow: SearchService, pairs: Iterable[ConfirmedPair],
                     ks: Sequence[int] = (1, 5, 10)) -> Comparison:
    """Confirmed queries replayed from their stored vectors, where both builds' spaces allow."""
    adapters = {a.fingerprint: a for a in (_adapter(serving), _adapter(shadow)) if a is not None}
    runs, skipped = [], 0
    for n, pair in enumerate(pairs):
        vecs = [_to_space(pair.vector, pair.fingerprint, svc.embedder.fingerprint, adapters)
                for svc in (serving, shadow)]
        if any(v is None for v in vecs):
            skipped += 1
            continue
        both = []
        for svc, v in zip((serving, shadow), vecs):
            t0 = time.perf_counter()
            res = svc.search_vector(v, k=max(ks))
            both.append((tuple(h.sku for h in res.hits), (time.perf_counter() - t0) * 1000))
        runs.append((f"feedback#{n}", frozenset({pair.sku}), both))
    return _compare("feedback", serving, shadow, runs, skipped, ks)


def _adapter(svc: SearchService) -> Adapter | None:
    return getattr(svc.embedder, "adapter", None)


def _to_space(vec: np.ndarray, fp: str, target: str, adapters: dict[str, Adapter]) -> np.ndarray | None:
    """A stored vector of space `fp` in space `target`, or None when no known map joins them."""
    v = np.asarray(vec, dtype=np.float32).reshape(1, -1)
    if fp == target:
        return v[0]
    base_fp = fp
    if fp in adapters:  # logged by an adapted build: back to the model's space
        v, base_fp = adapters[fp].unapply(v).astype(np.float32), adapters[fp].base_fingerprint
    if target == base_fp:
        return v[0]
    if target in adapters and adapters[target].base_fingerprint == base_fp:
        return adapters[target].apply(v)[0]
    return None


def _compare(source: str, serving: SearchService, shadow: SearchService,
             runs: list[tuple[str, frozenset[str], list[tuple[tuple[str, ...], float]]]], skipped: int,
             ks: Sequence[int]) -> Comparison:
    n = len(runs)
    sides = []
    for j, svc in enumerate((serving, shadow)):
        recall = {k: (sum(bool(set(r[2][j][0][:k]) & r[1]) for r in runs) / n if n else 0.0) for k in ks}
        sides.append(SideResult(svc.manifest.build_id, svc.manifest.model_name, svc.manifest.model_fingerprint,
                                recall, percentiles(r[2][j][1] for r in runs)))
    def top(hits: tuple[str, ...]) -> str | None:
        return hits[0] if hits else None

    disagree = tuple(Disagreement(q, tuple(sorted(rel)), top(b[0][0]), top(b[1][0]))
                     for q, rel, b in runs if top(b[0][0]) != top(b[1][0]))
    agreement = (n - len(disagree)) / n if n else 0.0
    return Comparison(source, n, skipped, sides[0], sides[1], agreement, disagree)
