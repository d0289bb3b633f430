"""How a build or `index update` applies the catalogue's changes to the serving build: a pure
decision over what the serving index is and what changed, so each case is testable without
an index.

Small changes cost work proportional to the change on every index type (DELTA): the serving
build's base segment is kept as it is (hard-linked into the new build), the images removed or
changed since it was built are tombstoned (excluded inside `VectorIndex.search`), and the
vectors added or changed since go into a small exact delta segment rewritten with each
update. Once the waste (tombstones) or the delta grows past `COMPACT_FRACTION` of the base
segment, and past `COMPACT_MIN_ENTRIES` so that small catalogues never churn, the index is
compacted: rebuilt from the vector cache (REBUILD), or for a trained IVF index re-filled
keeping its quantizer and codebooks (READD). Nothing is re-embedded either way.

Why 20%: a tombstoned HNSW entry still costs graph hops, and a filtered HNSW search
degrades as the share it must skip grows; the delta is searched exactly (a flat scan), so
at 20% of a 1M base it is a 200k-vector scan per query. Past that the one-off rebuild
(no embedding) is cheaper than what every later query pays."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from indexer.diff import IndexDiff
from shopsearch.catalogue.bulk import NO_HASH
from shopsearch.images import sha256_file
from shopsearch.index.sizing import choose_index_type

if TYPE_CHECKING:
    from shopsearch.catalogue.rescan import RescanReport
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.index.store import IndexStore
    from shopsearch.index.manifest import IndexManifest

#: an IVF-PQ index is retrained from the cache once this share of its vectors arrived after training
RETRAIN_FRACTION = 0.5
#: compact once tombstones or the delta segment exceed this share of the base segment ...
COMPACT_FRACTION = 0.2
#: ... and this many entries (below it a small catalogue keeps its delta: it is cheap either way)
COMPACT_MIN_ENTRIES = 1000

UP_TO_DATE = "up-to-date"  # nothing changed: no index work, nothing published
DELTA = "delta"  # keep the base segment; tombstone what left, write a small delta segment
READD = "re-add"  # keep the trained quantizer and codebooks, re-add every cached vector (no k-means)
REBUILD = "rebuild"  # a fresh index from the cached vectors (trained again where it needs training)


@dataclass(frozen=True)
class ServingIndex:
    """What the serving build is, as far as the plan needs to know."""

    index_type: str
    trained: bool  # needs training and has it (IVF kinds)
    base_count: int  # vectors in the base segment, tombstoned ones included
    dead: int  # tombstoned ids of the base segment
    delta: int  # vectors in the delta segment
    trained_on: int  # vectors the index was (last) trained or built on
    added_since_training: int


@dataclass(frozen=True)
class Changes:
    """The catalogue against the serving build (see indexer.build.diff_index)."""

    added: int
    changed: int
    removed: int
    vectors: int  # vectors the updated index will hold
    target_type: str  # the index type the update must end with


@dataclass(frozen=True)
class UpdatePlan:
    strategy: str  # UP_TO_DATE | DELTA | READD | REBUILD
    reason: str | None  # why the index is rebuilt or re-filled (None otherwise)
    #: after a DELTA: tombstones and delta entries the new build will carry
    dead: int = 0
    delta: int = 0


def plan_update(serving: ServingIndex, changes: Changes, force: bool = False) -> UpdatePlan:
    """The strategy for applying `changes` to `serving`; `force` rebuilds whatever changed."""
    old = serving.index_type
    if force:
        return UpdatePlan(_compaction(serving, changes.target_type), "forced")
    if changes.target_type != old:
        return UpdatePlan(REBUILD, f"index type {old} -> {changes.target_type} for {changes.vectors} vectors")
    touched = changes.added + changes.changed + changes.removed
    if touched == 0:
        return UpdatePlan(UP_TO_DATE, None, serving.dead, serving.delta)
    since = serving.added_since_training + changes.added + changes.changed
    if serving.trained and old not in ("flat", "hnsw") and since > RETRAIN_FRACTION * max(serving.trained_on, 1):
        return UpdatePlan(REBUILD, f"{since} of {changes.vectors} vectors arrived after the {old} training")
    # an upper bound: a removed or changed image that lives in the delta is not a tombstone
    dead = serving.dead + changes.removed + changes.changed
    delta = serving.delta + changes.added + changes.changed
    limit = max(COMPACT_FRACTION * serving.base_count, COMPACT_MIN_ENTRIES)
    if dead > limit or delta > limit:
        what = f"{dead} tombstoned" if dead > limit else f"{delta} delta"
        reason = f"{what} of {serving.base_count} base vectors passed the compaction threshold"
        return UpdatePlan(_compaction(serving, changes.target_type), reason)
    return UpdatePlan(DELTA, None, dead, delta)


def _compaction(serving: ServingIndex, target_type: str) -> str:
    """A trained IVF index keeps its training (no k-means); everything else is built afresh."""
    keep_training = serving.trained and target_type == serving.index_type and serving.index_type not in ("flat", "hnsw")
    return READD if keep_training else REBUILD


def current_at(store: IndexStore, catalogue: CatalogueStore, fingerprint: str, generation: int,
               index_type: str) -> IndexManifest | None:
    """The serving build when it is known to hold exactly the indexable images of catalogue
    `generation` with this model and index type (decided without reading any image row);
    None when that is not known (the rows decide)."""
    serving = store.current_manifest()
    if serving is None or store.degraded or serving.model_fingerprint != fingerprint:
        return None
    itype = choose_index_type(serving.count) if index_type == "auto" else index_type
    if serving.index_type != itype or catalogue.build_generation(serving.build_id) != generation:
        return None
    return serving


def indexable_keys(catalogue: CatalogueStore) -> tuple[np.ndarray, np.ndarray]:
    """The catalogue's indexable image ids and content hashes (arrays, by id); an image without a
    recorded hash gets its file's, as IndexBuilder.work_items would give it."""
    ids, keys = catalogue.indexable_keys()
    unhashed = np.flatnonzero(keys == NO_HASH)
    if len(unhashed):
        keys = keys.copy()
        for img in catalogue.images_by_id(ids[unhashed].tolist()):
            keys[np.searchsorted(ids, img.id)] = (img.sha256 or sha256_file(img.path)).encode()
    return ids, keys


def rescan_diff(serving: IndexManifest, scan: RescanReport | None, built_at: int | None, generation: int,
                max_shrink: float | None) -> IndexDiff | None:
    """The serving build against the catalogue from the rescan alone, when the rescan is all
    that changed: the build held the catalogue exactly at the generation the rescan started
    from (`built_at`) and the rescan's own writes made the current `generation`. No image row
    and no keys file is read then: an update after k files changed costs O(k), not a read of
    a million ids and hashes. None (the full diff decides) when anything else changed, or
    when the change is big enough for the shrink guard to look at the ids (with no limit, when
    it could leave no vector: an empty index is never published)."""
    if scan is None or built_at is None or built_at != scan.generations[0] or scan.generations[1] != generation:
        return None
    restored, new_content, gone = scan.moves
    allowed = max_shrink * serving.count if max_shrink is not None and max_shrink < 1 else serving.count - 1
    if len(restored) + len(new_content) + len(gone) > allowed:
        return None
    return IndexDiff(tuple(sorted(restored)), tuple(sorted(new_content)), tuple(sorted(gone)),
                     serving.count - len(new_content) - len(gone))
