"""How `index update` applies the catalogue's changes to the serving build: a pure decision
over what the serving index is and what changed, so each case is testable without an index."""
from __future__ import annotations

from dataclasses import dataclass

#: an IVF-PQ index is retrained from the cache once this share of its vectors arrived after training
RETRAIN_FRACTION = 0.5

INCREMENTAL = "incremental"  # remove and add in the serving index
READD = "re-add"  # keep the trained quantizer and codebooks, re-add every cached vector (no k-means)
REBUILD = "rebuild"  # a fresh index from the cached vectors (trained again where it needs training)


@dataclass(frozen=True)
class UpdatePlan:
    strategy: str  # INCREMENTAL | READD | REBUILD
    reason: str | None  # why not incremental (None when it is)


def plan_update(old_type: str, target_type: str, trained: bool, can_remove: bool, vectors: int,
                trained_on: int, added_since_training: int, drops: int) -> UpdatePlan:
    """The strategy for an update of a serving `old_type` index into a `target_type` one of
    `vectors` vectors, `drops` of the serving ones to remove, `added_since_training` of them
    added after the index was trained on `trained_on`."""
    retrain = trained and old_type not in ("flat", "hnsw") and \
        added_since_training > RETRAIN_FRACTION * max(trained_on, 1)
    if target_type != old_type:
        reason = f"index type {old_type} -> {target_type} for {vectors} vectors"
    elif retrain:
        reason = f"{added_since_training} of {vectors} vectors arrived after the {old_type} training"
    elif drops and not can_remove:
        reason = f"{old_type} cannot remove vectors in place"
    else:
        return UpdatePlan(INCREMENTAL, None)
    if target_type == old_type and old_type != "hnsw" and not retrain:
        return UpdatePlan(READD, reason)
    return UpdatePlan(REBUILD, reason)
