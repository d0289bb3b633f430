"""Nearest neighbours among an allowed set of ids, inside FAISS (docs/filtered_search.md).

A search restricted to a set of image ids (a category, a price range, a routed category)
must return the best matches *of that set*, however small the set is, without reading the
rest of the index through the database. The set arrives as external ids; they are turned
into the index's internal positions (the IndexIDMap2 table, cached per index) and then:

- flat vectors (the `flat` type, and the storage under `hnsw`): an exact scan of the
  stored vectors that computes distances only for the allowed positions (IDSelectorBitmap:
  one bit test per stored vector, one dot product per allowed one);
- HNSW with a large allowed share: the graph search with the same selector and an
  efSearch raised in proportion to how few vectors are allowed;
- IVF types: a small set is scored exactly on its reconstructed vectors; a large one goes
  through the inverted lists with the selector and nprobe raised in proportion.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

#: allowed sets up to this size are scored exactly on their own vectors on every index type
EXACT_LIMIT = 32_768
#: on HNSW, allowed shares up to this use the exact flat scan (a graph walk with a
#: selective filter must visit ~1/share nodes per hit found)
HNSW_EXACT_SHARE = 0.05
#: ceilings of the search-breadth knobs raised for selective filters
MAX_EF_SEARCH = 2048
MAX_NPROBE_FACTOR = 64


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with no hits: ids -1, scores -inf."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


class PositionMap:
    """External id -> internal position of an IndexIDMap2 (its id table, sorted once)."""

    def __init__(self, id_table: np.ndarray) -> None:
        self.external = id_table  # position -> external id
        self._order = np.argsort(id_table, kind="stable")
        self._sorted = id_table[self._order]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Internal positions of the ids that are in the index (others dropped), ascending."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._sorted) == 0 or len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        found = self._sorted[at] == ids
        return np.sort(self._order[at[found]])


def _flat_storage(inner: faiss.Index) -> faiss.Index | None:
    """The IndexFlat holding the raw vectors (flat itself, or HNSW's storage), else None."""
    if isinstance(inner, faiss.IndexFlat):
        return inner
    storage = getattr(inner, "storage", None)
    if storage is not None:
        storage = faiss.downcast_index(storage)
        if isinstance(storage, faiss.IndexFlat):
            return storage
    return None


def _bitmap_selector(positions: np.ndarray, n: int) -> tuple[faiss.IDSelector, np.ndarray]:
    """An IDSelectorBitmap over positions; the bitmap is returned too, as it must outlive the selector."""
    mask = np.zeros(n, dtype=bool)
    mask[positions] = True
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)), bits


def _exact_on_vectors(inner: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Score the allowed vectors (reconstructed from the index) one by one: exact, any type."""
    vecs = inner.reconstruct_batch(positions)
    sims = q @ vecs.T  # (nq, m)
    kk = min(k, len(positions))
    top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    top_s = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-top_s, axis=1, kind="stable")
    scores, ids = empty_result(len(q), k)
    scores[:, :kk] = np.take_along_axis(top_s, order, axis=1)
    ids[:, :kk] = positions[np.take_along_axis(top, order, axis=1)]
    return scores, ids


def search_positions(inner: faiss.Index, q: np.ndarray, k: int, positions: np.ndarray, nprobe: int,
                     ef_search: int, refine_k_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-k internal positions among `positions` (ascending, non-empty) for queries `q`."""
    n = int(inner.ntotal)
    share = len(positions) / max(n, 1)
    widen = math.ceil(1.0 / max(share, 1e-9))
    flat = _flat_storage(inner)
    if flat is not None and (flat is inner or share <= HNSW_EXACT_SHARE or len(positions) <= EXACT_LIMIT):
        sel, _bits = _bitmap_selector(positions, n)
        return flat.search(q, k, params=faiss.SearchParameters(sel=sel))
    if flat is not None and hasattr(inner, "hnsw"):
        sel, _bits = _bitmap_selector(positions, n)
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(min(MAX_EF_SEARCH, max(ef_search, k) * widen)))
        return inner.search(q, k, params=params)
    if len(positions) <= EXACT_LIMIT:
        return _exact_on_vectors(inner, q, k, positions)
    sel, _bits = _bitmap_selector(positions, n)
    base = faiss.downcast_index(inner.base_index) if hasattr(inner, "base_index") else inner
    ivf = faiss.extract_index_ivf(base)
    probe = int(min(ivf.nlist, nprobe * min(widen, MAX_NPROBE_FACTOR)))
    ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=probe)
    if base is inner:
        return inner.search(q, k, params=ivf_params)
    return inner.search(q, k, params=faiss.IndexRefineSearchParameters(k_factor=refine_k_factor,
                                                                        base_index_params=ivf_params))
