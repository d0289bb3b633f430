"""Ranking metrics over per-query ranked lists of distinct items (products).

Pure functions: a *ranking* is the ordered sequence of distinct item ids a search
returned (best first, possibly shorter than k); *relevant* is the set of item ids that
count as a correct answer for the query. Definitions, pinned by tests/test_metrics.py:

- recall@k    1 if any relevant item is among the first k, else 0 (the "hit rate", as
              in image-retrieval Recall@K). With one relevant product per query this is
              the classic recall; with several (category mode) it is "found one of them".
- precision@k |relevant ∩ first k| / k; the denominator is k even when fewer than k
              items were returned.
- AP@k        (1 / min(|relevant|, k)) * Σ_{i<=k, item i relevant} precision@i.
- RR          1 / rank of the first relevant item in the whole ranking, 0 when none;
              so MRR is cut at the depth that was retrieved (the largest k evaluated).
- NDCG@k      binary gains: Σ_{i<=k} rel_i / log2(i+1) divided by the ideal
              Σ_{i<=min(|relevant|,k)} 1 / log2(i+1).

A query with no relevant item at all (its product/category is absent from the gallery)
cannot be answered by any system: it is left out of every average and counted in
`Summary.unanswerable`, so a metric never mixes "bad search" with "missing data".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

Item = Hashable


def _first_k(ranking: Sequence[Item], k: int) -> Sequence[Item]:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranking[:k]


def recall_at(ranking: Sequence[Item], relevant: set, k: int) -> float:
    """1.0 when a relevant item is within the first k, else 0.0."""
    return 1.0 if any(r in relevant for r in _first_k(ranking, k)) else 0.0


def precision_at(ranking: Sequence[Item], relevant: set, k: int) -> float:
    """Relevant items among the first k, divided by k."""
    return sum(1 for r in _first_k(ranking, k) if r in relevant) / k


def average_precision_at(ranking: Sequence[Item], relevant: set, k: int) -> float:
    """AP@k normalised by min(|relevant|, k); 0.0 when nothing is relevant."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, r in enumerate(_first_k(ranking, k), start=1):
        if r in relevant:
            hits += 1
            total += hits / i
    return total / min(len(relevant), k)


def reciprocal_rank(ranking: Sequence[Item], relevant: set) -> float:
    """1 / rank of the first relevant item, 0.0 when none is in the ranking."""
    for i, r in enumerate(ranking, start=1):
        if r in relevant:
            return 1.0 / i
    return 0.0


def ndcg_at(ranking: Sequence[Item], relevant: set, k: int) -> float:
    """Binary-gain NDCG@k; 0.0 when nothing is relevant."""
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, r in enumerate(_first_k(ranking, k), start=1) if r in relevant)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def percentiles(values: Iterable[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": .., "p95": .., "p99": ..} by linear interpolation; None when there are no values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


@dataclass(frozen=True)
class QueryOutcome:
    """One query: what came back and what would have been right."""

    query_id: str
    ranking: tuple[Item, ...]
    relevant: frozenset
    category: str | None = None


@dataclass(frozen=True)
class Summary:
    """Averages over the answerable queries (see the module docstring)."""

    ks: tuple[int, ...]
    queries: int
    unanswerable: int
    recall_at: dict[int, float]
    precision_at: dict[int, float]
    map_at: dict[int, float]
    ndcg_at: dict[int, float]
    mrr: float
    per_category: dict[str, dict] = field(default_factory=dict)


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def summarize(outcomes: Sequence[QueryOutcome], ks: Sequence[int], per_category: bool = True) -> Summary:
    """Every metric at every k, from the same ranked lists, plus a per-category breakdown."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    answerable = [o for o in outcomes if o.relevant]
    rel = [set(o.relevant) for o in answerable]
    summary = Summary(
        ks=ks,
        queries=len(answerable),
        unanswerable=len(outcomes) - len(answerable),
        recall_at={k: _mean([recall_at(o.ranking, r, k) for o, r in zip(answerable, rel)]) for k in ks},
        precision_at={k: _mean([precision_at(o.ranking, r, k) for o, r in zip(answerable, rel)]) for k in ks},
        map_at={k: _mean([average_precision_at(o.ranking, r, k) for o, r in zip(answerable, rel)]) for k in ks},
        ndcg_at={k: _mean([ndcg_at(o.ranking, r, k) for o, r in zip(answerable, rel)]) for k in ks},
        mrr=_mean([reciprocal_rank(o.ranking, r) for o, r in zip(answerable, rel)]),
    )
    if per_category:
        groups: dict[str, list[QueryOutcome]] = {}
        for o in answerable:
            groups.setdefault(o.category or "(none)", []).append(o)
        for cat in sorted(groups):
            sub = summarize(groups[cat], ks, per_category=False)
            summary.per_category[cat] = {"queries": sub.queries, "recall_at": sub.recall_at,
                                         "map_at": sub.map_at, "mrr": sub.mrr}
    return summary


def parse_ks(text: str | Sequence[int]) -> tuple[int, ...]:
    """"1,5,10" -> (1, 5, 10); ValueError on anything else."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        ks = sorted({int(str(p).strip()) for p in parts if str(p).strip()})
    except ValueError:
        raise ValueError(f"k values must be integers like 1,5,10, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be positive integers, got {text!r}")
    return tuple(ks)


def parse_thresholds(text: str) -> dict[int, float]:
    """"1=0.85,5=0.97" -> {1: 0.85, 5: 0.97}; ValueError on anything else."""
    out: dict[int, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        k, eq, v = part.partition("=")
        try:
            kk, vv = int(k), float(v)
        except ValueError:
            raise ValueError(f"--min-recall expects K=VALUE pairs like 1=0.85,5=0.97, got {part!r}") from None
        if not eq or kk < 1 or not 0.0 <= vv <= 1.0:
            raise ValueError(f"--min-recall expects K=VALUE with K >= 1 and 0 <= VALUE <= 1, got {part!r}")
        out[kk] = vv
    if not out:
        raise ValueError("--min-recall is empty")
    return out


def gate_failures(recalls: Mapping[str, Mapping[int, float]], minimum: Mapping[int, float]) -> list[str]:
    """Human-readable lines, one per (configuration, k) whose recall is below its minimum."""
    lines = []
    for name, rec in recalls.items():
        for k, floor in sorted(minimum.items()):
            got = rec.get(k)
            if got is None:
                lines.append(f"{name}: recall@{k} was not measured (minimum {floor:.4f})")
            elif got < floor:
                lines.append(f"{name}: recall@{k} = {got:.4f} < minimum {floor:.4f}")
    return lines
