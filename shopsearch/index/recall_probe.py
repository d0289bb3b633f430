"""How many of the true nearest neighbours an HNSW build finds, measured when it is built.

The efSearch rule (sizing.ef_for_size) was measured on vectors with neighbourhood structure
(embeddings of photos, clustered benchmark data): there HNSW32 at efSearch 128 finds >= 0.95 of
the exact top 10 up to 1M vectors. Vectors without such structure (a model that spreads the
catalogue evenly, noise) can leave the same graph walk finding a fifth of them or fewer, and
nothing said so. So every HNSW build checks itself on a seeded sample of its own vectors:
each is searched for its 10 nearest others (itself left out) by the graph and by exact scoring,
at the rule's efSearch and, while recall@10 stays under TARGET_RECALL, at twice that, up to
MAX_PROBE_EF. The build keeps the smallest efSearch that reaches the target (stored in its
manifest, used by every search of it); where none does, the narrowest within a point of the best
recall seen, and the build says plainly how much the graph misses, so that the merchandiser can
pick another index type."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from shopsearch.index.sizing import ef_for_size

if TYPE_CHECKING:
    from shopsearch.index.vector_index import VectorIndex

log = logging.getLogger("shopsearch.index")

#: recall@10 (of exact inner-product search) an HNSW build should reach
TARGET_RECALL = 0.95
#: the widest efSearch the probe tries (each doubling costs about twice the search time)
MAX_PROBE_EF = 1024
#: vectors searched by the probe: recall is a mean over them (+- ~0.02 at 200)
PROBE_QUERIES = 200
PROBE_K = 10


@dataclass(frozen=True)
class RecallProbe:
    """What the probe measured: recall@10 per efSearch tried, and the efSearch chosen."""

    ef_search: int
    recall_at_10: float  # at ef_search
    reached: bool  # recall_at_10 >= target
    target: float
    queries: int
    tried: tuple[tuple[int, float], ...]  # (efSearch, recall@10), in the order tried

    def to_dict(self) -> dict:
        return {"ef_search": self.ef_search, "recall_at_10": round(self.recall_at_10, 4), "reached": self.reached,
                "target": self.target, "queries": self.queries,
                "tried": [[ef, round(r, 4)] for ef, r in self.tried]}

    @property
    def message(self) -> str:
        """One line for the build's output."""
        return probe_message(self.to_dict())


def probe_message(probe: dict) -> str:
    """RecallProbe.message from its to_dict() (what a build report carries)."""
    if probe["reached"]:
        return (f"HNSW recall@10 {probe['recall_at_10']:.3f} of exact search at efSearch {probe['ef_search']} "
                f"(probe of {probe['queries']} vectors)")
    return (f"HNSW finds only {probe['recall_at_10']:.0%} of the exact 10 nearest neighbours even at efSearch "
            f"{probe['ef_search']} (target {probe['target']:.0%}; probe of {probe['queries']} vectors, efSearch "
            f"up to {probe['tried'][-1][0]} tried): these vectors have little neighbourhood structure for a graph "
            f"to follow; --index flat searches them exactly (slower per query at this size)")


def probe_built(index: VectorIndex) -> RecallProbe | None:
    """Probe a new build's HNSW graph from the size rule's efSearch, set the width its searches
    will use and log what was found (a warning when the graph misses); None for other types."""
    if index.index_type != "hnsw":
        return None
    probe = probe_hnsw(index.faiss_index.index, ef_for_size(len(index)))
    if probe is not None:
        index.ef_search = probe.ef_search
        (log.info if probe.reached else log.warning)(probe.message, extra={"recall_probe": probe.to_dict()})
    return probe


def probe_hnsw(index: faiss.Index, start_ef: int, target: float = TARGET_RECALL, max_ef: int = MAX_PROBE_EF,
               queries: int = PROBE_QUERIES, seed: int = 0) -> RecallProbe | None:
    """Recall@10 of an IndexHNSWFlat's walk against exact search over its own stored vectors,
    at start_ef and doublings of it up to max_ef while under `target`; None when the index is not
    an HNSW over float vectors or holds too few vectors to miss any."""
    # a new name: the downcast wrapper does not own the index, `index` keeps it alive
    hnsw = faiss.downcast_index(index)
    storage = faiss.downcast_index(hnsw.storage) if hasattr(hnsw, "hnsw") else None
    n = int(hnsw.ntotal)
    if not isinstance(storage, faiss.IndexFlat) or n <= 4 * (PROBE_K + 1):
        return None
    xb = faiss.rev_swig_ptr(storage.get_xb(), n * storage.d).reshape(n, storage.d)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
    q = np.ascontiguousarray(xb[pick])
    # the query's own vector scores highest (or ties with a copy of it): ask for one more, drop it
    _, exact = faiss.knn(q, xb, PROBE_K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = [_others(row, p) for row, p in zip(exact, pick)]
    tried: list[tuple[int, float]] = []
    ef = max(start_ef, PROBE_K + 1)
    while True:
        _, got = hnsw.search(q, PROBE_K + 1, params=faiss.SearchParametersHNSW(efSearch=int(ef)))
        hits = [len(t & _others(row, p)) / PROBE_K for row, p, t in zip(got, pick, truth)]
        tried.append((int(ef), float(np.mean(hits))))
        if tried[-1][1] >= target or 2 * ef > max_ef:
            break
        ef *= 2
    reached = next(((e, r) for e, r in tried if r >= target), None)
    if reached is not None:
        return RecallProbe(reached[0], reached[1], True, target, len(pick), tuple(tried))
    # out of reach: the narrowest walk within a point of the best recall seen (quality first; the
    # report says how much is missed)
    best = max(r for _, r in tried)
    ef, recall = next((e, r) for e, r in tried if r >= best - 0.01)
    return RecallProbe(ef, recall, False, target, len(pick), tuple(tried))


def _others(row: np.ndarray, own: int) -> set[int]:
    """The first PROBE_K positions of a result row other than the query's own."""
    return set([int(i) for i in row.tolist() if i != own and i >= 0][:PROBE_K])
