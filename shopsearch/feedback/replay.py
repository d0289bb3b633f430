"""Recall of a build on the logged queries whose right product a shopper confirmed
(`shopsearch bench recall --from-feedback`). The stored query vectors are replayed, so only
queries logged with the build's own model count: photos are not stored (unless upload
retention is on, and then only as files this does not read), so they cannot be re-embedded."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shopsearch.errors import NoFeedbackError
from shopsearch.feedback.store import FeedbackStore
from shopsearch.search import SearchService


@dataclass(frozen=True)
class ReplayResult:
    build_id: str
    fingerprint: str  # the build's model's
    queries: int
    ks: tuple[int, ...]
    recall_at: dict[int, float]  # the build's, replayed now
    mrr: float  # over the first max(ks) products; a miss counts 0
    logged_recall_at: dict[int, float]  # what the shoppers were shown when they searched
    other_models: dict[str, int]  # fingerprint -> confirmed queries left out (another model)

    def to_dict(self) -> dict[str, Any]:
        return {"build_id": self.build_id, "fingerprint": self.fingerprint, "queries": self.queries,
                "recall_at": {str(k): v for k, v in self.recall_at.items()}, "mrr": self.mrr,
                "logged_recall_at": {str(k): v for k, v in self.logged_recall_at.items()},
                "other_models": self.other_models}


def replay_confirmed(service: SearchService, store: FeedbackStore, ks: tuple[int, ...] = (1, 5, 10),
                     since: datetime | None = None) -> ReplayResult:
    """Search the service's build with each confirmed query's stored vector (no filters: the
    confirmed product is right whatever the shopper filtered by) and score where it ranks."""
    fingerprint = service.embedder.fingerprint
    pairs = store.confirmed_pairs(since=since, model_fingerprint=fingerprint)
    others = Counter(p.model_fingerprint for p in store.confirmed_pairs(since=since)
                     if p.model_fingerprint != fingerprint)
    if not pairs:
        if others:
            listed = ", ".join(f"{n} with {fp}" for fp, n in others.most_common(3))
            raise NoFeedbackError(f"no confirmed query was logged with this build's model ({fingerprint}), only "
                                  f"{listed}; their photos are not stored, so they cannot be embedded again with "
                                  f"the new model: evaluate a build of the logged model, or collect feedback anew")
        raise NoFeedbackError("the feedback log holds no confirmed query (\"this is it\" / event confirm)"
                              + (f" since {since.isoformat()}" if since else ""))
    top = max(ks)
    ranks: list[int | None] = []
    for p in pairs:
        skus = [h.sku for h in service.search_vector(p.vector, k=top).hits]
        ranks.append(skus.index(p.sku) + 1 if p.sku in skus else None)
    n = len(pairs)
    return ReplayResult(
        build_id=service.manifest.build_id, fingerprint=fingerprint, queries=n, ks=tuple(ks),
        recall_at={k: sum(1 for r in ranks if r is not None and r <= k) / n for k in ks},
        mrr=sum(1 / r for r in ranks if r is not None) / n,
        logged_recall_at={k: sum(1 for p in pairs if p.rank <= k) / n for k in ks},
        other_models=dict(others))
